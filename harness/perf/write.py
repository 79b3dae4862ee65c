"""results/perf/: perf.md (goals, every arm, phases, memory, scaling), the CSVs, the plots, the profiles."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import torch

from harness import tracking
from harness.perf import plots, training
from harness.perf.timing import Goal
from harness.perf.training import TrainReport


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": tracking.git_commit(),  # the code measured (the results are committed after it)
    }


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


@dataclass
class Results:
    """Everything one run measured, as the parts return it."""

    command: str
    started: float
    load_before: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    train: TrainReport | None = None
    memory: list[dict[str, Any]] = field(default_factory=list)
    scaling: list[dict[str, Any]] = field(default_factory=list)
    missed_profiles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _busy(loads: tuple[str, str], mach: dict[str, str]) -> bool:
    try:
        return max(float(x.split()[0]) for x in loads) > 0.5 * float(mach["cpu_count"])
    except (ValueError, IndexError):
        return False


def _table(rows: Any, fmt: str = ".3f", **kw: Any) -> str:
    """A markdown table; cells an arm does not have (NaN) stay empty, whole-number columns print as integers."""
    df = pd.DataFrame(rows)
    for col in df.select_dtypes("float").columns:
        if df[col].dropna().mod(1).eq(0).all():
            df[col] = df[col].astype("Int64")
    return df.astype(object).where(df.notna(), None).to_markdown(floatfmt=fmt, missingval="", **kw)


def write(out: Path, res: Results) -> None:
    matplotlib.use("Agg")  # files only, never a window
    out.mkdir(parents=True, exist_ok=True)
    goal_rows = [g.as_row() for g in res.goals]
    pd.DataFrame(res.rows).to_csv(out / "perf.csv", index=False)
    pd.DataFrame(goal_rows).to_csv(out / "ratios.csv", index=False)
    mach = machine()
    (out / "machine.json").write_text(json.dumps(mach, indent=1) + "\n")
    files = ["perf.csv", "ratios.csv", "machine.json"]
    if res.goals:
        files.append(plots.ratios(out, res.goals))
    teacher_rows = [r for r in res.rows if r["part"] in ("generate", "topk")]
    if teacher_rows:
        files.append(plots.teacher_vs_context(out, teacher_rows))
    loads = (res.load_before, load_average())
    shared = " (other processes were running on the machine during the measurement)" if _busy(loads, mach) else ""
    lines = [
        "# Performance: the harness against what a user would otherwise run",
        "",
        f"- Command: `{res.command}`",
        f"- Machine: {mach['cpu']}, {mach['cpu_count']} cores ({mach['torch_threads']} torch threads), "
        f"GPU {mach['gpu']}, torch {mach['torch']}, Python {mach['python']}",
        f"- Code: git commit {mach['git_commit']}",
        f"- Load average (1, 5, 15 min) before: {loads[0]}; after: {loads[1]}{shared}",
        f"- Wall time: {(time.time() - res.started) / 60:.1f} min",
        "- Each arm runs once per repeat, arm order rotating; a ratio is the median over repeats of the"
        " ratio of the two arms measured in the same round (min and max beside it); 'ratio of mins' divides"
        " the two arms' fastest repeats. 'met' is judged on the median.",
        "",
        "## Goals",
        "",
        _table(goal_rows, ".2f", index=False) if goal_rows else "(none run)",
        "",
        *res.notes,
        *(training.notes(res.train) if res.train else []),
        *(
            ["Every missed goal other than training has a profile of both its arms in `profile_missed.md`.", ""]
            if res.missed_profiles
            else []
        ),
        "## Every arm",
        "",
        _table(res.rows, index=False) if res.rows else "",
        "",
    ]
    if res.train:
        lines += _train_section(out, res.train)
        files += [plots.phases(out, res.train.phases), "profile_train.md"]
    if res.memory:
        pd.DataFrame(res.memory).to_csv(out / "memory.csv", index=False)
        lines += [
            "## Peak memory of one trial's training (item 5)",
            "",
            "Each in its own process (2 steps of forward_kl, batch as above); on CUDA the frozen base is bf16.",
            "",
            _table(res.memory, ".0f", index=False),
            "",
        ]
        files.append("memory.csv")
    if res.scaling:
        pd.DataFrame(res.scaling).to_csv(out / "scaling.csv", index=False)
        lines += _scaling_section(res.scaling)
        files += ["scaling.csv", plots.scaling(out, res.scaling)]
    if res.missed_profiles:
        (out / "profile_missed.md").write_text(
            "# Missed goals: one call of each arm after its repeats, torch.profiler (self time)\n\n"
            + "\n".join(res.missed_profiles)
        )
        files.append("profile_missed.md")
    lines += ["## Files", "", *[f"- `{f}`" for f in files], ""]
    (out / "perf.md").write_text("\n".join(lines))


def _train_section(out: Path, report: TrainReport) -> list[str]:
    (out / "profile_train.md").write_text(
        "# One steady-state training step of each arm, torch.profiler (self time)\n\n" + report.profile
    )
    table = _table(pd.DataFrame(report.phases).T.assign(total=lambda d: d.sum(axis=1)))
    return [
        "## Where a training step's time goes",
        "",
        "Median seconds per phase over 3 interleaved steps (the loops' own calls; `train_phases.png`).",
        "",
        table,
        "",
        "The torch.profiler tables of one steady-state step of each are in `profile_train.md`.",
        "",
    ]


def _scaling_section(rows: list[dict[str, Any]]) -> list[str]:
    return [
        "## How a trial's cost grows (item 6)",
        "",
        "The teacher's work (targets + top-k along them) is done once per study and cached; the student's"
        " training is paid by every trial. Student prompts carry c' = empty, so its cost must not follow |c|:"
        " the context sweep times the student's steps interleaved across |c| (median s/step × the steps of one"
        " epoch). The train-inputs sweep reads cumulative times from one run over the largest N (`scaling.png`).",
        "",
        _table(rows, ".1f", index=False),
        "",
    ]
