"""The report's cost section: each configuration's ledger (`cost/*`), its top-k fidelity (`topk/*`), a warning
where the kept top-k covers too little of the teacher, and quality against compute with the Pareto front.

The values are what `harness.ledger` logged (means over seeds); the FLOPs are its Kaplan-style estimate.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from harness.ledger import LOW_COVERAGE
from harness.report.plots import SkipPlot, pareto_front
from harness.report.runs import TEST, axes_of, completed
from harness.report.tables import fmt, md_table

PLOT = "quality_per_compute.png"
FLOPS = "cost/total_flops"
DISTILLKIT = "DistillKit's compressed top-k format takes about 114-300 B/token at k = 50-128"


def _num(r: pd.Series, col: str) -> float:
    v = r.get(col)
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _sci(v: float) -> str:
    return "—" if not np.isfinite(v) else f"{v:.2e}"


def coverage_warnings(df: pd.DataFrame) -> list[str]:
    """One line per configuration whose kept top-k covers on average less than LOW_COVERAGE of the teacher."""
    if "topk/coverage_mean" not in df:
        return []
    out = []
    for _, r in df.iterrows():
        cover = _num(r, "topk/coverage_mean")
        if np.isfinite(cover) and cover < LOW_COVERAGE:
            out.append(
                f"> **Warning:** trial {fmt(r.get('trial'))}: the kept top-k (k = {fmt(r.get('topk/k'), 0)}) covers "
                f"{cover:.3f} of the teacher's probability on average (5th percentile "
                f"{_num(r, 'topk/coverage_p05'):.3f}), below {LOW_COVERAGE}; the top-k + tail loss is a loose lower "
                "bound on the full KL there: raise `training.top_k` (or the loss's `top_k`)."
            )
    return out


def cost_md(df: pd.DataFrame, plot_skipped: str | None) -> list[str]:
    """The `## Cost` section: warnings, the ledger table, the cache size against DistillKit, the plot."""
    out = ["## Cost", ""]
    if FLOPS not in df or not np.isfinite(df[FLOPS].astype(float)).any():
        note = f"- quality per compute: *skipped: {plot_skipped or 'no cost ledger'}*"
        return out + ["No configuration logged a cost ledger (runs from before `harness/ledger.py`).", "", note, ""]
    out += coverage_warnings(df)
    if out[-1] != "":
        out.append("")
    out += [
        "FLOPs estimated as 2·N per token forward (teacher generation and top-k scoring), 6·N per token trained, "
        "N = non-embedding parameters (Kaplan et al. 2020): a lower bound, no attention term, no prefix reuse "
        "credited. Times are seconds per seed; teacher time is near 0 where the cache already held the work.",
        "",
    ]
    headers = [
        "#",
        *axes_of(df),
        "total FLOPs",
        "teacher FLOPs",
        "student FLOPs",
        "tokens generated",
        "tokens scored",
        "cache B/token",
        "peak MiB",
        "teacher s",
        "training s",
        "scoring s",
        "top-k coverage (mean / p5)",
    ]
    rows = []
    for _, r in df.iterrows():
        cover = _num(r, "topk/coverage_mean")
        rows.append(
            [
                fmt(r.get("trial")),
                *(r.get(a) for a in axes_of(df)),
                _sci(_num(r, FLOPS)),
                _sci(_num(r, "cost/teacher_flops")),
                _sci(_num(r, "cost/student_flops")),
                fmt(_num(r, "cost/tokens_generated"), 0),
                fmt(_num(r, "cost/tokens_scored"), 0),
                fmt(_num(r, "cost/cache_bytes_per_token"), 0),
                fmt(_num(r, "cost/peak_memory_mb"), 0),
                fmt(_num(r, "cost/teacher_s"), 1),
                fmt(_num(r, "cost/train_s"), 1),
                fmt(_num(r, "cost/scoring_s"), 1),
                "—" if not np.isfinite(cover) else f"{cover:.3f} / {_num(r, 'topk/coverage_p05'):.3f}",
            ]
        )
    out += [md_table(headers, rows), ""]
    if "cost/cache_bytes_per_token" in df:
        b = df["cost/cache_bytes_per_token"].astype(float)
        b = b[np.isfinite(b)]
        if not b.empty:
            out += [
                f"Teacher cache: {b.min():.0f}-{b.max():.0f} B per target token (int32 ids + float32 log-probs + "
                f"a tail, uncompressed); {DISTILLKIT}.",
                "",
            ]
    out += [f"- quality per compute: *skipped: {plot_skipped}*" if plot_skipped else f"![quality per compute]({PLOT})"]
    return out + [""]


def ledger_points(df: pd.DataFrame) -> pd.DataFrame:
    """The completed configurations with a finite FLOPs estimate: what a quality-per-compute plot can place."""
    done = completed(df)
    if FLOPS in done:
        done = done[np.isfinite(done[FLOPS].astype(float))]
    if FLOPS not in done or done.empty:
        raise SkipPlot("no completed configuration with a cost ledger")
    return done


def front_rows(done: pd.DataFrame) -> pd.DataFrame:
    """The rows of `done` on the Pareto front (fewer FLOPs, more test gap closure), by FLOPs."""
    x, y = done[FLOPS].astype(float).to_numpy(), done[TEST].astype(float).to_numpy()
    return done.iloc[pareto_front(-x, y)[::-1]]


def draw_quality_per_compute(ax: Axes, done: pd.DataFrame, color: str = "tab:blue") -> None:
    """One panel: each configuration (annotated with its trial number), the Pareto front circled and joined."""
    x, y = done[FLOPS].astype(float).to_numpy(), done[TEST].astype(float).to_numpy()
    ax.scatter(x, y, s=50, color=color, zorder=3, label="configuration")
    front = front_rows(done)
    fx, fy = front[FLOPS].astype(float).to_numpy(), front[TEST].astype(float).to_numpy()
    ax.scatter(fx, fy, s=200, facecolors="none", edgecolors="black", lw=1.2, zorder=4)
    ax.plot(fx, fy, color="black", lw=1.2, ls="--", label="Pareto front", zorder=2)
    for xi, yi, n in zip(x, y, done["trial"], strict=True):
        ax.annotate(f"#{fmt(n)}", (xi, yi), textcoords="offset points", xytext=(6, 4), fontsize=8, color="dimgrey")
    ax.set_xscale("log")
    ax.axhline(0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("estimated FLOPs per seed (teacher + student)")
    ax.legend(loc="best")


def plot_quality_per_compute(df: pd.DataFrame, path: Path) -> None:
    """Test gap closure against the estimated total FLOPs per seed, Pareto front (fewer FLOPs, more closure)."""
    done = ledger_points(df)
    fig, ax = plt.subplots(figsize=(8.0, 5.0))
    draw_quality_per_compute(ax, done)
    ax.set_ylabel("test gap closure (0 = baseline, 1 = teacher)")
    ax.set_title("Quality per compute")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
