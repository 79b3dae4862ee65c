"""A study's results as files: `results/<suite>/` tables, plots and provenance, read back from MLflow.

MLflow (one run per trial) is the record; this module only reads it, so the
report can be rewritten at any time, on any machine that sees the stores, and
always agrees with what the MLflow UI shows. Plots that the data cannot support
yet (one trial, no completed trial, nothing varied) are skipped with a note
instead of failing the report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from harness import stores, tracking
from harness.spec import Suite, SuiteError

log = logging.getLogger(__name__)

AXES = ("target", "context", "loss")
PACKAGES = ("torch", "transformers", "lm_eval", "mlflow", "optuna", "peft", "pandas", "numpy", "matplotlib")
STEP_METRICS = ("train/loss", "train/lr", "heldout/kl")
# Final metrics in reading order; any other metric follows alphabetically.
METRICS = (
    "gap_closure",
    "gap_closure_stderr",
    "teacher_score",
    "teacher_stderr",
    "baseline_score",
    "baseline_stderr",
    "student_score",
    "student_stderr",
    "heldout_kl",
    "untrained_heldout_kl",
    "greedy_agreement",
    "untrained_greedy_agreement",
    "context_tokens_saved",
    "train_tokens",
    "target_tokens",
    "train_steps",
    "final_train_loss",
    "train_time_s",
    "teacher_time_s",
    "eval_time_s",
    "wall_time_s",
    "peak_memory_mb",
    "train_tokens_per_s",
    "control_base_score",
    "control_base_stderr",
    "control_student_score",
    "control_student_stderr",
    "control_forgetting",
    "control_forgetting_stderr",
)
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
PLOTS = (
    "gap_by_target_loss.png",
    "gap_vs_tokens_saved.png",
    "training_curves.png",
    "optuna_history.png",
    "optuna_importances.png",
)
MAX_CURVES = 5
FONT = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "legend.fontsize": 9,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "figure.titlesize": 14,
}


class SkipPlot(Exception):
    """The data cannot support this plot yet; the message says why (shown in summary.md)."""


# --- reading the study ---------------------------------------------------------------------------------------------
def load_runs(suite: Suite) -> tuple[pd.DataFrame, str]:
    """The study's MLflow runs (parent and trials) as one pandas frame, and the tracking URI they came from."""
    exp_id = tracking.setup(suite)
    uri = mlflow.get_tracking_uri()
    runs = mlflow.search_runs(
        experiment_ids=[exp_id],
        filter_string=f"tags.`harness.study` = '{stores.study_name(suite)}'",
        output_format="pandas",
    )
    assert isinstance(runs, pd.DataFrame)
    return runs, uri


def load_study(suite: Suite) -> Any | None:
    """The Optuna study behind the runs, or None where its storage no longer holds it."""
    import optuna

    try:
        return optuna.load_study(study_name=stores.study_name(suite), storage=stores.storage_url(suite))
    except Exception as e:  # missing or unreachable storage: MLflow alone still makes a report
        log.warning(
            "optuna study %s not loaded from %s (%s: %s); its plots are skipped",
            stores.study_name(suite),
            stores.storage_url(suite),
            type(e).__name__,
            e,
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


def trial_table(runs: pd.DataFrame, study: Any | None = None) -> pd.DataFrame:
    """One row per trial run: trial number, state, reason, then every param, metric and provenance tag."""
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
        ot = optuna_trials.get(int(n)) if not pd.isna(n) else None
        state.append(
            ot.state.name
            if ot is not None
            else t_state
            if isinstance(t_state, str)
            else status_state.get(status, status)
        )
        r = t_reason if isinstance(t_reason, str) else (ot.user_attrs.get("reason", "") if ot is not None else "")
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
    """Completed trials with a defined gap closure: the only ones that rank configurations."""
    if "gap_closure" not in df:
        return df.iloc[0:0]
    return df[(df["state"] == "COMPLETE") & np.isfinite(df["gap_closure"].astype(float))]


def histories(run_ids: Sequence[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per-step metrics (train loss, held-out KL curve) of the given runs: run id → key → [(step, value)]."""
    client = MlflowClient()
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for rid in run_ids:
        out[rid] = {k: sorted((m.step, m.value) for m in client.get_metric_history(rid, k)) for k in STEP_METRICS}
    return out


# --- provenance ----------------------------------------------------------------------------------------------------
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
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:  # a broken CUDA setup must not stop a report
        return "unknown"


def _portable(uri: str) -> str:
    """A store URI with this machine's working directory and home made relative, for committed reports."""
    for root, short in ((str(Path.cwd().resolve()), "."), (str(Path.home()), "~")):
        uri = uri.replace(root + "/", short + "/")
    return uri


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
        "suite_file": _portable(suite.source or ""),
        "suite_hash": suite.content_hash(),
        "study": stores.study_name(suite),
        "task": suite.task.name,
        "teacher": suite.models.teacher,
        "student": suite.models.student,
        "objectives": list(suite.sweep.objectives),
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
        "mlflow_tracking_uri": _portable(uri),
        "optuna_storage": _portable(stores.storage_url(suite)),
    }


# --- formatting ----------------------------------------------------------------------------------------------------
def _isnum(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v: Any, digits: int = 3) -> str:
    """One table cell: '–' for missing, integers without decimals, other numbers to `digits` places."""
    if v is None or (isinstance(v, float | np.floating) and not math.isfinite(v)) or v is pd.NA:
        return "–"
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return str(int(v))
    if _isnum(v):
        return f"{int(v)}" if float(v).is_integer() and abs(v) >= 1 else f"{float(v):.{digits}f}"
    return str(v)


def fmt_param(v: Any) -> str:
    """A parameter as the user wrote it: 0.001, 3e-05, 8; not 0.001000."""
    if _isnum(v):
        return str(int(v)) if float(v).is_integer() else f"{float(v):g}"
    return fmt(v)


def pm(v: Any, se: Any, digits: int = 3) -> str:
    """value ± stderr, or just the value where the stderr is unknown."""
    if not _isnum(v):
        return "–"
    return f"{v:.{digits}f} ± {se:.{digits}f}" if _isnum(se) else f"{v:.{digits}f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table written by hand (tabulate is not one of our dependencies)."""

    def cell(v: Any) -> str:
        return (v if isinstance(v, str) else fmt(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def mean_se(values: pd.Series, own_se: pd.Series) -> tuple[float, float]:
    """Mean and its stderr across trials; one trial → that trial's own bootstrap stderr."""
    v = values.astype(float).dropna()
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v.iloc[0]), float(own_se.astype(float).loc[v.index[0]])
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


def _col_mean(df: pd.DataFrame, col: str) -> float:
    return float(df[col].astype(float).mean()) if col in df and len(df) and df[col].notna().any() else math.nan


def axis_table(df: pd.DataFrame, axis: str) -> str:
    """Per value of one axis: how many trials completed and how well they closed the gap, at what cost."""
    done = completed(df)
    rows = []
    for value in sorted(df[axis].dropna().astype(str).unique()):
        mine, ok = df[df[axis].astype(str) == value], done[done[axis].astype(str) == value]
        best = ok.loc[ok["gap_closure"].astype(float).idxmax()] if len(ok) else None
        m, se = mean_se(ok["gap_closure"], ok.get("gap_closure_stderr", pd.Series(math.nan, index=ok.index)))
        rows.append(
            [
                value,
                f"{len(ok)} / {len(mine)}",
                pm(best["gap_closure"], best.get("gap_closure_stderr")) if best is not None else "–",
                pm(m, se),
                fmt(_col_mean(ok, "student_score")),
                fmt(_col_mean(ok, "context_tokens_saved"), 1),
                fmt(_col_mean(ok, "train_tokens"), 0),
                fmt(_col_mean(ok, "wall_time_s"), 1),
            ]
        )
    headers = [
        axis,
        "completed / trials",
        "best gap closure",
        "mean gap closure",
        "mean student score",
        "mean context tokens saved",
        "mean training tokens",
        "mean wall time (s)",
    ]
    return md_table(headers, rows)


def varying_hps(df: pd.DataFrame) -> tuple[list[str], dict[str, Any]]:
    """Hyperparameter columns that differ between trials, and the fixed ones with their value."""
    hps = [c for c in df.columns if c.startswith("hp.")]
    vary = [c for c in hps if df[c].astype(str).nunique(dropna=False) > 1]
    fixed = {c: df[c].dropna().iloc[0] for c in hps if c not in vary and df[c].notna().any()}
    return vary, fixed


def trial_label(row: pd.Series) -> str:
    return f"#{fmt(row['trial'])} " + " / ".join(str(row.get(a, "?")) for a in AXES)


# --- plots ---------------------------------------------------------------------------------------------------------
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_gap_by_target_loss(df: pd.DataFrame, path: Path) -> None:
    """Grouped bars: mean gap closure (± stderr) per target strategy × loss, with each trial as a point."""
    done = completed(df)
    if done.empty:
        raise SkipPlot("no completed trial with a defined gap closure")
    plt = _plt()
    targets, losses = sorted(done["target"].astype(str).unique()), sorted(done["loss"].astype(str).unique())
    width = 0.8 / len(losses)
    fig, ax = plt.subplots(figsize=(min(14.0, max(7.0, 1.1 * len(targets) * len(losses) ** 0.5 + 4)), 5.0))
    cmap = plt.get_cmap("tab10")
    rng = np.random.default_rng(0)
    point_label: str | None = "each trial"
    for j, loss in enumerate(losses):
        xs, means, ses = [], [], []
        for i, target in enumerate(targets):
            cell = done[(done["target"].astype(str) == target) & (done["loss"].astype(str) == loss)]
            if cell.empty:
                continue
            m, se = mean_se(cell["gap_closure"], cell["gap_closure_stderr"])
            x = i - 0.4 + width * (j + 0.5)
            xs.append(x), means.append(m), ses.append(se if math.isfinite(se) else 0.0)
            jitter = rng.uniform(-width / 4, width / 4, len(cell)) if len(cell) > 1 else np.zeros(1)
            ax.scatter(x + jitter, cell["gap_closure"].astype(float), s=24, color="black", zorder=3, label=point_label)
            point_label = None
        ax.bar(
            xs,
            means,
            width * 0.9,
            yerr=ses,
            capsize=4,
            color=cmap(j % 10),
            alpha=0.85,
            label=loss,
            error_kw={"elinewidth": 1.2},
        )
    ax.axhline(0, color="grey", lw=1, ls="--", label="baseline level (0)")
    ax.axhline(1, color="green", lw=1, ls=":", label="teacher level (1)")
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, -0.1), max(hi, 1.1))
    ax.set_xticks(
        range(len(targets)),
        targets,
        rotation=20 if len(targets) > 3 else 0,
        ha="right" if len(targets) > 3 else "center",
    )
    ax.set_xlabel("target-selection strategy")
    ax.set_ylabel("gap closure (0 = baseline, 1 = teacher)")
    ax.set_title("Gap closure by target strategy and loss\n(bars: mean ± stderr over completed trials)")
    ax.legend(title="bars: loss", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both axes (both maximised), ordered by x."""
    order = sorted(range(len(x)), key=lambda i: (-x[i], -y[i]))
    front, best = [], -math.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.array(front[::-1], dtype=int)


def plot_gap_vs_tokens_saved(df: pd.DataFrame, path: Path) -> None:
    """Quality kept vs context removed: gap closure against tokens saved per query, with the Pareto front."""
    done = completed(df)
    if "context_tokens_saved" in done:
        done = done[np.isfinite(done["context_tokens_saved"].astype(float))]
    if done.empty:
        raise SkipPlot("no completed trial with both gap closure and context tokens saved")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 5.0))
    markers = "osD^vP*Xh<>"
    cmap = plt.get_cmap("tab10")
    for j, (ctx, grp) in enumerate(sorted(done.groupby(done["context"].astype(str)), key=lambda g: g[0])):
        ax.errorbar(
            grp["context_tokens_saved"].astype(float),
            grp["gap_closure"].astype(float),
            yerr=grp["gap_closure_stderr"].astype(float).fillna(0.0),
            fmt=markers[j % len(markers)],
            color=cmap(j % 10),
            ms=8,
            capsize=3,
            elinewidth=0.8,
            alpha=0.9,
            label=ctx,
        )
    x, y = done["context_tokens_saved"].astype(float).to_numpy(), done["gap_closure"].astype(float).to_numpy()
    front = pareto_front(x, y)
    ax.scatter(
        x[front],
        y[front],
        s=220,
        facecolors="none",
        edgecolors="black",
        lw=1.2,
        zorder=4,
        label="Pareto front" if len(front) == 1 else None,
    )
    if len(front) > 1:
        ax.plot(x[front], y[front], color="black", lw=1.2, ls="--", marker="", label="Pareto front", zorder=1)
    label_all = len(x) <= 15  # beyond that, numbering every point only makes a blot; number the front
    on_front = set(front.tolist())
    for k, (xi, yi, n) in enumerate(zip(x, y, done["trial"], strict=True)):
        if label_all or k in on_front:
            ax.annotate(f"#{n}", (xi, yi), textcoords="offset points", xytext=(6, 4), fontsize=8, color="dimgrey")
    ax.axhline(0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("context tokens saved per query (|c| − |c'|)")
    ax.set_ylabel("gap closure (0 = baseline, 1 = teacher)")
    which = "trial number" if label_all else "trial number on the front"
    ax.set_title(f"Gap closure vs context tokens saved\n(error bars: bootstrap stderr; labels: {which})")
    ax.legend(title="context modification", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.margins(x=0.15, y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_trials(df: pd.DataFrame, n: int = MAX_CURVES) -> pd.DataFrame:
    """The n completed trials with the highest gap closure."""
    return completed(df).sort_values("gap_closure", ascending=False).head(n)


def plot_training_curves(df: pd.DataFrame, hist: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    """Training loss and held-out KL against step for the best trials: did they converge, and still improve?"""
    best = best_trials(df)
    best = best[[any(hist.get(r, {}).get(k) for k in ("train/loss", "heldout/kl")) for r in best["run_id"]]]
    if best.empty:
        raise SkipPlot("no completed trial has logged step metrics")
    plt = _plt()
    fig, (ax_loss, ax_kl) = plt.subplots(1, 2, figsize=(11.0, 4.6))
    cmap = plt.get_cmap("tab10")
    for i, (_, row) in enumerate(best.iterrows()):
        h = hist[row["run_id"]]
        label: str | None = f"{trial_label(row)} (gap {fmt(row['gap_closure'], 2)})"
        for ax, key in ((ax_loss, "train/loss"), (ax_kl, "heldout/kl")):
            if h.get(key):
                steps, vals = zip(*h[key], strict=True)
                ax.plot(steps, vals, marker="o" if len(steps) <= 30 else "", ms=4, color=cmap(i % 10), label=label)
                label = None  # one legend entry per trial, shared by both panels
    ax_loss.set_title("Training loss")
    ax_loss.set_ylabel("training loss (the trial's loss)")
    ax_kl.set_title("Held-out KL(teacher ‖ student)\n(step 0 = untrained student)")
    ax_kl.set_ylabel("mean token KL (nats)")
    for ax in (ax_loss, ax_kl):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(
        f"Training curves of the {len(best)} best trials by gap closure"
        if len(best) > 1
        else "Training curves of the best trial by gap closure"
    )
    ncol = 1 if len(best) <= 2 else 2
    fig.legend(loc="lower center", ncol=ncol, bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(best) / ncol) + 0.02, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _optuna_target(suite: Suite, study: Any) -> dict[str, Any]:
    name = suite.sweep.objectives[0].replace("_", " ")
    if len(study.directions) > 1:
        return {"target": lambda t: t.values[0], "target_name": name}
    return {"target_name": name}


def _optuna_plot(path: Path, draw: Callable[[], Any], title: str, integer_x: bool = False) -> None:
    import matplotlib
    from optuna.exceptions import ExperimentalWarning

    plt = _plt()
    with warnings.catch_warnings(), matplotlib.rc_context():  # optuna switches the global style; keep it local
        warnings.simplefilter("ignore", ExperimentalWarning)
        try:
            ax = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            plt.close("all")
            raise SkipPlot(f"optuna could not draw it ({type(e).__name__}: {e})") from e
        fig = ax.figure
        fig.set_size_inches(8.0, 4.8)
        for loc in ("left", "right"):
            ax.set_title("", loc=loc)  # optuna's own title sits left and would overlap ours
        ax.set_title(title)
        if integer_x:
            ax.xaxis.get_major_locator().set_params(integer=True)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _complete_optuna(study: Any) -> list[Any]:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def plot_optuna_history(suite: Suite, study: Any | None, path: Path) -> None:
    """Optuna's optimization history: is the sampler still finding better configurations?"""
    if study is None:
        raise SkipPlot("the Optuna study is not in its storage")
    if len(_complete_optuna(study)) < 2:
        raise SkipPlot("needs at least 2 completed Optuna trials")
    from optuna.visualization.matplotlib import plot_optimization_history

    kw = _optuna_target(suite, study)
    n = len(_complete_optuna(study))
    _optuna_plot(
        path,
        lambda: plot_optimization_history(study, **kw),
        f"Optimization history of {kw['target_name']} ({n} completed trials)",
        integer_x=True,
    )


def plot_optuna_importances(suite: Suite, study: Any | None, path: Path) -> None:
    """Optuna's parameter importances (fANOVA): which axis or hyperparameter moves the objective most."""
    if study is None:
        raise SkipPlot("the Optuna study is not in its storage")
    trials = _complete_optuna(study)
    if len(trials) < 2:
        raise SkipPlot("needs at least 2 completed Optuna trials")
    varied = {k for k in trials[0].params if len({repr(t.params.get(k)) for t in trials}) > 1}
    if not varied:
        raise SkipPlot("no parameter varies between the completed trials")
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_param_importances

    kw = _optuna_target(suite, study)
    evaluator = FanovaImportanceEvaluator(seed=suite.seed)  # same study → same picture
    _optuna_plot(
        path,
        lambda: plot_param_importances(study, evaluator=evaluator, **kw),
        f"Parameter importances for {kw['target_name']}\n(fANOVA over {len(trials)} completed trials)",
    )


# --- summary.md ----------------------------------------------------------------------------------------------------
def _provenance_md(p: dict[str, Any], df: pd.DataFrame) -> list[str]:
    states = df["state"].value_counts()
    counts = ", ".join(f"{n} {s.lower()}" for s, n in states.items())
    m = p["report_machine"]
    rows = [
        ["suite", f"`{p['suite']}` (content hash `{p['suite_hash']}`)"],
        ["study", f"`{p['study']}`, objective{'s' if len(p['objectives']) > 1 else ''}: {', '.join(p['objectives'])}"],
        ["task / teacher / student", f"{p['task']} / {p['teacher']} / {p['student']}"],
        ["trials", f"{len(df)} recorded ({counts})"],
        ["trials ran", f"{p['trials_first_start'] or '?'} → {p['trials_last_end'] or '?'}"],
        ["git commit (trials)", ", ".join(f"`{c}`" for c in p["git_commit_trials"]) or "unknown"],
        ["git commit (report)", f"`{p['git_commit_report']}`"],
        [
            "trials machine / device",
            f"{', '.join(p['trials_machine']) or '?'} / {', '.join(p['trials_device']) or '?'}",
        ],
        ["report date (UTC)", p["report_date"]],
        ["report machine", f"{m['cpu']} ({m['cpu_count']} cores), GPU: {m['gpu']}, {m['platform']}"],
        ["python", p["python"]],
        ["packages", ", ".join(f"{k} {v}" for k, v in p["packages"].items())],
        ["MLflow store", f"`{p['mlflow_tracking_uri']}`"],
        ["Optuna storage", f"`{p['optuna_storage']}`"],
    ]
    return [md_table(["", ""], rows)]


def _references_md(df: pd.DataFrame) -> list[str]:
    out = ["## Reference scores", ""]
    have = df[df.get("teacher_score", pd.Series(dtype=float)).notna()] if "teacher_score" in df else df.iloc[0:0]
    if have.empty:
        return [*out, "No trial reached scoring.", ""]
    t = have.iloc[0]
    out += [
        f"Teacher (base model with the full context c): **{pm(t['teacher_score'], t.get('teacher_stderr'))}**",
        "",
        "Baseline (base model with the shorter context c', no training), per context modification:",
        "",
    ]
    rows = []
    for ctx, grp in sorted(have.groupby(have["context"].astype(str)), key=lambda g: g[0]):
        r = grp.iloc[0]
        rows.append([ctx, pm(r.get("baseline_score"), r.get("baseline_stderr")), fmt(r.get("context_tokens_saved"), 1)])
    return [*out, md_table(["context", "baseline score", "context tokens saved per query"], rows), ""]


def _best_md(df: pd.DataFrame) -> list[str]:
    out = ["## Best configuration", ""]
    best = best_trials(df, 1)
    if best.empty:
        return [*out, "No completed trial with a defined gap closure yet.", ""]
    b = best.iloc[0]
    out += [
        f"Trial **#{fmt(b['trial'])}**: target `{b['target']}`, context `{b['context']}`, loss `{b['loss']}` — "
        f"gap closure **{pm(b['gap_closure'], b.get('gap_closure_stderr'))}** "
        f"(student {pm(b.get('student_score'), b.get('student_stderr'))}, "
        f"teacher {pm(b.get('teacher_score'), b.get('teacher_stderr'))}, "
        f"baseline {pm(b.get('baseline_score'), b.get('baseline_stderr'))}).",
        "",
    ]
    params = [c for c in df.columns if c in AXES or "." in c and c.split(".")[0] in (*AXES, "hp")]
    params = [c for c in params if c not in TAGS and not c.startswith("harness.")]
    out += [md_table(["parameter", "value"], [[p, fmt_param(b[p])] for p in params if not pd.isna(b[p])]), ""]
    metrics = [m for m in METRICS if m in df and not pd.isna(b[m])]
    out += [md_table(["metric", "value"], [[m, fmt(b[m], 4)] for m in metrics]), ""]
    return out


def _trials_md(df: pd.DataFrame) -> list[str]:
    vary, fixed = varying_hps(df)
    out = ["## All trials", ""]
    if fixed:
        out += [
            "Fixed hyperparameters: "
            + ", ".join(f"`{k.removeprefix('hp.')}` = {fmt_param(v)}" for k, v in fixed.items()),
            "",
        ]
    control = "control_forgetting" in df and df["control_forgetting"].notna().any()
    headers = [
        "#",
        "state",
        *AXES,
        *(v.removeprefix("hp.") for v in vary),
        "gap closure",
        "student score",
        *(["forgetting on the control task"] if control else []),
        "context tokens saved",
        "wall time (s)",
    ]
    rows = [
        [
            fmt(r["trial"]),
            r["state"],
            *(r.get(a) for a in AXES),
            *(fmt_param(r[v]) for v in vary),
            pm(r.get("gap_closure"), r.get("gap_closure_stderr")),
            fmt(r.get("student_score")),
            *([pm(r.get("control_forgetting"), r.get("control_forgetting_stderr"))] if control else []),
            fmt(r.get("context_tokens_saved"), 1),
            fmt(r.get("wall_time_s"), 1),
        ]
        for _, r in df.iterrows()
    ]
    out += [md_table(headers, rows), ""]
    bad = df[df["state"] != "COMPLETE"]
    out += ["## Failed and pruned trials", ""]
    if bad.empty:
        out += ["None.", ""]
    else:
        out += [
            md_table(
                ["#", "state", "configuration", "reason"],
                [
                    [
                        fmt(r["trial"]),
                        r["state"],
                        " / ".join(str(r.get(a)) for a in AXES),
                        r["reason"] or "(no reason recorded)",
                    ]
                    for _, r in bad.iterrows()
                ],
            ),
            "",
        ]
    return out


def summary_md(suite: Suite, df: pd.DataFrame, prov: dict[str, Any], plots: dict[str, str | None]) -> str:
    """The human-readable report: provenance, references, best configuration, per-axis tables, all trials, plots."""
    out = [f"# Context distillation report: `{suite.name}`", ""]
    if suite.description:
        out += [suite.description.strip(), ""]
    out += _provenance_md(prov, df) + [""]
    out += _references_md(df)
    out += _best_md(df)
    out += [
        "## By axis",
        "",
        "Gap closure over completed trials: best trial ± its bootstrap stderr; mean ± stderr across trials "
        "(a single trial shows its own bootstrap stderr).",
        "",
    ]
    for axis in AXES:
        if axis in df:
            out += [f"### {axis}", "", axis_table(df, axis), ""]
    out += _trials_md(df)
    out += ["## Plots", ""]
    for name, skipped in plots.items():
        title = name.removesuffix(".png").replace("_", " ")
        out += [f"- {title}: *skipped: {skipped}*" if skipped else f"![{title}]({name})", ""]
    return "\n".join(out)


# --- entry point ---------------------------------------------------------------------------------------------------
def write(suite: Suite, out: str | Path) -> Path:
    """Write `<out>/<suite>/` (summary.csv, summary.md, plots, provenance.json) from the study's MLflow runs."""
    runs, uri = load_runs(suite)
    kinds = runs.get("tags.harness.kind", pd.Series(dtype=object))
    if runs.empty or not (kinds == "trial").any():
        raise SuiteError(f"no trials recorded for suite '{suite.name}' in {uri}; run `harness run` first")
    study = load_study(suite)
    df = trial_table(runs, study)
    folder = Path(out) / suite.name
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "summary.csv", index=False)
    prov = provenance(suite, df, uri)
    (folder / "provenance.json").write_text(json.dumps(prov, indent=2, default=str) + "\n")

    hist = histories(list(best_trials(df)["run_id"]))
    makers: dict[str, Callable[[Path], None]] = {
        "gap_by_target_loss.png": lambda p: plot_gap_by_target_loss(df, p),
        "gap_vs_tokens_saved.png": lambda p: plot_gap_vs_tokens_saved(df, p),
        "training_curves.png": lambda p: plot_training_curves(df, hist, p),
        "optuna_history.png": lambda p: plot_optuna_history(suite, study, p),
        "optuna_importances.png": lambda p: plot_optuna_importances(suite, study, p),
    }
    import matplotlib

    _plt()  # select the file backend before any rc_context, which does not restore it
    plots: dict[str, str | None] = {}
    with matplotlib.rc_context(FONT):
        for name, make in makers.items():
            path = folder / name
            path.unlink(missing_ok=True)  # never leave a stale plot from an earlier report beside new tables
            try:
                make(path)
                plots[name] = None
            except SkipPlot as e:
                log.info("%s skipped: %s", name, e)
                plots[name] = str(e)
    (folder / "summary.md").write_text(summary_md(suite, df, prov, plots))
    return folder
