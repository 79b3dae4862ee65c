"""torch.profiler tables: where a step's or a missed goal's time goes."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from harness.perf.timing import Goal


def table(run: Callable[[Callable[[], None]], None], title: str, *, calls: int = 2) -> str:
    """The profiler's table (self time) of the last of `calls` calls: `run(step)` calls its work `calls` times,
    each followed by `step()`. With two, the first is left out (it allocates what a long run allocates once)."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with warnings.catch_warnings():  # "won't be using warmup": an arm that already ran needs none
        warnings.filterwarnings("ignore", message=".*warmup.*", category=UserWarning)
        with profile(activities=acts, schedule=schedule(wait=0, warmup=calls - 1, active=1, repeat=1)) as prof:
            run(prof.step)
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    text = prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60)
    return f"## {title}\n\n```\n{text}\n```\n"


def repeated(work: Callable[[], object], calls: int = 2) -> Callable[[Callable[[], None]], None]:
    """`table`'s `run` for a callable: `calls` calls, each followed by the profiler's step."""

    def run(step: Callable[[], None]) -> None:
        for _ in range(calls):
            work()
            step()

    return run


class Missed:
    """Profiles of both arms of every goal that was missed, one call each (written to profile_missed.md)."""

    def __init__(self) -> None:
        self.tables: list[str] = []

    def check(self, g: Goal, arms: dict[str, Callable[[], float]]) -> None:
        if g.met or g.info_only:
            return
        for name, arm in arms.items():  # each arm already ran its repeats: one call, profiled
            self.tables.append(table(repeated(arm, 1), f"{g.name} — {name}", calls=1))
