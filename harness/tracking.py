"""MLflow: one parent run per study, one nested run per trial (a configuration), one nested run per seed under it.

Logged by hand (Optuna's MLflowCallback is deprecated) so a trial's run opens
before training, receives step metrics as they happen, and closes with the
status the trial really had (finished, failed, pruned) and why.

A tracking store that stops answering (a server down longer than the MLflow
client's own retries) raises TrackingUnavailable; after the first such failure
the process's later calls fail at once instead of waiting out the retries again.
Runs that a dead or cut-off worker left RUNNING are ended by `end_orphans`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
import pandas as pd
import requests
import sqlalchemy
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import stores
from harness.metrics import STEP_METRICS, TrialMetrics
from harness.redact import redact
from harness.spec import Suite

log = logging.getLogger(__name__)

_BAD = re.compile(r"[^/\w.\- ]")


def metric_name(name: str) -> str:
    """MLflow allows only [/\\w.\\- ] in keys: lm-eval's `exact_match,strict-match` → `exact_match/strict-match`."""
    return _BAD.sub("/", name)


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking store did not answer, even after the client's retries."""


_outage: str | None = None  # why the store stopped answering; later calls fail at once


def reset_outage() -> None:
    """Forget an earlier outage (a new study run tries the store again)."""
    global _outage
    _outage = None


def _unreachable(e: BaseException) -> bool:
    """A failure to reach the store (connection refused, timeouts, retries used up), not a refused request.

    MLflow's REST client wraps the requests error in an MlflowException without `from`, so the chain is
    followed through __context__ as well."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError):
            return True
        if isinstance(cur, requests.exceptions.RetryError | sqlalchemy.exc.OperationalError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


@contextmanager
def guard() -> Iterator[None]:
    """Turn a tracking store that stopped answering into TrackingUnavailable (once; then fail fast)."""
    global _outage
    if _outage is not None:
        raise TrackingUnavailable(_outage)
    try:
        yield
    except Exception as e:
        if isinstance(e, TrackingUnavailable) or not _unreachable(e):
            raise
        why = redact(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        _outage = f"MLflow tracking store {redact(mlflow.get_tracking_uri())} is unreachable ({why[:300]})"
        raise TrackingUnavailable(_outage) from e


class _Client:
    """MlflowClient whose every call goes through `guard`."""

    def __init__(self) -> None:
        self._client = MlflowClient()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with guard():
                return method(*args, **kwargs)

        return call


def setup(suite: Suite) -> str:
    """Point MLflow at the suite's store and experiment; returns the experiment id.

    Safe for several workers starting at once: a database store's schema is created by one of them
    (`stores.open_store`), and an experiment another worker created a moment earlier is reused."""
    uri = stores.tracking_uri(suite)
    mlflow.set_tracking_uri(uri)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # 4 lines a trial, with the URI in
    name = f"harness/{suite.name}"
    artifacts = stores.artifact_root(suite) if uri.startswith("sqlite") else None

    def experiment() -> str:
        with guard():
            exp = mlflow.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            try:
                return mlflow.create_experiment(name, artifact_location=artifacts)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = mlflow.get_experiment_by_name(name)  # created by another worker meanwhile
                if found is None:
                    raise
                return found.experiment_id

    if "://" in uri and not uri.startswith(("http:", "https:", "file:")):
        exp_id = stores.open_store(uri, "MLflow tracking store", experiment)
    else:
        exp_id = experiment()
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def parent_run_id(experiment_id: str, study_name: str, tags: dict[str, str]) -> str:
    """The study's parent run, found by its tags or created. The sweep calls this from one worker only
    (the one that created the study) and shares the id through the study, so workers starting together
    do not create one parent each."""
    client = _Client()
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


def run_in_experiment(run_id: str, experiment_id: str) -> bool:
    """Whether `run_id` exists in this store's experiment (a study may have met another tracking store)."""
    try:
        with guard():
            return MlflowClient().get_run(run_id).info.experiment_id == experiment_id
    except MlflowException:
        return False


def end_orphans(experiment_id: str, study_name: str, live: set[int], reason: str) -> list[str]:
    """End KILLED, with `reason`, the study's runs still RUNNING whose Optuna trial is not running any more
    (`live` holds the numbers of the trials that are): their worker was killed or lost the tracking store
    before it could end them. Returns the ids of the runs ended."""
    client = _Client()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`harness.study` = '{study_name}' and attributes.status = 'RUNNING'",
        max_results=5000,
    )
    ended = []
    for r in runs:
        number = r.data.tags.get("optuna.trial_number")
        if r.data.tags.get("harness.kind") == "study" or (number is not None and int(number) in live):
            continue
        client.set_tag(r.info.run_id, "harness.reason", reason[:4000])
        client.set_tag(r.info.run_id, "optuna.trial_state", "FAIL")
        client.set_terminated(r.info.run_id, "KILLED")
        ended.append(r.info.run_id)
    return ended


class TrialRun:
    """A nested MLflow run for one trial; also the trial's step logger."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.client = _Client()

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
            with guard(), mlflow.start_run(run_id=self.run_id, nested=True):
                mlflow.log_table(pd.DataFrame(rows), artifact_file=path)

    def log_inputs(self, rows: list[dict[str, Any]], name: str, context: str) -> None:
        """The distillation inputs as an MLflow dataset (shown in the run's Datasets column)."""
        if not rows:
            return
        df = pd.DataFrame(rows)
        ds = from_pandas(df, name=name)
        for attempt in range(3):
            try:
                with guard(), mlflow.start_run(run_id=self.run_id, nested=True):
                    mlflow.log_input(ds, context=context)
                return
            except MlflowException as e:
                # Two workers logging the same dataset race on MLflow's unique (experiment, name, digest)
                # row; the loser's retry finds the winner's row and only links it to this run.
                if attempt == 2 or "unique constraint" not in str(e).lower():
                    raise
                time.sleep(0.2 * (attempt + 1))

    def end(self, status: str, reason: str | None = None) -> None:
        if reason:
            self.set_tags({"harness.reason": reason[:4000]})
        self.client.set_terminated(self.run_id, status)


@contextmanager
def trial_run(experiment_id: str, parent_id: str, name: str, tags: dict[str, str], kind: str = "trial") -> Any:
    """Open a nested run (`kind` "trial": one configuration under the study; "seed": one of its seeds under
    it); on an exception it is marked FAILED with the reason, and the exception goes on (KILLED for a pruned
    or interrupted trial)."""
    client = _Client()
    run = client.create_run(
        experiment_id, run_name=name, tags={**tags, "mlflow.parentRunId": parent_id, "harness.kind": kind}
    )
    tr = TrialRun(run.info.run_id)
    try:
        yield tr
    except BaseException as e:
        try:
            if isinstance(e, KeyboardInterrupt):
                tr.end("KILLED", "interrupted (Ctrl-C or SIGTERM); the configuration was requeued")
            else:
                tr.end("KILLED" if type(e).__name__ == "TrialPruned" else "FAILED", f"{type(e).__name__}: {e}")
        except TrackingUnavailable:  # the run stays RUNNING until a later start ends it (end_orphans)
            log.warning("could not end MLflow run %s: the tracking store is unreachable", tr.run_id)
        raise
    else:
        if client.get_run(tr.run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
            tr.end("FINISHED")
