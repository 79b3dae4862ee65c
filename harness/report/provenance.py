"""Facts that let a reader trust or reproduce a report: code, machines, package versions, stores."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness import stores, tracking
from harness.redact import portable
from harness.spec import Suite

PACKAGES = ("torch", "transformers", "lm_eval", "mlflow", "optuna", "peft", "pandas", "numpy", "matplotlib")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_name() -> str:
    try:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:  # a broken CUDA setup must not stop a report
        return "unknown"


def provenance(suite: Suite, df: pd.DataFrame, uri: str) -> dict[str, Any]:
    """Facts needed to trust or reproduce the numbers: what was run, with which code, where, with what versions."""

    def distinct(col: str) -> list[str]:
        return sorted({str(v) for v in df[col].dropna()}) if col in df else []

    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    starts = pd.to_datetime(df["start_time"], utc=True).dropna() if "start_time" in df else pd.Series([])
    ends = pd.to_datetime(df["end_time"], utc=True).dropna() if "end_time" in df else pd.Series([])
    return {
        "suite": suite.name,
        "suite_file": portable(suite.source or ""),
        "suite_hash": suite.content_hash(),
        "study": stores.study_name(suite),
        "task": suite.task.name,
        "teacher": suite.models.teacher,
        "student": suite.models.student,
        "objectives": list(suite.sweep.objectives),
        "seeds": suite.training_seeds(),
        "git_commit_trials": distinct("git.commit"),
        "git_commit_report": tracking.git_commit(),
        "trials_machine": distinct("machine"),
        "trials_device": distinct("device"),
        "trials_first_start": starts.min().isoformat(timespec="seconds") if len(starts) else None,
        "trials_last_end": ends.max().isoformat(timespec="seconds") if len(ends) else None,
        "report_date": datetime.now(UTC).isoformat(timespec="seconds"),
        "report_machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "gpu": gpu_name(),
        },
        "python": sys.version.split()[0],
        "packages": versions,
        "mlflow_tracking_uri": portable(uri),
        "optuna_storage": portable(stores.storage_url(suite)),
    }
