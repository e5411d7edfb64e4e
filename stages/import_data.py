"""Stage import_data@<name>: validate a CSV table or an image folder of your own and write it as data/<name>/.

Usage: python stages/import_data.py DATASET_NAME
"""

import _project  # noqa: F401  (first: the stages run the src/ next to them)
import sys

from stepbystep.errors import UserError, run_stage


def main() -> None:
    from stepbystep.data.importing import import_dataset
    from stepbystep.data.layout import dataset_dir
    from stepbystep.params import load_params

    if len(sys.argv) != 2:
        raise UserError("usage: python stages/import_data.py DATASET_NAME (a key of import_data in params.yaml)")
    name = sys.argv[1]
    params = load_params().import_data
    if name not in params:
        known = ", ".join(sorted(params)) or "none"
        raise UserError(f"no dataset named {name!r} in import_data (declared: {known})")
    import_dataset(name, params[name], dataset_dir(name))


if __name__ == "__main__":
    run_stage(main)
