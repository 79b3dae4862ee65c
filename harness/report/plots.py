"""The report's own plots (matplotlib): gap closure by strategy and loss, vs tokens saved, training curves.

A plot the data cannot support yet raises SkipPlot with the reason, which summary.md shows in its place.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness.metrics import HELDOUT_KL, TRAIN_LOSS
from harness.report.runs import best_trials, completed
from harness.report.tables import fmt, mean_se, trial_label


class SkipPlot(Exception):
    """The data cannot support this plot yet; the message says why (shown in summary.md)."""


def plot_gap_by_target_loss(df: pd.DataFrame, path: Path) -> None:
    """Grouped bars: mean gap closure (± stderr) per target strategy × loss, with each trial as a point."""
    done = completed(df)
    if done.empty:
        raise SkipPlot("no completed trial with a defined gap closure")
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
            xs.append(x)
            means.append(m)
            ses.append(se if math.isfinite(se) else 0.0)
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


def plot_training_curves(df: pd.DataFrame, hist: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    """Training loss and held-out KL against step for the best trials: did they converge, and still improve?"""
    best = best_trials(df)
    best = best[[any(hist.get(r, {}).get(k) for k in (TRAIN_LOSS.name, HELDOUT_KL.name)) for r in best["run_id"]]]
    if best.empty:
        raise SkipPlot("no completed trial has logged step metrics")
    fig, (ax_loss, ax_kl) = plt.subplots(1, 2, figsize=(11.0, 4.6))
    cmap = plt.get_cmap("tab10")
    for i, (_, row) in enumerate(best.iterrows()):
        h = hist[row["run_id"]]
        label: str | None = f"{trial_label(row)} (gap {fmt(row['gap_closure'], 2)})"
        for ax, key in ((ax_loss, TRAIN_LOSS.name), (ax_kl, HELDOUT_KL.name)):
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
