"""A study read back into one pandas frame: MLflow runs (params, metrics, tags) joined with Optuna's trial states."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import mlflow
import numpy as np
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient

from harness import aggregate, stores, tracking
from harness.metrics import METRICS, STEP_METRICS
from harness.redact import redact
from harness.spec import Suite

log = logging.getLogger(__name__)

AXES = ("target", "context", "loss")


def axes_of(df: pd.DataFrame) -> tuple[str, ...]:
    """The axes a study's runs name: the three, and `inputs` where a trial drew its inputs elsewhere than the
    train split (runs log it only then)."""
    return (*AXES, "inputs") if "inputs" in df and df["inputs"].notna().any() else AXES


TAGS = (
    "teacher",
    "student",
    "task",
    "machine",
    "device",
    "git.commit",
    "harness.suite",
    "harness.suite_hash",
    "harness.study",
)
MAX_CURVES = 5
VALIDATION, TEST = "validation_gap_closure", "test_gap_closure"


def load_runs(suite: Suite) -> tuple[pd.DataFrame, str]:
    """The study's MLflow runs (parent and trials) as one pandas frame, and the tracking URI they came from.
    Reads only: a suite never run has no experiment, and gets none."""
    exp_id = tracking.find_experiment(suite)
    uri = mlflow.get_tracking_uri()
    if exp_id is None:
        return pd.DataFrame(), uri
    runs = mlflow.search_runs(
        experiment_ids=[exp_id],
        filter_string=f"tags.`harness.study` = '{stores.study_name(suite)}'",
        output_format="pandas",
    )
    if not isinstance(runs, pd.DataFrame):  # output_format="pandas" promises a frame; say so if it ever is not
        raise TypeError(f"mlflow.search_runs returned {type(runs).__name__}, not a DataFrame")
    return runs, uri


def load_study(suite: Suite) -> optuna.Study | None:
    """The Optuna study behind the runs, or None where its storage no longer holds it."""
    try:
        return optuna.load_study(study_name=stores.study_name(suite), storage=stores.storage_url(suite))
    except Exception as e:  # missing, unreachable or damaged storage: MLflow alone still makes a report
        text = str(getattr(e, "orig", None) or e).strip()  # SQLAlchemy appends the SQL: one line is enough
        log.warning(
            "optuna study %s not loaded from %s (%s: %s); its plots are skipped",
            stores.study_name(suite),
            redact(stores.storage_url(suite)),
            type(e).__name__,
            redact(text.splitlines()[0] if text else ""),
        )
        return None


def _numeric(col: pd.Series) -> pd.Series:
    """MLflow params come back as strings; numbers become numbers so tables sort and average."""
    try:
        num = pd.to_numeric(col)
    except (ValueError, TypeError):
        return col
    if num.dtype.kind == "f" and col.dropna().astype(str).str.fullmatch(r"-?\d+").all():
        return num.astype("Int64")  # `k` absent from some trials stays an integer, not 1.0
    return num


def trial_table(runs: pd.DataFrame, study: optuna.Study | None = None) -> pd.DataFrame:
    """One row per trial (configuration) run: trial number, state, reason, then every param, metric (means over
    seeds, test intervals over items x seeds) and provenance tag. Seed runs are left out."""
    kind = runs.get("tags.harness.kind", pd.Series(index=runs.index, dtype=object))
    trials = runs[kind == "trial"].copy()
    optuna_trials = {t.number: t for t in study.get_trials(deepcopy=False)} if study is not None else {}

    def tag(name: str) -> pd.Series:
        return trials.get(f"tags.{name}", pd.Series(index=trials.index, dtype=object))

    number = pd.to_numeric(tag("optuna.trial_number"), errors="coerce").astype("Int64")
    status_state = {"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "PRUNED"}
    state, reason = [], []
    for n, t_state, t_reason, status in zip(
        number, tag("optuna.trial_state"), tag("harness.reason"), trials["status"], strict=True
    ):
        o_trial = optuna_trials.get(int(n)) if not pd.isna(n) else None
        state.append(
            o_trial.state.name
            if o_trial is not None
            else t_state
            if isinstance(t_state, str)
            else status_state.get(status, status)
        )
        r = (
            t_reason
            if isinstance(t_reason, str)
            else (o_trial.user_attrs.get("reason", "") if o_trial is not None else "")
        )
        reason.append(r or "")
    out = pd.DataFrame(
        {"trial": number, "state": state, "reason": reason, "run_status": trials["status"].values}, index=trials.index
    )

    params = {c.removeprefix("params."): _numeric(trials[c]) for c in trials.columns if c.startswith("params.")}
    for axis in AXES:  # a stable schema, even when no trial got as far as logging its parameters
        params.setdefault(axis, pd.Series(index=trials.index, dtype=object))
    first = [*AXES, *(f"{a}.name" for a in AXES)]
    order = [p for p in first if p in params] + sorted(p for p in params if p not in first and not p.startswith("hp."))
    order += sorted(p for p in params if p.startswith("hp."))
    metrics = {c.removeprefix("metrics."): trials[c] for c in trials.columns if c.startswith("metrics.")}
    for m in METRICS:  # ... or its metrics (every trial failed early)
        metrics.setdefault(m, pd.Series(np.nan, index=trials.index, dtype=float))
    m_order = [m for m in METRICS if m in metrics] + sorted(m for m in metrics if m not in METRICS)
    extra = {
        "run_id": trials["run_id"],
        "run_name": tag("mlflow.runName"),
        "start_time": trials["start_time"],
        "end_time": trials["end_time"],
    }
    extra.update({t: tag(t) for t in TAGS if f"tags.{t}" in trials.columns})
    out = pd.concat(
        [
            out,
            pd.DataFrame({p: params[p] for p in order}, index=trials.index),
            pd.DataFrame({m: metrics[m] for m in m_order}, index=trials.index),
            pd.DataFrame(extra, index=trials.index),
        ],
        axis=1,
    )
    return out.sort_values(["trial", "start_time"], na_position="last").reset_index(drop=True)


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """Completed configurations with a defined gap closure on both splits: the ones the plots can place."""
    if not {VALIDATION, TEST} <= set(df.columns):
        return df.iloc[0:0]
    ok = np.isfinite(df[VALIDATION].astype(float)) & np.isfinite(df[TEST].astype(float))
    return df[(df["state"] == "COMPLETE") & ok]


def seed_runs(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Configuration run id → its seeds' run ids, in seed order (the seed runs hold the training curves)."""
    kind = runs.get("tags.harness.kind", pd.Series(index=runs.index, dtype=object))
    seeds = runs[kind == "seed"]
    if seeds.empty:
        return {}
    order = pd.to_numeric(seeds.get("tags.harness.seed"), errors="coerce")
    seeds = seeds.assign(_seed=order).sort_values("_seed")
    out: dict[str, list[str]] = {}
    for parent, rid in zip(seeds["tags.mlflow.parentRunId"], seeds["run_id"], strict=True):
        out.setdefault(str(parent), []).append(str(rid))
    return out


def histories(run_ids: Sequence[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per-step metrics (train loss, held-out KL curve) of the given runs: run id → key → [(step, value)]."""
    client = MlflowClient()
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for rid in run_ids:
        out[rid] = {k: sorted((m.step, m.value) for m in client.get_metric_history(rid, k)) for k in STEP_METRICS}
    return out


def best_trials(df: pd.DataFrame, n: int = MAX_CURVES) -> pd.DataFrame:
    """The n completed configurations with the highest gap closure on validation (what chooses; never test),
    ties to the earliest trial (`aggregate.validation_rank`, as the kept student and the comparison)."""
    if VALIDATION not in df.columns:
        return df.iloc[0:0]
    done = df[df["state"] == "COMPLETE"]
    trials = done["trial"] if "trial" in done else pd.Series([None] * len(done), index=done.index)
    order = aggregate.validation_rank(done[VALIDATION].astype(float).tolist(), trials.tolist())
    return done.iloc[order[:n]]
