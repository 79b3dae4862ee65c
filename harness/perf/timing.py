"""Interleaved repeats and the ratios read from them.

The machines are shared and noisy: absolute seconds say little and two figures taken minutes apart say
less. So every arm runs once per round with the arm order rotating, and a figure is the ratio of two arms
measured in the same round: the median over rounds, with its min and max, and the ratio of the two arms'
fastest rounds (noise on a shared machine only ever adds time).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Laps:
    """Seconds per named phase of one piece of work, each phase timed from the end of the one before."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = now - self._last
        self._last = now


def interleave(calls: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Call each once per round, the order rotating every round; each call's result, per name."""
    names = list(calls)
    out: dict[str, list[T]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            out[n].append(calls[n]())
    return out


@dataclass
class Timing:
    """Seconds per unit of work for one arm over several interleaved repeats."""

    arm: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)


def interleaved(arms: dict[str, Callable[[], float]], repeats: int) -> dict[str, Timing]:
    """`interleave` for arms that return their own seconds (each logged as it comes)."""

    def logged(name: str, arm: Callable[[], float]) -> Callable[[], float]:
        def call() -> float:
            s = arm()
            log.info("%-44s %.3f s", name, s)
            return s

        return call

    runs = interleave({n: logged(n, a) for n, a in arms.items()}, repeats)
    return {n: Timing(n, s) for n, s in runs.items()}


Ratio = tuple[float, float, float, float]


def ratio(num: Timing, den: Timing) -> Ratio:
    """Median, min and max over rounds of num/den (each pair from the same round), and the ratio of mins."""
    rs = [a / b for a, b in zip(num.seconds, den.seconds, strict=True)]
    return statistics.median(rs), min(rs), max(rs), num.min / den.min


def row(part: str, arm: Timing, setting: str, unit: str, **extra: Any) -> dict[str, Any]:
    """One arm's line of perf.csv."""
    return {
        "part": part,
        "arm": arm.arm,
        "setting": setting,
        "unit": unit,
        "repeats": len(arm.seconds),
        "min_s": arm.min,
        "median_s": arm.median,
        **extra,
    }


@dataclass
class Goal:
    """One ratio the issue asks for, as measured; `met` is judged on the median."""

    name: str
    value: float
    low: float
    high: float
    of_mins: float
    target: str
    met: bool
    repeats: int

    @property
    def info_only(self) -> bool:
        return self.target == "(info)"

    def as_row(self) -> dict[str, Any]:
        return {
            "goal": self.name,
            "ratio (median)": self.value,
            "min": self.low,
            "max": self.high,
            "ratio of mins": self.of_mins,
            "target": self.target,
            "met": "—" if self.info_only else "yes" if self.met else "NO",
            "repeats": self.repeats,
        }


def goal(name: str, r: Ratio, *, at_least: float | None = None, at_most: float | None = None, repeats: int) -> Goal:
    """A measured ratio against its goal (neither bound: a figure the issue asks for, with no goal attached)."""
    value, low, high, of_mins = r
    if at_least is not None:
        return Goal(name, value, low, high, of_mins, f"≥ {at_least:g}", value >= at_least, repeats)
    if at_most is not None:
        return Goal(name, value, low, high, of_mins, f"≤ {at_most:g}", value <= at_most, repeats)
    return Goal(name, value, low, high, of_mins, "(info)", True, repeats)
