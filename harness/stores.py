"""Where a suite's state lives: Optuna storage, study name, MLflow store, teacher cache.

One module so the sweep (which writes the stores), the report (which reads them)
and the CLI's `ui` agree on the same places without importing each other.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.spec import Suite


def work_dir(suite: Suite) -> Path:
    """The suite's work folder (created on first use), absolute so SQLite URLs do not depend on the cwd later."""
    path = Path(suite.work_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def storage_url(suite: Suite) -> str:
    """The suite's Optuna storage URL, else a SQLite file under work_dir."""
    if suite.sweep.storage:
        return suite.sweep.storage
    return f"sqlite:///{work_dir(suite) / 'optuna.db'}"


def study_name(suite: Suite) -> str:
    """Same suite content → same study (resume); an edited suite starts a new one."""
    return f"{suite.name}-{suite.content_hash()}"


def tracking_uri(suite: Suite) -> str:
    """The suite's URI, else $MLFLOW_TRACKING_URI, else a SQLite store under work_dir (MLflow 3.13+ default)."""
    if suite.sweep.tracking_uri:
        return suite.sweep.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{work_dir(suite) / 'mlflow.db'}"


def artifact_root(suite: Suite) -> str:
    """Where a SQLite-tracked experiment keeps its artifacts (a file URI under work_dir)."""
    return (work_dir(suite) / "mlartifacts").as_uri()


def cache_root(suite: Suite) -> Path:
    """The teacher cache (targets, top-k log-probs, fixed arms' scores), shared by every trial and rerun."""
    return work_dir(suite) / "cache"


def display_url(url: str) -> str:
    """A storage or tracking URL fit to print: a password in it is replaced by ***."""
    return re.sub(r"(://[^/:@]+:)[^/@]+@", r"\1***@", url)
