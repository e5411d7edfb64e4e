"""Stage train_classifier@<name>: train one classifier of params.yaml and track it in MLflow.

Usage: python stages/train_classifier.py MODEL_NAME

With train_classifier.<name>.nproc_per_node above 1 the stage restarts itself
under torchrun; started by torchrun, it trains in torchrun's process group.
"""

import _project  # noqa: F401  (first: the stages run the src/ next to them)
import sys

from stepbystep.errors import UserError, run_stage


def main() -> None:
    from pathlib import Path

    from stepbystep.params import load_params
    from stepbystep.training import distributed
    from stepbystep.workflows.training import train_classifier

    if len(sys.argv) != 2:
        raise UserError("usage: python stages/train_classifier.py MODEL_NAME (a key of train_classifier in params.yaml)")
    name = sys.argv[1]
    params = load_params()
    if name in params.train_classifier:
        distributed.relaunch_with_torchrun(params.train_classifier[name].nproc_per_node)
    with distributed.process_group() as context:
        train_classifier(params, name, Path("models") / name, context=context)


if __name__ == "__main__":
    run_stage(main)
