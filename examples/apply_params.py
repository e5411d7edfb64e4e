"""Merge an example's params into params.yaml, keeping the file's comments and the book's entries.

    python examples/apply_params.py examples/breast_cancer.yaml
    python examples/apply_params.py examples/digits.yaml --params other/params.yaml

Mappings merge key by key, so an example adds its entries under ``import_data``,
``split`` and ``train_classifier`` next to the book's. Any other value, a list
included, replaces the one in params.yaml. The merged file is validated before
it is written, and written atomically. `git checkout params.yaml` restores the
book's params.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML  # a dependency of DVC, which keeps comments on a round trip

from stepbystep import files
from stepbystep.errors import UserError, run_stage


def merge(base: Any, overlay: Any, prefix: str = "") -> list[str]:
    """Merge mapping ``overlay`` into mapping ``base`` in place; return the dotted keys it set."""
    changed = []
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            changed += merge(base[key], value, f"{dotted}.")
        elif base.get(key) != value or key not in base:
            base[key] = value
            changed.append(dotted)
    return changed


def apply_params(example: Path, params_file: Path) -> list[str]:
    """Merge ``example`` into ``params_file`` and return the dotted keys that changed."""
    import yaml as safe_yaml

    from stepbystep.params import validate_params

    yaml = YAML()  # round-trip mode
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    # Write null as `null`, as params.yaml does, rather than as an empty value.
    yaml.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    try:
        params = yaml.load(params_file.read_text(encoding="utf-8"))
        overlay = yaml.load(example.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise UserError(f"file not found: {error.filename}. Fix: run the command from the project root") from None
    if not isinstance(overlay, dict):
        raise UserError(f"{example} must contain a mapping of params sections")

    changed = merge(params, overlay)
    buffer = io.StringIO()
    yaml.dump(params, buffer)

    # An invalid merge raises here and leaves params.yaml as it was.
    validate_params(safe_yaml.safe_load(buffer.getvalue()), f"{params_file} merged with {example}")
    files.write_text(params_file, buffer.getvalue())
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example", type=Path, help="an example params file, such as examples/breast_cancer.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file to update")
    arguments = parser.parse_args()

    changed = apply_params(arguments.example, arguments.params)
    print(f"{arguments.params}: set {len(changed)} keys from {arguments.example}", file=sys.stderr)
    for key in changed:
        print(f"  {key}", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
