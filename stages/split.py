"""Stage split: write training and validation indices of every dataset under data/splits/."""

from stepbystep.data.layout import DATA_DIR, SPLITS_DIR
from stepbystep.errors import run_stage


def main() -> None:
    from stepbystep.data.splits import split_datasets
    from stepbystep.params import load_params

    params = load_params().split
    split_datasets(params, DATA_DIR, SPLITS_DIR)


if __name__ == "__main__":
    run_stage(main)
