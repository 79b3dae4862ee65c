"""Shared fixtures: the tiny model, the parity task, and one smoke study run through the CLI (suite files come
from helpers.write_suite)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

# Before anything imports huggingface_hub, which reads these once at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from helpers import PARITY, ROOT, write_suite  # noqa: E402

from harness import console, models  # noqa: E402
from harness.tasks import TaskBundle, load_task  # noqa: E402


@pytest.fixture(autouse=True)
def _logger_levels():
    """An in-process `main()` (also in a session fixture, set up before any function fixture) quiets loggers for
    the rest of the process (harness/console.py): each test starts from the levels a fresh process has."""
    names = ("harness", *console.NOISY_LOGGERS, *console.DETAIL_LOGGERS, *console.REPEATING_LOGGERS, "lm_eval")
    for n in names:
        logging.getLogger(n).setLevel(logging.NOTSET)
    yield


@pytest.fixture(scope="session")
def tiny() -> models.LoadedModel:
    """The tiny random model built in code (no download); session-wide, so tests must not change its weights."""
    return models.load("tiny-random", "cpu")


@pytest.fixture(scope="session")
def parity() -> TaskBundle:
    return load_task("parity", PARITY)


# What the CLI sets itself (harness/console.py), cleared so that the subprocess shows what a user's shell gets;
# an in-process `main()` in another test may have set them here.
SET_BY_CLI = (
    "MLFLOW_TRACKING_URI",
    "TQDM_DISABLE",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "HF_DATASETS_DISABLE_PROGRESS_BARS",
    "MLFLOW_LOGGING_LEVEL",
    "LMEVAL_LOG_LEVEL",
    "GIT_PYTHON_REFRESH",
)


@pytest.fixture(scope="session")
def cli_smoke(tmp_path_factory) -> dict:
    """`harness run` on the smoke suite as a user runs it: a subprocess in its own folder, stdout and stderr
    to a file (not a terminal). Shared by the log tests and the MLflow layout tests."""
    tmp = tmp_path_factory.mktemp("cli-smoke")
    suite = write_suite(tmp)
    env = {k: v for k, v in os.environ.items() if k not in SET_BY_CLI}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log = tmp / "run.log"
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "harness.cli", "run", str(suite)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env=env,
            timeout=900,
        )
    return {"tmp": tmp, "suite": suite, "log": log.read_text(), "returncode": proc.returncode, "env": env}
