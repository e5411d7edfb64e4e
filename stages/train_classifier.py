"""Stage train_classifier@<name>: train one classifier of params.yaml and track it in MLflow.

Usage: python stages/train_classifier.py MODEL_NAME
"""

import sys

from stepbystep.errors import UserError, run_stage


def main() -> None:
    from pathlib import Path

    from stepbystep.params import load_params
    from stepbystep.workflows.training import train_classifier

    if len(sys.argv) != 2:
        raise UserError("usage: python stages/train_classifier.py MODEL_NAME (a key of train_classifier in params.yaml)")
    name = sys.argv[1]
    train_classifier(load_params(), name, Path("models") / name)


if __name__ == "__main__":
    run_stage(main)
