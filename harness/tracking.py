"""MLflow: one parent run per study, one nested run per trial (a configuration), one nested run per seed
under it, laid out the way MLflow users read them.

Logged by hand (Optuna's MLflowCallback is deprecated) so a trial's run opens
before training, receives step metrics as they happen, and closes with the
status the trial really had (finished, failed, pruned) and why. Every write is
batched (one `log_batch` per step, per parameter set, per final metric set);
trial runs carry MLflow's own source tags and system metrics (CPU, memory, disk,
network, and GPU where `nvidia-ml-py` finds one). The experiment is marked as
model training, describes its metrics, and holds a saved runs view with the
objectives' columns (`ui_url` opens it); the study's parent run receives the
study summary at the end.

A tracking store that stops answering (a server down longer than the MLflow
client's own retries) raises TrackingUnavailable; after the first such failure
the process's later calls fail at once instead of waiting out the retries again.
Runs that a dead or cut-off worker left RUNNING are ended by `end_orphans`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import requests
import sqlalchemy
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from harness import stores
from harness.metrics import STEP_METRICS, TrialMetrics, markdown_table
from harness.redact import redact
from harness.spec import Suite

log = logging.getLogger(__name__)

_BAD = re.compile(r"[^/\w.\- ]")
# MLflow 3.17's UI reads this tag to treat the experiment as model training (runs table), not GenAI.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
NOTE = "mlflow.note.content"  # the description the UI shows for an experiment or a run
VIEW_ID = "harness-trials"  # a saved runs view, stored as the experiment tag mlflow.sharedViewState.<id>
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
RUN_NAME_COLUMN = "attributes.`Run Name`"  # the runs table's column id
SYSTEM_METRICS_INTERVAL_S = 10.0


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


def run_name(target: str, context: str, loss: str, seed: int | None = None, inputs: str | None = None) -> str:
    """A trial run's name: its configuration as the runs table lists it, e.g. `greedy|empty|forward_kl seed=0`;
    inputs other than the train split follow the loss (`greedy|empty|forward_kl|self_study`)."""
    name = f"{target}|{context}|{loss}" + (f"|{inputs}" if inputs and inputs != "train_split" else "")
    return name if seed is None else f"{name} seed={seed}"


def experiment_name(suite: Suite) -> str:
    return f"harness/{suite.name}"


def _describe(suite: Suite) -> str:
    return (
        f"Trials of suite `{suite.name}` (task {suite.task.name}, teacher {suite.models.teacher}, student "
        f"{suite.models.student}): one nested run per trial under one run per study, which holds the study's "
        "summary. Final values are single metrics; `train/loss`, `train/lr` and `heldout/kl` are per-step "
        "series (open a run's Model metrics for the curves).\n\n" + markdown_table()
    )


def use_store(uri: str) -> None:
    """`mlflow.set_tracking_uri`, without its export of the URI to $MLFLOW_TRACKING_URI: the harness reads that
    variable as the user's choice of store for every suite, so a process that ran one suite (the library API, a
    report over several suites) would log the next suite into the first one's store."""
    before = os.environ.get(stores.TRACKING_ENV)
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop(stores.TRACKING_ENV, None)
    else:
        os.environ[stores.TRACKING_ENV] = before


def setup(suite: Suite) -> str:
    """Point MLflow at the suite's store and experiment; returns the experiment id.

    Safe for several workers starting at once: a database store's schema is created by one of them
    (`stores.open_store`), and an experiment another worker created a moment earlier is reused."""
    uri = stores.tracking_uri(suite)
    use_store(uri)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # 4 lines a trial, with the URI in
    name = experiment_name(suite)
    tags = {**EXPERIMENT_KIND, NOTE: _describe(suite)}
    artifacts = stores.artifact_root(suite) if uri.startswith("sqlite") else None

    def experiment() -> str:
        with guard():
            exp = mlflow.get_experiment_by_name(name)
            if exp is not None:
                for key, value in tags.items():  # stores made before these tags existed, or by an older harness
                    if exp.tags.get(key) != value:
                        MlflowClient().set_experiment_tag(exp.experiment_id, key, value)
                return exp.experiment_id
            try:
                return mlflow.create_experiment(name, artifact_location=artifacts, tags=tags)
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


def find_experiment(suite: Suite) -> str | None:
    """The suite's experiment id, or None where nothing was run; creates nothing (the report and UI only read)."""
    use_store(stores.tracking_uri(suite))
    exp = _Client().get_experiment_by_name(experiment_name(suite))
    return None if exp is None else exp.experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def source_tags(tags: dict[str, str]) -> dict[str, str]:
    """`tags` plus MLflow's own source tags (user, entry point, git commit), as `mlflow.start_run` would set."""
    resolved = resolve_tags(tags)
    commit = tags.get("git.commit")
    if commit and commit != "unknown":
        resolved.setdefault("mlflow.source.git.commit", commit)
    return resolved


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
        experiment_id,
        run_name=f"study {study_name}",
        tags=source_tags({**tags, "harness.study": study_name, "harness.kind": "study"}),
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def best_finished(experiment_id: str, study_name: str, metric: str) -> float | None:
    """The highest finite `metric` among the study's finished configuration runs (None before the first)."""
    found = _Client().search_runs(
        [experiment_id],
        filter_string=f"tags.`harness.study` = '{study_name}' and tags.`harness.kind` = 'trial' "
        "and attributes.status = 'FINISHED'",
        max_results=5000,
    )
    values = [v for r in found if (v := r.data.metrics.get(metric)) is not None and math.isfinite(v)]
    return max(values, default=None)


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


@contextmanager
def study_running(parent_id: str) -> Iterator[None]:
    """The parent run is RUNNING while this process works on the study, then FINISHED (KILLED on Ctrl-C,
    FAILED when a bug stopped the study), so its duration spans the study instead of the 8 ms of its creation."""
    client = _Client()
    client.update_run(parent_id, status="RUNNING")
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(parent_id, status)


HEADLINE_METRICS = ("validation_gap_closure", "test_gap_closure")  # first after the configuration's columns
CONFIGURATION_TAG = "harness.configuration"  # on seed runs: `#<trial> <configuration>`
SEED_FILTER = "tags.`harness.kind` = 'seed'"  # the view's rows: seeds, grouped by configuration


def configuration_label(seed_run_name: str, trial_number: str | None) -> str:
    """`#<trial> <configuration>` from a seed run's name (`run_name`): the trial number keeps apart two trials
    of one configuration label that differ in a hyperparameter."""
    label = seed_run_name.rsplit(" seed=", 1)[0]
    return f"#{trial_number} {label}" if trial_number is not None else label


def tag_configurations(experiment_id: str) -> int:
    """Give seed runs logged before the tag existed their `harness.configuration` (stores of older versions), so
    the view groups them too; returns how many were tagged."""
    client = _Client()
    runs = client.search_runs([experiment_id], filter_string=SEED_FILTER, max_results=50_000)
    missing = [r for r in runs if CONFIGURATION_TAG not in r.data.tags]
    for r in missing:
        label = configuration_label(r.info.run_name or "", r.data.tags.get("optuna.trial_number"))
        client.set_tag(r.info.run_id, CONFIGURATION_TAG, label)
    return len(missing)


def save_trials_view(experiment_id: str, metrics: Sequence[str], params: Sequence[str], maximize: bool) -> None:
    """The experiment's saved runs view `harness: trials`: the seed runs, grouped by configuration (MLflow's Group
    by on the seeds' `harness.configuration` tag, every group open), groups sorted by the first metric, best first.
    A group's row is the mean over its seeds, which for gap closure is the configuration's figure (one teacher and
    baseline per configuration); intervals are left to the report. Columns: the configuration (`params`: axes,
    searched hyperparameters), then gap closure on validation and test, then the other `metrics`. Clearing the
    filter shows the study and configuration runs too (MLflow nests by parent only when sorted by start time, and
    a shared view does not keep expanded rows). `ui_url` opens it; the Views menu lists it."""
    tag_configurations(experiment_id)
    shown = [m for m in metrics if not m.endswith(("_low", "_high"))]  # a mean of seeds' bounds is no interval
    ordered = [*(m for m in HEADLINE_METRICS if m in shown), *(m for m in shown if m not in HEADLINE_METRICS)]
    metric_cols = [f"metrics.`{m}`" for m in ordered]
    param_cols = [f"params.`{p}`" for p in params]
    wide = {f"metrics.`{m}`": 170 for m in HEADLINE_METRICS}  # header and full value readable
    state = {
        "searchFilter": SEED_FILTER,
        "orderByKey": f"metrics.`{metrics[0]}`",
        "orderByAsc": not maximize,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": [*param_cols, *metric_cols],
        "columnOrder": [RUN_NAME_COLUMN, *param_cols, *metric_cols],
        "columnWidths": {RUN_NAME_COLUMN: 330, **wide},  # room for `greedy|fewer_demos(k=1)|forward_kl seed=0`
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": CONFIGURATION_TAG}]},
        "groupsExpanded": {},  # every configuration's group open; the untagged runs' group folded
    }
    envelope = {"name": "harness: trials", "createdAt": int(time.time() * 1000), "state": json.dumps(state)}
    _Client().set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))


def ui_url(base: str, experiment_id: str) -> str:
    """The MLflow UI address of the experiment's runs in the saved view, in model-training mode (3.17's UI
    otherwise starts in its GenAI mode, which ignores the experiment's kind)."""
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_ID}&workflowType=machine_learning"


def log_study_summary(
    parent_id: str, best_run_id: str | None, report_dir: Path | None, artifacts: stores.Artifacts | None = None
) -> None:
    """The study's parent run becomes its summary: the best trial's parameters and metrics (final values, so
    the parent's row in the runs table reads like the best trial's), the best run's id, and the report's
    files as artifacts under `report/` with summary.md as the run's description. With `artifacts` (the suite's),
    a local store whose work folder was moved gets them under its current folder, not the recorded one."""
    client = _Client()
    tags: dict[str, str] = {}
    if best_run_id is not None:
        best = client.get_run(best_run_id)
        step_keys = {metric_name(k) for k in STEP_METRICS}
        metrics = [Metric(k, v, int(time.time() * 1000), 0) for k, v in best.data.metrics.items() if k not in step_keys]
        metrics = [m for m in metrics if not m.key.startswith("system/")]
        params = [Param(k, v) for k, v in best.data.params.items()]
        client.log_batch(parent_id, metrics=metrics, params=params)
        tags |= {"harness.best_run_id": best_run_id, "harness.best_run_name": best.info.run_name or ""}
        if "optuna.trial_number" in best.data.tags:
            tags["harness.best_trial"] = best.data.tags["optuna.trial_number"]
    if report_dir is not None:
        moved = artifacts.moved(client.get_run(parent_id).info.artifact_uri) if artifacts else None
        if moved is not None:  # MLflow's local store copies the files; it would re-create the old work folder
            shutil.copytree(report_dir, moved / "report", dirs_exist_ok=True)
        else:
            client.log_artifacts(parent_id, str(report_dir), artifact_path="report")
        summary = report_dir / "summary.md"
        if summary.exists():
            tags[NOTE] = summary.read_text()[:7900]
    if tags:
        client.log_batch(parent_id, tags=[RunTag(k, v) for k, v in tags.items()])


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
        self._log_metrics(metrics, step)

    def log_params(self, params: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, params=[Param(metric_name(k), str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: TrialMetrics) -> None:
        """The trial's final values, in one batch (one timestamp: they were measured together)."""
        self._log_metrics(metrics.logged(), 0)

    def log_ledger(self, values: dict[str, float]) -> None:
        """The trial's cost ledger and top-k fidelity (`harness.ledger`): only `cost/` and `topk/` names, so a
        ledger can never shadow a defined metric."""
        bad = sorted(k for k in values if not k.startswith(("cost/", "topk/")))
        if bad:
            raise ValueError(f"ledger values {bad} must be named cost/... or topk/... (harness/ledger.py)")
        if values:
            self._log_metrics(values, 0)

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(metric_name(k), float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def log_artifacts(self, folder: Path, path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path=path)

    def get_tag(self, key: str) -> str | None:
        return self.client.get_run(self.run_id).data.tags.get(key)

    def log_dict(self, data: Any, path: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=1, default=str), path)

    def log_table(self, rows: list[dict[str, Any]], path: str) -> None:
        if rows:
            mlflow.log_table(pd.DataFrame(rows), artifact_file=path, run_id=self.run_id)

    def log_inputs(self, rows: list[dict[str, Any]], name: str, context: str) -> None:
        """The distillation inputs as an MLflow dataset (shown in the run's Datasets column)."""
        if not rows:
            return
        ds = from_pandas(pd.DataFrame(rows), name=name)
        # What mlflow.log_input does, on this run rather than the fluent active one (which would end it).
        entity = DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=[entity])
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


class _SystemMetrics:
    """MLflow's system metrics monitor on a run created by the client (`mlflow.start_run(log_system_metrics=True)`
    would need the fluent active-run stack). A trial shorter than the sampling interval still gets one sample."""

    def __init__(self, run_id: str) -> None:
        self.monitor: SystemMetricsMonitor | None
        try:
            self.monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S)
            self.monitor.start()
        except Exception as e:  # psutil missing or a platform without these counters: the trial goes on
            log.warning("system metrics are not recorded for this trial: %s: %s", type(e).__name__, e)
            self.monitor = None

    def finish(self) -> None:
        m = self.monitor
        if m is None:
            return
        m.finish()
        if m._logging_step == 0:  # nothing published yet: take one sample now
            m.collect_metrics()
            m.publish_metrics(m.aggregate_metrics())
            m.mlflow_logger.flush()


@contextmanager
def trial_run(
    experiment_id: str, parent_id: str, name: str, tags: dict[str, str], kind: str = "trial"
) -> Iterator[TrialRun]:
    """Open a nested run (`kind` "trial": one configuration under the study; "seed": one of its seeds under
    it) with source tags and system metrics; on an exception it is marked FAILED with the reason, and the
    exception goes on (KILLED for a pruned or interrupted trial)."""
    client = _Client()
    if kind == "seed":  # the runs view groups seeds by it (MLflow's Group by)
        tags = {**tags, CONFIGURATION_TAG: configuration_label(name, tags.get("optuna.trial_number"))}
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags=source_tags({**tags, "mlflow.parentRunId": parent_id, "harness.kind": kind}),
    )
    tr = TrialRun(run.info.run_id)
    system = _SystemMetrics(tr.run_id)
    try:
        yield tr
    except BaseException as e:
        system.finish()
        try:
            if isinstance(e, KeyboardInterrupt):
                tr.end("KILLED", "interrupted (Ctrl-C or SIGTERM); the configuration was requeued")
            else:
                tr.end("KILLED" if type(e).__name__ == "TrialPruned" else "FAILED", f"{type(e).__name__}: {e}")
        except TrackingUnavailable:  # the run stays RUNNING until a later start ends it (end_orphans)
            log.warning("could not end MLflow run %s: the tracking store is unreachable", tr.run_id)
        raise
    else:
        system.finish()
        if client.get_run(tr.run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
            tr.end("FINISHED")
