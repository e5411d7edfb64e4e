"""Stage generate_data: write the synthetic regression and two-moons tables under data/."""

import _project  # noqa: F401  (first: the stages run the src/ next to them)
from stepbystep.data.layout import dataset_dir
from stepbystep.errors import run_stage


def main() -> None:
    from stepbystep.data.synthetic import generate_data
    from stepbystep.params import load_params

    params = load_params().generate_data
    generate_data(params.regression, params.moons, dataset_dir("regression"), dataset_dir("moons"))


if __name__ == "__main__":
    run_stage(main)
