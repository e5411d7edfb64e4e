"""The MLflow store of the project: tracking URI, store initialisation, experiment and retries.

Without ``MLFLOW_TRACKING_URI`` the store is the SQLite file ``mlflow.db`` at
the root of the DVC project, and artifacts go to ``mlartifacts/`` next to it.
The root is ``DVC_ROOT`` when DVC runs the stage, which names the main
repository even inside the temporary copies of ``dvc exp run --temp`` and
``--queue``, so runs and artifacts outlive those copies.

Importing this module does not import MLflow (about 2 s); :func:`import_mlflow`
does, after setting environment defaults that MLflow reads.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from stepbystep.errors import UserError

logger = logging.getLogger(__name__)

DATABASE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
DEFAULT_EXPERIMENT_NAME = "stepbystep"

# MLflow 3.17 retries a failed HTTP request 7 times with a backoff factor of 2
# and waits up to 120 s for each response, which adds up to minutes before an
# error. With these defaults a refused connection fails after about 7 s, and
# users override them by setting the variables.
HTTP_ENVIRONMENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

SERVER_CHECK_TIMEOUT_S = 5.0

# Gateway errors mean that a proxy responded but the tracking server behind it did not.
_GATEWAY_STATUS_CODES = {502, 503, 504}

_T = TypeVar("_T")

# Stores that this process has opened under the initialisation lock, by URI.
_prepared_stores: set[str] = set()


def import_mlflow() -> ModuleType:
    """Import and return the ``mlflow`` module, with telemetry off and short HTTP retries unless the user set them."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name, value in HTTP_ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)

    import mlflow

    return mlflow


def project_root() -> Path:
    """Return the DVC project root: ``DVC_ROOT`` when DVC sets it, else the current directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def _root_or_default(root: str | os.PathLike[str] | None) -> Path:
    return Path(root).resolve() if root is not None else project_root()


def local_tracking_uri(root: str | os.PathLike[str] | None = None) -> str:
    """Return the project's SQLite store as ``sqlite:////<root>/mlflow.db``, ignoring ``MLFLOW_TRACKING_URI``."""
    # An absolute path starts with "/", so the URI gets the four slashes that
    # SQLAlchemy reads as an absolute path.
    return f"sqlite:///{_root_or_default(root) / DATABASE_FILE}"


def tracking_uri(project_root: str | os.PathLike[str] | None = None) -> str:
    """Return ``MLFLOW_TRACKING_URI`` when it is set, else the project's SQLite store as an absolute URI.

    ``project_root`` defaults to :func:`project_root`.
    """
    configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured:
        return configured
    return local_tracking_uri(project_root)


def artifact_location(root: str | os.PathLike[str] | None = None) -> str:
    """Return the ``file://`` URI of ``mlartifacts/`` under the project root, where local experiments keep artifacts."""
    return (_root_or_default(root) / ARTIFACTS_DIR).as_uri()


def is_http_uri(uri: str) -> bool:
    """Return whether ``uri`` names a tracking server (``http://`` or ``https://``)."""
    return uri.lower().startswith(("http://", "https://"))


def is_local_store(uri: str) -> bool:
    """Return whether ``uri`` is a store on this machine (SQLite, a ``file:`` URI or a plain path)."""
    scheme = uri.split(":", 1)[0].lower() if "://" in uri else ""
    return scheme in ("", "file") or scheme.startswith("sqlite")


def sqlite_database_path(uri: str) -> Path | None:
    """Return the database file of a ``sqlite:///`` URI, or ``None`` for other URIs and in-memory databases."""
    prefix = "sqlite:///"
    if not uri.lower().startswith(prefix):
        return None
    path = uri[len(prefix) :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).resolve()


def is_locked_error(error: BaseException) -> bool:
    """Return whether ``error`` is SQLite's "database is locked", which a later attempt can get past."""
    return "database is locked" in str(error).lower()


def call_with_retries(action: Callable[[], _T], description: str, attempts: int = 5, first_delay_s: float = 0.5) -> _T:
    """Call ``action`` and return its result, retrying with exponential backoff when SQLite reports a locked database.

    MLflow rolls back the transaction of a failed write, so repeating it writes
    nothing twice. Other errors are raised at once.
    """
    delay_s = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as error:
            if attempt == attempts or not is_locked_error(error):
                raise
            logger.warning(
                "%s failed on attempt %d of %d (%s), retrying in %.1f s", description, attempt, attempts, error, delay_s
            )
            time.sleep(delay_s)
            delay_s *= 2
    raise AssertionError("unreachable: the last attempt returns or raises")


def check_tracking_server(uri: str | None = None, timeout_s: float = SERVER_CHECK_TIMEOUT_S) -> None:
    """Raise :class:`UserError` when ``uri`` is an HTTP tracking server that does not respond within ``timeout_s``.

    ``uri`` defaults to :func:`tracking_uri`, and other kinds of URI pass without
    a check. The check sends one request to the server's ``/health`` endpoint
    without retries. Any HTTP status counts as a response, except the gateway
    errors 502, 503 and 504 of a proxy whose server is down. Authentication
    and other errors surface in MLflow's own requests.
    """
    uri = uri or tracking_uri()
    if not is_http_uri(uri):
        return

    health_url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health_url, timeout=timeout_s):
            return
    except urllib.error.HTTPError as error:
        if error.code not in _GATEWAY_STATUS_CODES:
            return
        reason = f"HTTP {error.code} {error.reason}"
    except urllib.error.URLError as error:
        reason = str(error.reason)
    except OSError as error:
        # A timeout while reading the response is a TimeoutError, not a URLError.
        reason = str(error) or type(error).__name__

    raise UserError(
        f"MLflow tracking server {uri} is unreachable ({reason}). "
        "Fix: start the server (for example `mlflow server --host 127.0.0.1 --port 5000`) "
        f"or unset MLFLOW_TRACKING_URI to log to the local store {local_tracking_uri()}"
    )


def prepare_store(uri: str) -> None:
    """Open the store once per process, holding a file lock while a new SQLite store creates its tables.

    The first opening of a new SQLite store runs MLflow's schema migrations
    (about 3 s). Two processes that migrate the same file at once corrupt it
    ("table already exists", "duplicate column name"), so every process takes
    an exclusive ``flock`` on ``<database>.lock`` while it opens the store.
    """
    if uri in _prepared_stores:
        return
    mlflow = import_mlflow()

    database = sqlite_database_path(uri)
    if database is None:
        _prepared_stores.add(uri)
        return

    lock_path = database.with_name(database.name + ".lock")
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(lock_path, "a")
    except OSError as error:
        raise UserError(
            f"cannot create the MLflow store lock {lock_path}: {error.strerror or error}. "
            "Fix: make the folder writable or set MLFLOW_TRACKING_URI to another store"
        ) from error

    with lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            client = mlflow.MlflowClient(uri)
            call_with_retries(lambda: client.search_experiments(max_results=1), f"opening the MLflow store {uri}")
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    _prepared_stores.add(uri)


def connect(root: str | os.PathLike[str] | None = None) -> str:
    """Resolve the tracking URI, check and prepare its store, make it MLflow's current URI, and return it.

    Raises :class:`UserError` when the URI names a tracking server that does not respond.
    """
    mlflow = import_mlflow()
    uri = tracking_uri(root)
    check_tracking_server(uri)
    prepare_store(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def get_or_create_experiment(
    name: str, uri: str | None = None, root: str | os.PathLike[str] | None = None
) -> str:
    """Return the id of the experiment ``name``, creating it when it does not exist.

    A local store gets an experiment whose artifact location is the absolute
    ``mlartifacts/`` folder under the project root, because MLflow fixes that
    location at creation and a default relative to the current directory would
    point into DVC's temporary copies. A tracking server chooses the location
    itself. When another process creates the experiment first, the existing
    one is read back.
    """
    mlflow = import_mlflow()
    from mlflow.exceptions import MlflowException

    uri = uri or tracking_uri(root)
    client = mlflow.MlflowClient(uri)

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_location(root) if is_local_store(uri) else None
        try:
            experiment_id = call_with_retries(
                lambda: client.create_experiment(name, artifact_location=location),
                f"creating the MLflow experiment {name!r}",
            )
            logger.info("created MLflow experiment %r (id %s) with artifacts in %s", name, experiment_id, location)
            return experiment_id
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise

    if experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) in {uri} is deleted. "
            f"Fix: restore it with `mlflow experiments restore --experiment-id {experiment.experiment_id}` "
            "or set tracking.experiment_name to another name"
        )
    if "/.dvc/tmp/" in experiment.artifact_location:
        logger.warning(
            "MLflow experiment %r stores artifacts in %s, inside a temporary DVC copy that DVC deletes. "
            "Fix: rename the experiment or set tracking.experiment_name to a new name",
            name,
            experiment.artifact_location,
        )
    return experiment.experiment_id

