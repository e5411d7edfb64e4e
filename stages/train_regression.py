"""Stage train_regression: train the chapter 2 linear regression and track it in MLflow."""

from stepbystep.errors import run_stage

OUTPUT_DIR = "models/linear_regression"


def main() -> None:
    from pathlib import Path

    from stepbystep.params import load_params
    from stepbystep.workflows.training import train_regression

    train_regression(load_params(), Path(OUTPUT_DIR))


if __name__ == "__main__":
    run_stage(main)
