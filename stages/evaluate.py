"""Stage evaluate: metrics, plot data, figures and the comparison report of every trained model under reports/."""

import _project  # noqa: F401  (first: the stages run the src/ next to them)
from stepbystep.errors import run_stage


def main() -> None:
    from stepbystep.params import load_params
    from stepbystep.workflows.evaluation import evaluate

    evaluate(load_params())


if __name__ == "__main__":
    run_stage(main)
