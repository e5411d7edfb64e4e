"""Stage train_regression: train the chapter 2 linear regression and track it in MLflow.

With train_regression.nproc_per_node above 1 the stage restarts itself under
torchrun; started by torchrun, it trains in torchrun's process group.
"""

import _project  # noqa: F401  (first: the stages run the src/ next to them)
from stepbystep.errors import run_stage

OUTPUT_DIR = "models/linear_regression"


def main() -> None:
    from pathlib import Path

    from stepbystep.params import load_params
    from stepbystep.training import distributed
    from stepbystep.workflows.training import train_regression

    params = load_params()
    distributed.relaunch_with_torchrun(params.train_regression.nproc_per_node)
    with distributed.process_group() as context:
        train_regression(params, Path(OUTPUT_DIR), context=context)


if __name__ == "__main__":
    run_stage(main)
