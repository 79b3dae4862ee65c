"""The comparison a report leads with (DESIGN.md section 9): every configuration against the validation-best.

Each completed configuration's MLflow run carries its per-item scores (`item_scores.json`: every arm,
split and seed). Here they become paired grids on the test items x seeds that all configurations
share, and `stats.comparison_table` gives per configuration the test figure with its 95% interval and
the paired difference to the configuration that is best *on validation*, with a Holm-corrected p and
a verdict. The validation figure is the one the sweep optimised (the configuration's mean over seeds).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from harness import aggregate, stats, stores
from harness.report.runs import axes_of
from harness.report.tables import fmt_param, varying_hps
from harness.spec import Suite

log = logging.getLogger(__name__)

# The statistic compared on test and the validation metric that names the reference, per first objective.
# A cost objective (train_tokens, wall_time_s) still compares quality: gap closure.
STATISTIC = {"student_score": ("score", "validation_student_score")}
DEFAULT = ("gap_closure", "validation_gap_closure")
TITLE = {"gap_closure": "gap closure", "score": "student score"}


@dataclass(frozen=True)
class Comparison:
    """The comparison table, its quotable sentence, and what it was computed on."""

    table: pd.DataFrame  # stats.comparison_table's columns plus trial and run_id, ordered by validation rank
    sentence: str
    statistic: str  # "gap_closure" or "score"
    seeds: list[int]
    items: int
    n_boot: int
    notes: dict[str, str] = field(default_factory=dict)  # split → how its items were chosen
    fallback: str | None = None  # why the statistic is not the objective's, when it had to change
    references: dict[str, Any] = field(default_factory=dict)  # teacher and baselines on test, with intervals


def load_item_scores(run_ids: list[str], suite: Suite | None = None) -> dict[str, dict[str, Any]]:
    """run id → its `item_scores.json`; runs without one (failed, pruned, older) are left out. With `suite`, a
    local store's artifacts are found where the work folder is now (MLflow recorded where it was)."""
    out = {}
    where = stores.Artifacts(suite) if suite is not None else None
    client = mlflow.tracking.MlflowClient()
    for rid in run_ids:
        try:
            base = f"runs:/{rid}"
            if where is not None:
                base = where.locate(client.get_run(rid).info.artifact_uri)
            out[rid] = mlflow.artifacts.load_dict(f"{base}/{aggregate.SCORES_ARTIFACT}")
        except Exception as e:  # missing artifact: MLflow raises several types depending on the store
            log.info("run %s has no %s (%s)", rid, aggregate.SCORES_ARTIFACT, type(e).__name__)
    return out


def labels(df: pd.DataFrame) -> pd.Series:
    """`target / context / loss`, plus the hyperparameters that vary in the study; `#trial` only where two
    configurations would otherwise read the same. The same label in two suites is the same configuration
    (the benchmark matches on it)."""
    vary, _ = varying_hps(df)
    axes = axes_of(df)
    base = df.apply(
        lambda r: (
            " / ".join(str(r.get(a) if a != "inputs" or isinstance(r.get(a), str) else "train_split") for a in axes)
            + ("".join(f", {v.removeprefix('hp.')}={fmt_param(r[v])}" for v in vary))
        ),
        axis=1,
    )
    dup = base.duplicated(keep=False)
    return base.where(~dup, base + " #" + df["trial"].astype(str))


def compare(suite: Suite, df: pd.DataFrame, scores: Mapping[str, Mapping[str, Any]]) -> Comparison | None:
    """The comparison over the completed configurations that logged per-item scores; None when there are none."""
    statistic, val_col = STATISTIC.get(suite.sweep.objectives[0], DEFAULT)
    done = df[(df["state"] == "COMPLETE") & df["run_id"].isin(list(scores))].copy()
    if val_col in done:
        done = done[np.isfinite(done[val_col].astype(float))]
    if done.empty:
        return None
    done["configuration"] = labels(done)
    # ties on validation: the earliest trial is the reference (the sentence says so), as export and keep choose
    trials = done["trial"].tolist() if "trial" in done else [None] * len(done)
    done = done.iloc[aggregate.validation_rank(done[val_col].astype(float).tolist(), trials)]
    data = [aggregate.read_item_scores(scores[rid], "test") for rid in done["run_id"]]
    grids, seeds = aggregate.paired(data)
    n_boot, seed = suite.evaluation.bootstrap, suite.seed
    configs = [
        stats.Configuration(label, float(v), g.arms())
        for label, v, g in zip(done["configuration"], done[val_col], grids, strict=True)
    ]
    fallback = None
    try:
        table = stats.comparison_table(configs, statistic, n_boot=n_boot, seed=seed)
    except stats.StatsError as e:
        if statistic != "gap_closure":
            raise
        fallback = f"gap closure is undefined on test ({e}); configurations are compared on the student score"
        statistic = "score"
        table = stats.comparison_table(configs, statistic, n_boot=n_boot, seed=seed)
    table.insert(1, "trial", done["trial"].to_numpy())
    table["run_id"] = done["run_id"].to_numpy()
    table["statistic"] = statistic
    first = scores[done["run_id"].iloc[0]]
    notes = {s: b.get("note", "") for s, b in first["splits"].items()}
    return Comparison(
        table=table,
        sentence=stats.summary_sentence(table),
        statistic=statistic,
        seeds=seeds,
        items=len(grids[0].items),
        n_boot=n_boot,
        notes=notes,
        fallback=fallback,
        references=_references(done, grids, n_boot, seed),
    )


def _references(done: pd.DataFrame, grids: list[aggregate.SplitScores], n_boot: int, seed: int) -> dict[str, Any]:
    """Teacher and untrained baselines (one per context c') on the compared test items, with 95% intervals."""
    teacher = stats.score(grids[0].teacher, n_boot=n_boot, seed=seed)
    baselines: dict[str, stats.Interval] = {}
    for ctx, g in zip(done["context"].astype(str), grids, strict=True):
        baselines.setdefault(ctx, stats.score(g.baseline, n_boot=n_boot, seed=seed))
    return {"teacher": teacher, "baselines": dict(sorted(baselines.items()))}
