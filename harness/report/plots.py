"""The report's own plots (matplotlib): the forest plot of the comparison, test gap closure by strategy and
loss and against tokens saved, training curves.

Every figure of a configuration is its test value with the 95% interval over items x seeds; the order
and the choice of what to show come from validation.

A plot the data cannot support yet raises SkipPlot with the reason, which summary.md shows in its place.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness.metrics import HELDOUT_KL, TRAIN_LOSS
from harness.report.runs import TEST, VALIDATION, best_trials, completed
from harness.report.tables import fmt, trial_label


class SkipPlot(Exception):
    """The data cannot support this plot yet; the message says why (shown in summary.md)."""


def _yerr(df: pd.DataFrame, col: str) -> np.ndarray:
    """Asymmetric error bars [2, n] from the `<col>_low` / `<col>_high` interval ends (0 where unknown)."""
    v = df[col].astype(float).to_numpy()
    lo = df.get(f"{col}_low", pd.Series(np.nan, index=df.index)).astype(float).to_numpy()
    hi = df.get(f"{col}_high", pd.Series(np.nan, index=df.index)).astype(float).to_numpy()
    return np.nan_to_num(np.vstack([v - lo, hi - v]), nan=0.0).clip(min=0.0)


def plot_forest(table: pd.DataFrame | None, path: Path) -> None:
    """Test figure and 95% interval per configuration, top to bottom by validation rank; colour = verdict
    against the validation-best (the dashed line), after Holm's correction."""
    if table is None or table.empty:
        raise SkipPlot("no completed configuration with per-item scores")
    statistic = str(table["statistic"].iloc[0])
    n = len(table)
    colours = {"best": "tab:blue", "better": "tab:green", "worse": "tab:red", "tie": "dimgrey"}
    ticks = [f"{r['configuration']}  (val {r['validation']:.3f})" for _, r in table.iterrows()]
    # the labels take their own width (about 0.075 in a character), the intervals keep about 6 inches
    fig, ax = plt.subplots(figsize=(max(11.0, 6.0 + 0.075 * max(len(t) for t in ticks)), 2.0 + 0.42 * n))
    y = np.arange(n)[::-1]  # validation rank 1 at the top
    for yi, (_, r) in zip(y, table.iterrows(), strict=True):
        c = colours.get(str(r["verdict"]), "black")
        ax.plot([r["test_low"], r["test_high"]], [yi, yi], color=c, lw=2.2, solid_capstyle="butt")
        ax.plot(r["test"], yi, "D" if r["verdict"] == "best" else "o", color=c, ms=7, zorder=3)
    best = table[table["verdict"] == "best"].iloc[0]
    ax.axvline(best["test"], color="tab:blue", lw=1, ls="--", zorder=0)
    if statistic == "gap_closure":
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.axvline(1, color="green", lw=0.8, ls=":")
    ax.set_yticks(y, ticks)
    ax.set_ylim(-0.7, n - 0.3)
    name = "gap closure (0 = baseline, 1 = teacher)" if statistic == "gap_closure" else "student score"
    ax.set_xlabel(f"test {name}, 95% interval over items × seeds")
    ax.set_title("Configurations by validation rank: test figure and 95% interval")
    handles = [
        plt.Line2D([], [], color=c, marker="D" if k == "best" else "o", lw=2, label=label)
        for k, c, label in (
            ("best", colours["best"], "best on validation (reference)"),
            ("better", colours["better"], "better than the reference"),
            ("tie", colours["tie"], "not distinguishable"),
            ("worse", colours["worse"], "worse than the reference"),
        )
        if k in set(table["verdict"])
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_gap_by_target_loss(df: pd.DataFrame, path: Path) -> None:
    """Grouped bars: mean test gap closure per target strategy × loss, each configuration a point with its
    95% interval."""
    done = completed(df)
    if done.empty:
        raise SkipPlot("no completed configuration with a defined gap closure")
    targets, losses = sorted(done["target"].astype(str).unique()), sorted(done["loss"].astype(str).unique())
    width = 0.8 / len(losses)
    fig, ax = plt.subplots(figsize=(min(14.0, max(7.0, 1.1 * len(targets) * len(losses) ** 0.5 + 4)), 5.0))
    cmap = plt.get_cmap("tab10")
    point_label: str | None = "each configuration (95% interval)"
    for j, loss in enumerate(losses):
        xs, means = [], []
        for i, target in enumerate(targets):
            cell = done[(done["target"].astype(str) == target) & (done["loss"].astype(str) == loss)]
            if cell.empty:
                continue
            x = i - 0.4 + width * (j + 0.5)
            xs.append(x)
            means.append(float(cell[TEST].astype(float).mean()))
            offsets = np.linspace(-width / 4, width / 4, len(cell)) if len(cell) > 1 else np.zeros(1)
            ax.errorbar(
                x + offsets,
                cell[TEST].astype(float),
                yerr=_yerr(cell, TEST),
                fmt="o",
                ms=4,
                color="black",
                elinewidth=1,
                capsize=2,
                zorder=3,
                label=point_label,
            )
            point_label = None
        ax.bar(xs, means, width * 0.9, color=cmap(j % 10), alpha=0.85, label=loss)
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
    ax.set_ylabel("test gap closure (0 = baseline, 1 = teacher)")
    ax.set_title("Test gap closure by target strategy and loss\n(bars: mean over configurations)")
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
        raise SkipPlot("no completed configuration with both gap closure and context tokens saved")
    fig, ax = plt.subplots(figsize=(8.0, 5.0))
    markers = "osD^vP*Xh<>"
    cmap = plt.get_cmap("tab10")
    for j, (ctx, grp) in enumerate(sorted(done.groupby(done["context"].astype(str)), key=lambda g: g[0])):
        ax.errorbar(
            grp["context_tokens_saved"].astype(float),
            grp[TEST].astype(float),
            yerr=_yerr(grp, TEST),
            fmt=markers[j % len(markers)],
            color=cmap(j % 10),
            ms=8,
            capsize=3,
            elinewidth=0.8,
            alpha=0.9,
            label=ctx,
        )
    x, y = done["context_tokens_saved"].astype(float).to_numpy(), done[TEST].astype(float).to_numpy()
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
    ax.set_ylabel("test gap closure (0 = baseline, 1 = teacher)")
    which = "trial number" if label_all else "trial number on the front"
    ax.set_title(f"Test gap closure vs context tokens saved\n(error bars: 95% interval; labels: {which})")
    ax.legend(title="context modification", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.margins(x=0.15, y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(
    df: pd.DataFrame, hist: dict[str, dict[str, list[tuple[int, float]]]], seeds: dict[str, list[str]], path: Path
) -> None:
    """Training loss and held-out KL against step for the best configurations on validation, one line per seed:
    did they converge, do the seeds agree, were they still improving?"""
    best = best_trials(df)
    has = lambda rid: any(hist.get(rid, {}).get(k) for k in (TRAIN_LOSS.name, HELDOUT_KL.name))  # noqa: E731
    best = best[[any(has(s) for s in seeds.get(r, [])) for r in best["run_id"]]]
    if best.empty:
        raise SkipPlot("no completed configuration has logged step metrics")
    fig, (ax_loss, ax_kl) = plt.subplots(1, 2, figsize=(11.0, 4.6))
    cmap = plt.get_cmap("tab10")
    for i, (_, row) in enumerate(best.iterrows()):
        label: str | None = f"{trial_label(row)} (val gap {fmt(row[VALIDATION], 2)})"
        for seed_run in seeds.get(row["run_id"], []):
            h = hist.get(seed_run, {})
            for ax, key in ((ax_loss, TRAIN_LOSS.name), (ax_kl, HELDOUT_KL.name)):
                if h.get(key):
                    steps, vals = zip(*h[key], strict=True)
                    marker = "o" if len(steps) <= 30 else ""
                    ax.plot(steps, vals, marker=marker, ms=3, lw=1.2, alpha=0.8, color=cmap(i % 10), label=label)
                    label = None  # one legend entry per configuration, shared by its seeds and both panels
    ax_loss.set_title("Training loss")
    ax_loss.set_ylabel("training loss (the trial's loss)")
    ax_kl.set_title("Held-out KL(teacher ‖ student), validation inputs\n(step 0 = untrained student)")
    ax_kl.set_ylabel("mean token KL (nats)")
    for ax in (ax_loss, ax_kl):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    what = f"the {len(best)} best configurations" if len(best) > 1 else "the best configuration"
    fig.suptitle(f"Training curves of {what} by validation gap closure (one line per seed)")
    ncol = 1 if len(best) <= 2 else 2
    fig.legend(loc="lower center", ncol=ncol, bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(best) / ncol) + 0.02, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
