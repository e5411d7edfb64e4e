"""Put this project's ``src/`` first on the import path, ahead of the installed package.

``dvc exp run --temp`` and ``--queue`` run the stages in a copy of the project,
while the editable install points at the main workspace's ``src/``. Stage
scripts import this module before ``stepbystep``, so each stage runs the code
of the copy it belongs to: the code DVC hashed as the stage's dependency.
"""

import sys
from pathlib import Path

SOURCE_DIR = str(Path(__file__).resolve().parent.parent / "src")

if SOURCE_DIR not in sys.path[:1]:
    sys.path.insert(0, SOURCE_DIR)
