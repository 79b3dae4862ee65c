"""A study's results as files: `results/<suite>/` tables, plots and provenance, read back from MLflow.

MLflow (one run per configuration, one nested run per seed) is the record; the report only reads it, so it can be
rewritten at any time, on any machine that sees the stores, and always agrees
with what the MLflow UI shows. Plots that the data cannot support yet (one
trial, no completed trial, nothing varied) are skipped with a note instead of
failing the report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import optuna
import pandas as pd
from matplotlib.typing import RcKeyType

from harness import console
from harness.redact import redact
from harness.report import cost, optuna_plots, plots
from harness.report.comparison import Comparison, compare, load_item_scores
from harness.report.markdown import FOREST, summary_md
from harness.report.provenance import provenance
from harness.report.runs import best_trials, histories, load_runs, load_study, seed_runs, trial_table
from harness.spec import Suite, SuiteError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportData:
    """What every plot may draw from."""

    suite: Suite
    df: pd.DataFrame
    study: optuna.Study | None
    hist: dict[str, dict[str, list[tuple[int, float]]]]  # seed run id → step metric → [(step, value)]
    seeds: dict[str, list[str]]  # configuration run id → its seed run ids
    comparison: Comparison | None


MAKERS: dict[str, Callable[[ReportData, Path], None]] = {
    FOREST: lambda d, p: plots.plot_forest(d.comparison.table if d.comparison else None, p),
    "gap_by_target_loss.png": lambda d, p: plots.plot_gap_by_target_loss(d.df, p),
    "gap_vs_tokens_saved.png": lambda d, p: plots.plot_gap_vs_tokens_saved(d.df, p),
    "training_curves.png": lambda d, p: plots.plot_training_curves(d.df, d.hist, d.seeds, p),
    "optuna_history.png": lambda d, p: optuna_plots.plot_optuna_history(d.suite, d.study, p),
    "optuna_importances.png": lambda d, p: optuna_plots.plot_optuna_importances(d.suite, d.study, p),
    cost.PLOT: lambda d, p: cost.plot_quality_per_compute(d.df, p),
}
PLOTS = tuple(MAKERS)
COMPARISON = "comparison.csv"
FONT: dict[RcKeyType, Any] = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "legend.fontsize": 9,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "figure.titlesize": 14,
}


def write_report(suite: Suite, out: str | Path) -> Path:
    """Write `<out>/<suite>/` (summary.md, summary.csv, comparison.csv, plots, provenance.json) from the
    study's MLflow runs."""
    runs, uri = load_runs(suite)
    kinds = runs.get("tags.harness.kind", pd.Series(dtype=object))
    if runs.empty or not (kinds == "trial").any():
        hint = console.command("run", suite)
        raise SuiteError(f"no trials recorded for suite '{suite.name}' in {redact(uri)}; run `{hint}` first")
    study = load_study(suite)
    df = trial_table(runs, study)
    folder = Path(out) / suite.name
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "summary.csv", index=False)
    prov = provenance(suite, df, uri)
    (folder / "provenance.json").write_text(json.dumps(prov, indent=2, default=str) + "\n")
    comparison = compare(suite, df, load_item_scores(list(df.loc[df["state"] == "COMPLETE", "run_id"]), suite))
    (folder / COMPARISON).unlink(missing_ok=True)
    if comparison is not None:
        comparison.table.to_csv(folder / COMPARISON, index=False)

    seeds = seed_runs(runs)
    curves = [rid for run in best_trials(df)["run_id"] for rid in seeds.get(run, [])]
    data = ReportData(suite, df, study, histories(curves), seeds, comparison)
    matplotlib.use("Agg")  # files only, never a window; chosen before rc_context, which does not restore it
    skipped: dict[str, str | None] = {}
    with matplotlib.rc_context(FONT):
        for name, make in MAKERS.items():
            path = folder / name
            path.unlink(missing_ok=True)  # never leave a stale plot from an earlier report beside new tables
            try:
                make(data, path)
                skipped[name] = None
            except plots.SkipPlot as e:
                log.info("%s skipped: %s", name, e)
                skipped[name] = str(e)
    (folder / "summary.md").write_text(summary_md(suite, df, prov, skipped, comparison))
    return folder
