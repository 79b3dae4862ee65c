"""What a command prints: log levels, library warnings and progress bars, quiet unless asked.

A study's log is read after the fact (a file, CI, nohup), so progress bars appear only
on a terminal and the libraries' chatter that says nothing to the user (lm-eval's
per-call notices, MLflow's database setup, Optuna's experimental-feature notes) is
filtered. `--verbose` lets everything through. Settings that libraries read from the
environment at import time are set here, before any of them is imported; an
explicitly set variable is never overridden. Standard library only: `validate` must
stay light.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator

from harness.redact import RedactingFilter

# Our own modules whose INFO lines are per-call detail (cache hits, each lm-eval arm's score): the study's
# one line per trial says what matters; --verbose shows them.
DETAIL_LOGGERS = ("harness.cache", "harness.scoring")
NOISY_LOGGERS = ("httpx", "urllib3", "filelock", "alembic", "datasets", "optuna", "mlflow", "git", "huggingface_hub")
# Loggers that print, traceback and all, an error their library then raises to us (MLflow's SQL store logs every
# failed statement, e.g. on a full disk), or that the store failing costs only them (MLflow's system metrics, a
# warning every 10 s): the command reports the store's failure once, in one line; --verbose shows them.
REPEATING_LOGGERS = ("mlflow.store.db.utils", "mlflow.system_metrics.system_metrics_monitor")
# Library warnings that are notes to library developers, not to a harness user.
IGNORED_WARNINGS = (
    (r".*is an experimental feature.*", "optuna"),  # heartbeat_interval of RDBStorage: our choice, known
    (r".*starlette\.middleware\.wsgi is deprecated.*", ""),  # MLflow's UI server imports it
)


FAST_SUFFIX = "-fast"  # Suite.fast names its variant `<name>-fast`


def command(verb: str, suite: object, *rest: str, path: str | None = None) -> str:
    """The exact `harness VERB SUITE [--fast] ...` that finds this suite's study: a hint a user can paste
    (a `--fast` variant's study is only found with `--fast`); `path`: the suite as the user typed it."""
    name, source = str(getattr(suite, "name", "")), getattr(suite, "source", None)
    fast = name.endswith(FAST_SUFFIX)
    where = path or source or name.removesuffix(FAST_SUFFIX)
    if path is None and source and os.path.isabs(source):  # as the user would type it from here
        rel = os.path.relpath(source)
        where = source if rel.startswith("..") else rel
    return " ".join(["harness", verb, str(where), *(["--fast"] if fast else []), *rest])


def terminal() -> bool:
    """Whether a person is watching stderr (a terminal), not a file or a pipe."""
    return sys.stderr.isatty()


def setup(verbose: bool) -> None:
    """Configure logging, warnings and progress bars for a CLI command (call before heavy imports)."""
    env = {
        "TOKENIZERS_PARALLELISM": "false",
        "GIT_PYTHON_REFRESH": "quiet",  # GitPython (MLflow's source tags) without a git binary: no warning
        "MLFLOW_LOGGING_LEVEL": "DEBUG" if verbose else "WARNING",  # read when mlflow is imported
        "LMEVAL_LOG_LEVEL": "INFO" if verbose else "ERROR",  # overrides the level lm-eval sets on each call
        "TRANSFORMERS_VERBOSITY": "info" if verbose else "error",
    }
    if not terminal():
        # Libraries' own bars (transformers, datasets, huggingface_hub; tqdm's defaults for the rest):
        # a bar in a file is one line redrawn with \r a hundred times.
        env |= {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    for key, value in env.items():
        os.environ.setdefault(key, value)

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())  # store passwords never reach a log
    if verbose:
        return
    for name in (*NOISY_LOGGERS, *DETAIL_LOGGERS):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    for name in REPEATING_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for message, module in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)


# ----------------------------------------------------------------------------- progress inside a long phase

PROGRESS_ENV = "HARNESS_PROGRESS_S"
PROGRESS_S = 30.0  # a line at least this often while a phase runs: a loaded run says something every minute
progress_log = logging.getLogger("harness.progress")


def progress_every() -> float:
    """Seconds between progress lines: $HARNESS_PROGRESS_S, else PROGRESS_S."""
    try:
        return max(0.0, float(os.environ.get(PROGRESS_ENV, PROGRESS_S)))
    except ValueError:
        return PROGRESS_S


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@contextlib.contextmanager
def phase(what: str, every: float | None = None) -> Iterator[None]:
    """While the block runs, one line every `every` seconds saying it still runs (the teacher's generation and
    lm-eval's scoring report no counts a log file can show; their bars appear only on a terminal). Work that
    ends sooner prints nothing."""
    every = progress_every() if every is None else every
    stop = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not stop.wait(max(every, 0.01)):
            progress_log.info("%s: running for %s", what, duration(time.monotonic() - start))

    thread = threading.Thread(target=beat, name="harness-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Ticker:
    """Counted progress (training steps) as a log line at most every `every` seconds, e.g.
    `training forward_kl: step 40/400 (10%), loss 0.8120, 1 min`."""

    def __init__(self, what: str, total: int, unit: str, every: float | None = None) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.every = progress_every() if every is None else every
        self.start = self.last = time.monotonic()
        self.done = 0

    def add(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        extra = f", {note}" if note else ""
        progress_log.info(
            "%s: %s %d/%d%s%s, %s",
            self.what,
            self.unit,
            self.done,
            self.total,
            share,
            extra,
            duration(now - self.start),
        )
