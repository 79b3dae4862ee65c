"""The benchmark's figures: ratios against goals, a training step's phases, teacher cost vs |c|, scaling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from harness.perf.scaling import STUDENT, TEACHER
from harness.perf.timing import Goal


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


def ratios(out: Path, goals: list[Goal], name: str = "ratios.png") -> str:
    """Each ratio's median as a bar, min–max as its error bar, the goal dashed."""
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(goals) + 1.2))
    ys = list(range(len(goals)))
    colours = ["tab:gray" if g.info_only else "tab:green" if g.met else "tab:red" for g in goals]
    ax.barh(ys, [g.value for g in goals], color=colours)
    spread = [[g.value - g.low for g in goals], [g.high - g.value for g in goals]]
    ax.errorbar([g.value for g in goals], ys, xerr=spread, fmt="none", ecolor="black", capsize=3)
    for y, g in zip(ys, goals, strict=True):
        if not g.info_only:
            ax.plot([float(g.target.split()[-1])] * 2, [y - 0.4, y + 0.4], color="black", linestyle="--")
    ax.set_yticks(ys, [g.name for g in goals], fontsize=8)
    ax.set_xlabel("ratio (median of interleaved repeats; bar: min–max; dashed: goal)")
    ax.invert_yaxis()
    return _save(fig, out, name)


def phases(out: Path, per_arm: dict[str, dict[str, float]]) -> str:
    """Stacked median seconds per phase of one training step, per arm."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = list(per_arm)
    left = [0.0] * len(names)
    keys = list(dict.fromkeys(k for p in per_arm.values() for k in p))
    for k in keys:
        vals = [per_arm[n].get(k, 0.0) for n in names]
        ax.barh(names, vals, left=left, label=k)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_xlabel("seconds per step (median phase times)")
    ax.legend(fontsize=7, loc="lower right")
    ax.invert_yaxis()
    return _save(fig, out, "train_phases.png")


def teacher_vs_context(out: Path, rows: list[dict[str, Any]]) -> str:
    """Median seconds of each teacher arm against the shared context's length."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        pts = sorted((r["shared_tokens"], r["median_s"]) for r in rows if r["arm"] == arm)
        ax.plot(*zip(*pts, strict=True), marker="o", label=arm)
    ax.set_xlabel("shared context tokens")
    ax.set_ylabel("seconds (median)")
    ax.legend()
    return _save(fig, out, "teacher_vs_context.png")


def scaling(out: Path, rows: list[dict[str, Any]]) -> str:
    """Teacher (once per study) and student (per trial) seconds against |c| and against train inputs."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, sweep, x in ((axes[0], "context", "context tokens"), (axes[1], "train inputs", "train inputs")):
        pts = [r for r in rows if r["sweep"] == sweep]
        for key, style in ((TEACHER, "o-"), (STUDENT, "s-")):
            ax.plot([r[x] for r in pts], [r[key] for r in pts], style, label=key)
        held = f" ({pts[0]['train inputs']} inputs)" if sweep == "context" else f" ({pts[0]['demos']} demos)"
        ax.set_xlabel(x + held)
        ax.set_ylabel("seconds")
        ax.legend(fontsize=7)
    return _save(fig, out, "scaling.png")
