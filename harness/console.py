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

import logging
import os
import sys
import warnings

from harness.redact import RedactingFilter

# Our own modules whose INFO lines are per-call detail (cache hits, each lm-eval arm's score): the study's
# one line per trial says what matters; --verbose shows them.
DETAIL_LOGGERS = ("harness.cache", "harness.scoring")
NOISY_LOGGERS = ("httpx", "urllib3", "filelock", "alembic", "datasets", "optuna", "mlflow", "git", "huggingface_hub")
# Loggers that print, traceback and all, an error their library then raises to us (MLflow's SQL store logs every
# failed statement, e.g. on a full disk): the command reports it once, in one line; --verbose shows them.
REPEATING_LOGGERS = ("mlflow.store.db.utils",)
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
