"""Where a suite's state lives: Optuna storage, study name, MLflow store, teacher cache.

One module so the sweep (which writes the stores), the report (which reads them)
and the CLI's `ui` agree on the same places without importing each other. The
URLs may come from the environment (`HARNESS_STORAGE`, `MLFLOW_TRACKING_URI`)
so that a suite shared by several machines holds no address and no password;
`open_store` lets several workers open (and create) the same store at once.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import sqlalchemy
from filelock import FileLock

from harness.redact import redact
from harness.spec import Suite

log = logging.getLogger(__name__)

STORAGE_ENV = "HARNESS_STORAGE"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
CACHE_ENV = "HARNESS_CACHE_DIR"

T = TypeVar("T")


class StoreError(RuntimeError):
    """A store that cannot be opened (no driver, unreachable, damaged, read-only): one line, password redacted."""


def work_dir(suite: Suite) -> Path:
    """The suite's work folder (created on first use), absolute so SQLite URLs do not depend on the cwd later."""
    path = Path(suite.work_dir).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(
            f"work_dir {path}: cannot be created ({e.strerror}); set work_dir to a folder you can write"
        ) from e
    return path


def storage_url(suite: Suite) -> str:
    """The suite's Optuna storage URL, else $HARNESS_STORAGE, else a SQLite file under work_dir."""
    if suite.sweep.storage:
        return suite.sweep.storage
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    return f"sqlite:///{work_dir(suite) / 'optuna.db'}"


def study_name(suite: Suite) -> str:
    """Same suite content → same study (resume); an edited suite starts a new one."""
    return f"{suite.name}-{suite.content_hash()}"


def tracking_uri(suite: Suite) -> str:
    """The suite's URI, else $MLFLOW_TRACKING_URI, else a SQLite store under work_dir (MLflow 3.13+ default)."""
    if suite.sweep.tracking_uri:
        return suite.sweep.tracking_uri
    if os.environ.get(TRACKING_ENV):
        return os.environ[TRACKING_ENV]
    return f"sqlite:///{work_dir(suite) / 'mlflow.db'}"


def artifact_root(suite: Suite) -> str:
    """Where a SQLite-tracked experiment keeps its artifacts (a file URI under work_dir)."""
    return (work_dir(suite) / "mlartifacts").as_uri()


def _uri_path(uri: str) -> str:
    """A file URI as a local path (MLflow's rule), imported late: stores is imported before MLflow is needed."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    return str(local_file_uri_to_path(uri))


class Artifacts:
    """Where a run's or a logged model's artifacts are: as the store recorded them, or, for a local store whose
    work folder was moved or copied (MLflow records absolute paths), at the same place under the suite's
    current `<work_dir>/mlartifacts/`."""

    def __init__(self, suite: Suite) -> None:
        self.root = Path(_uri_path(artifact_root(suite)))

    def locate(self, uri: str) -> str:
        if not uri.startswith("file:"):
            return uri  # a server or object store: MLflow fetches it
        path = _uri_path(uri)
        marker = f"/{self.root.name}/"
        if not Path(path).exists() and marker in path:
            moved = self.root / path.split(marker, 1)[1]
            if moved.exists():
                return moved.as_uri()
        return uri

    def moved(self, uri: str) -> Path | None:
        """Where to write new artifacts of a run whose recorded local folder is gone with a moved work folder: the
        same place under the current root (MLflow would re-create the old work folder); None where the recorded
        location stands (a remote store, or the recorded work folder still exists)."""
        if not uri.startswith("file:"):
            return None
        path = _uri_path(uri)
        marker = f"/{self.root.name}/"
        if marker not in path:
            return None
        recorded, rest = path.split(marker, 1)
        if Path(recorded).exists() and Path(recorded, self.root.name).exists():
            return None
        return self.root / rest

    def local(self, uri: str) -> Path | None:
        """The file an artifact URI names on this machine, or None for a remote store."""
        located = self.locate(uri)
        return Path(_uri_path(located)) if located.startswith("file:") else None


def cache_root(suite: Suite) -> Path:
    """The teacher cache (targets, top-k log-probs, fixed arms' scores), shared by every trial and rerun.

    `sweep.cache_dir` (else $HARNESS_CACHE_DIR) may name a folder that several machines share, e.g. on NFS:
    entries are written once under a per-entry file lock and read by everyone."""
    if suite.sweep.cache_dir:
        return Path(suite.sweep.cache_dir).expanduser().resolve()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    return work_dir(suite) / "cache"


# ----------------------------------------------------------------------------- opening a store safely

# How often a worker retries a schema creation that another worker was doing at the same moment.
SCHEMA_ATTEMPTS = 6


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///...` URL (None for other URLs and in-memory databases)."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


def open_store(url: str, what: str, opener: Callable[[], T]) -> T:
    """`opener()`, whose first call on an empty store creates its tables, made safe for workers starting together.

    A SQLite file is opened under a lock file beside it (one machine); a server database retries a schema
    creation that lost a race to another worker (a unique or duplicate-table violation), by then complete.
    A missing driver, an unreachable server, a damaged SQLite file or a folder that cannot be written becomes a
    one-line StoreError saying what to do.
    """
    db = sqlite_file(url)
    try:
        if db is not None:
            writable(db.parent, f"{what} {redact(url)}")
            with FileLock(f"{db}.lock"):
                return opener()
        for attempt in range(1, SCHEMA_ATTEMPTS + 1):
            try:
                return opener()
            except Exception as e:
                if attempt == SCHEMA_ATTEMPTS or not _lost_schema_race(e):
                    raise
                log.debug("%s: another worker was creating the schema (%s); retrying", what, type(e).__name__)
                time.sleep(random.uniform(0.2, 0.6) * attempt)
        raise AssertionError("unreachable")  # the loop returns or raises
    except ImportError as e:
        raise StoreError(f"{what} {redact(url)}: {_driver_hint(url, e)}") from e
    except Exception as e:
        cause = in_chain(e, sqlalchemy.exc.DatabaseError)  # OperationalError (unreachable, locked) and the rest
        if cause is None:
            raise
        first = _first_line(cause)
        if db is not None and any(m in first for m in DAMAGED):
            raise StoreError(
                f"{what} {db}: {first} (the file is damaged); move it aside or delete it (its records are lost), "
                "then rerun"
            ) from e
        if db is not None and "readonly" in first:
            raise StoreError(f"{what} {db}: {first}; make it and its folder writable, then rerun") from e
        raise StoreError(f"cannot open {what} {redact(url)}: {first}") from e


# SQLite's words for a file that is not (or no longer) a database.
DAMAGED = ("file is not a database", "malformed", "not a database", "file is encrypted")


def writable(folder: Path, what: str) -> None:
    """Create `folder` if needed and prove a file can be written in it, else a one-line StoreError naming it.

    A trial writes its database, lock, cache and artifacts there; found read-only halfway it would stop with a
    long traceback (or leave a trial half-recorded), so it is checked before anything starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".harness-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StoreError(
            f"{what}: folder {folder} is not writable ({e.strerror}); make it writable or set work_dir "
            "to a folder you can write"
        ) from e


def _lost_schema_race(e: BaseException) -> bool:
    """Two workers creating the same tables: one gets a unique violation or 'already exists'."""
    if in_chain(e, sqlalchemy.exc.IntegrityError) is not None:
        return True
    db_error = in_chain(e, sqlalchemy.exc.DBAPIError)
    return db_error is not None and any(m in str(db_error) for m in ("already exists", "deadlock detected"))


def in_chain(e: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type `kind` in e's cause/context chain (wrappers such as MlflowException hide it)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _driver_hint(url: str, e: ImportError) -> str:
    scheme = url.split(":", 1)[0]
    if scheme.startswith("postgresql"):
        return "the PostgreSQL driver is not installed: pip install 'harness[postgres]' (psycopg 3)"
    return f"its database driver is not installed ({_first_line(e)})"


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return redact(text.splitlines()[0] if text else type(e).__name__)
