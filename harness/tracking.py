"""MLflow: one parent run per study, one nested run per trial (a configuration), one nested run per seed under it.

Logged by hand (Optuna's MLflowCallback is deprecated) so a trial's run opens
before training, receives step metrics as they happen, and closes with the
status the trial really had (finished, failed, pruned) and why.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from contextlib import contextmanager
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from harness import stores
from harness.metrics import STEP_METRICS, TrialMetrics
from harness.spec import Suite

log = logging.getLogger(__name__)

_BAD = re.compile(r"[^/\w.\- ]")


def metric_name(name: str) -> str:
    """MLflow allows only [/\\w.\\- ] in keys: lm-eval's `exact_match,strict-match` → `exact_match/strict-match`."""
    return _BAD.sub("/", name)


def setup(suite: Suite) -> str:
    """Point MLflow at the suite's store and experiment; returns the experiment id."""
    uri = stores.tracking_uri(suite)
    mlflow.set_tracking_uri(uri)
    name = f"harness/{suite.name}"
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        artifacts = stores.artifact_root(suite) if uri.startswith("sqlite") else None
        exp_id = mlflow.create_experiment(name, artifact_location=artifacts)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def parent_run_id(experiment_id: str, study_name: str, tags: dict[str, str]) -> str:
    """The study's parent run, created on first use and found again on resume."""
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`harness.study` = '{study_name}' and tags.`harness.kind` = 'study'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=study_name, tags={**tags, "harness.study": study_name, "harness.kind": "study"}
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


class TrialRun:
    """A nested MLflow run for one trial; also the trial's step logger."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.client = MlflowClient()

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """Per-step values; only defined step metrics (a typo would otherwise start a new curve silently)."""
        unknown = set(metrics) - set(STEP_METRICS)
        if unknown:
            raise ValueError(f"undefined step metrics {sorted(unknown)} (defined in harness/metrics.py)")
        for k, v in metrics.items():
            self.client.log_metric(self.run_id, metric_name(k), float(v), step=step)

    def log_params(self, params: dict[str, Any]) -> None:
        for k, v in params.items():
            self.client.log_param(self.run_id, metric_name(k), v)

    def log_metrics(self, metrics: TrialMetrics) -> None:
        for k, v in metrics.logged().items():
            self.client.log_metric(self.run_id, k, v)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def log_dict(self, data: Any, path: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=1, default=str), path)

    def log_table(self, rows: list[dict[str, Any]], path: str) -> None:
        if rows:
            with mlflow.start_run(run_id=self.run_id, nested=True):
                mlflow.log_table(pd.DataFrame(rows), artifact_file=path)

    def log_inputs(self, rows: list[dict[str, Any]], name: str, context: str) -> None:
        """The distillation inputs as an MLflow dataset (shown in the run's Datasets column)."""
        if not rows:
            return
        df = pd.DataFrame(rows)
        ds = from_pandas(df, name=name)
        with mlflow.start_run(run_id=self.run_id, nested=True):
            mlflow.log_input(ds, context=context)

    def end(self, status: str, reason: str | None = None) -> None:
        if reason:
            self.set_tags({"harness.reason": reason[:4000]})
        self.client.set_terminated(self.run_id, status)


@contextmanager
def trial_run(experiment_id: str, parent_id: str, name: str, tags: dict[str, str], kind: str = "trial") -> Any:
    """Open a nested run (`kind` "trial": one configuration under the study; "seed": one of its seeds under
    it); on an exception it is marked FAILED with the reason, and the exception goes on."""
    client = MlflowClient()
    run = client.create_run(
        experiment_id, run_name=name, tags={**tags, "mlflow.parentRunId": parent_id, "harness.kind": kind}
    )
    tr = TrialRun(run.info.run_id)
    try:
        yield tr
    except BaseException as e:
        status = "KILLED" if type(e).__name__ in ("TrialPruned", "KeyboardInterrupt") else "FAILED"
        tr.end(status, f"{type(e).__name__}: {e}")
        raise
    else:
        if client.get_run(tr.run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
            tr.end("FINISHED")
