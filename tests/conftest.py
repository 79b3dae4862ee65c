"""Shared fixtures: the tiny model and the parity task (suite files come from helpers.write_suite)."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub, which reads these once at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from helpers import PARITY  # noqa: E402

from harness import models  # noqa: E402
from harness.tasks import TaskBundle, load_task  # noqa: E402


@pytest.fixture(scope="session")
def tiny() -> models.LoadedModel:
    """The tiny random model built in code (no download); session-wide, so tests must not change its weights."""
    return models.load("tiny-random", "cpu")


@pytest.fixture(scope="session")
def parity() -> TaskBundle:
    return load_task("parity", PARITY)
