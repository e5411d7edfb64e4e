"""Stage split: write training and validation indices of every dataset under data/splits/.

Usage: python stages/split.py [DATASET_NAME]

Without a name it splits every dataset of the split section except the
imported ones, whose split_imported@<name> stages pass their name.
"""

import _project  # noqa: F401  (first: the stages run the src/ next to them)
import sys

from stepbystep.data.layout import DATA_DIR, SPLITS_DIR
from stepbystep.errors import UserError, run_stage


def main() -> None:
    from stepbystep.data.splits import split_datasets
    from stepbystep.params import load_params

    params = load_params()
    if len(sys.argv) > 2:
        raise UserError("usage: python stages/split.py [DATASET_NAME] (a key of split in params.yaml)")
    if len(sys.argv) == 2:
        name = sys.argv[1]
        if name not in params.split:
            raise UserError(f"no dataset named {name!r} in split (declared: {', '.join(sorted(params.split))})")
        selected = {name: params.split[name]}
    else:
        selected = {name: split for name, split in params.split.items() if name not in params.import_data}
    split_datasets(selected, DATA_DIR, SPLITS_DIR)


if __name__ == "__main__":
    run_stage(main)
