"""Errors that users cause and can fix, and the runner that reports them.

A stage script wraps its ``main()`` in :func:`run_stage`. A :class:`UserError`
(invalid params, bad data, an unreachable tracking server) prints one message
to stderr and exits with status 1, without a traceback. Any other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 1


class UserError(Exception):
    """An error in the user's input or environment, with a message that explains how to fix it."""


class ParamsError(UserError):
    """Invalid values in params.yaml."""


class DataError(UserError):
    """Missing, malformed or inconsistent data files."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main()`` and turn a :class:`UserError` into a message and exit status 1."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
