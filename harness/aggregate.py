"""Per-item scores → the figures a run reports: one seed's, or one configuration's over its seeds.

Teacher and baseline do not depend on the seed and are scored once per split; the student once per
seed. Validation figures are means (they choose the configuration); test figures also carry 95%
intervals from `stats`' crossed bootstrap over items x seeds. The same per-item scores travel as a JSON
artifact of the configuration's MLflow run (`item_scores` writes it, `read_item_scores` reads it back),
from which the report pairs configurations on their shared items x seeds.

Light on purpose (numpy and the project's pure modules only), so the report can read the artifact
without importing lm-eval or torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import stats
from harness.metrics import TrialMetrics

if TYPE_CHECKING:
    from harness.results import Arms, TrialResult

SCORES_ARTIFACT = "item_scores.json"
FORMAT = 1


@dataclass(frozen=True)
class SplitScores:
    """One split's per-item scores on the items every arm and seed scored: teacher and baseline [1, items],
    the student [seeds, items]."""

    items: list[int]
    teacher: np.ndarray
    baseline: np.ndarray
    student: np.ndarray

    @classmethod
    def of(
        cls, teacher: Mapping[int, float], baseline: Mapping[int, float], students: Sequence[Mapping[int, float]]
    ) -> SplitScores:
        if not students:
            raise stats.StatsError("no student scores")
        shared = set(teacher) & set(baseline)
        for s in students:
            shared &= set(s)
        items = sorted(shared)
        if not items:
            raise stats.StatsError("teacher, baseline and student share no scored item")
        row = lambda d: np.array([[float(d[i]) for i in items]])  # noqa: E731
        return cls(items, row(teacher), row(baseline), np.vstack([row(s) for s in students]))

    def arms(self) -> stats.Arms:
        return stats.Arms.of(self.student, self.teacher, self.baseline)

    @property
    def n_seeds(self) -> int:
        return int(self.student.shape[0])


def validation_rank(values: Sequence[float | None], trials: Sequence[int | str | None]) -> list[int]:
    """The positions of configurations, best on validation first: the one rule that report (its reference),
    export (its default trial) and the kept student (alias `best`) all follow, so that they name the same
    configuration. Highest value first; a tie goes to the earliest trial (lowest number); a value that is
    not finite ranks nowhere (left out)."""

    def number(t: int | str | None) -> float:
        try:
            return int(t)  # type: ignore[arg-type]
        except (TypeError, ValueError):  # no trial number (None, NaN, pd.NA): after every numbered one
            return math.inf

    keyed = [
        (-float(v), number(t), i)
        for i, (v, t) in enumerate(zip(values, trials, strict=True))
        if v is not None and math.isfinite(float(v))
    ]
    return [i for *_, i in sorted(keyed)]


def _gap(teacher: float, baseline: float, student: float) -> float:
    """Gap closure of the means; NaN where teacher and baseline tie (there is no gap to close)."""
    return (student - baseline) / (teacher - baseline) if teacher != baseline else math.nan


def _interval(arms: stats.Arms, statistic: str, n_boot: int, seed: int) -> tuple[float, float]:
    try:
        est = stats.interval(arms, statistic, n_boot=n_boot, seed=seed)
    except stats.StatsError:  # gap closure undefined on these items
        return math.nan, math.nan
    return est.low, est.high


def split_figures(name: str, sc: SplitScores, *, intervals: bool, n_boot: int, seed: int) -> dict[str, float]:
    """`<name>_teacher_score`, `_baseline_score`, `_student_score`, `_gap_closure` (means over items x seeds),
    and with `intervals` the 95% interval ends of the student score and the gap closure."""
    t, b, s = float(sc.teacher.mean()), float(sc.baseline.mean()), float(sc.student.mean())
    out = {
        f"{name}_teacher_score": t,
        f"{name}_baseline_score": b,
        f"{name}_student_score": s,
        f"{name}_gap_closure": _gap(t, b, s),
    }
    if intervals:
        arms = sc.arms()
        out[f"{name}_gap_closure_low"], out[f"{name}_gap_closure_high"] = _interval(arms, "gap_closure", n_boot, seed)
        out[f"{name}_student_score_low"], out[f"{name}_student_score_high"] = _interval(arms, "score", n_boot, seed)
    return out


def control_figures(
    base: Mapping[int, float], students: Sequence[Mapping[int, float]], *, n_boot: int, seed: int
) -> dict[str, float]:
    """The control task: base and student scores, forgetting = base − student with its 95% interval."""
    sc = SplitScores.of(base, base, students)
    forgetting = sc.teacher - sc.student  # [seeds, items]: the base row broadcast over seeds
    lo, hi = _interval(stats.Arms.of(forgetting), "score", n_boot, seed)
    return {
        "control_base_score": float(sc.teacher.mean()),
        "control_student_score": float(sc.student.mean()),
        "control_forgetting": float(forgetting.mean()),
        "control_forgetting_low": lo,
        "control_forgetting_high": hi,
    }


def score_metrics(validation: Sequence[Arms], test: Sequence[Arms], *, n_boot: int, seed: int) -> dict[str, Any]:
    """The score fields of TrialMetrics (name → float) from one Arms per seed and split (one seed: a trial's,
    all seeds: a configuration's)."""
    out: dict[str, Any] = {"seeds": float(len(test))}
    for name, arms, intervals in (("validation", validation, False), ("test", test, True)):
        sc = SplitScores.of(arms[0].teacher.per_item, arms[0].baseline.per_item, [a.student.per_item for a in arms])
        out.update(split_figures(name, sc, intervals=intervals, n_boot=n_boot, seed=seed))
    if all(a.control_base is not None and a.control_student is not None for a in test):
        base = test[0].control_base
        assert base is not None  # for mypy: checked just above
        students = [a.control_student.per_item for a in test if a.control_student is not None]
        out.update(control_figures(base.per_item, students, n_boot=n_boot, seed=seed))
    return out


def combine(results: Sequence[TrialResult], *, n_boot: int, seed: int) -> TrialMetrics:
    """A configuration's metrics over its seeds: scores pooled over items x seeds (test intervals included),
    every other metric (intrinsic, cost) the mean of the seeds' values."""
    if not results:
        raise ValueError("combine: no seed results")
    means: dict[str, Any] = {}
    for f in dataclasses.fields(TrialMetrics):
        vals = [getattr(r.metrics, f.name) for r in results]
        means[f.name] = None if any(v is None for v in vals) else float(np.mean(vals))
    scores = score_metrics([r.validation for r in results], [r.test for r in results], n_boot=n_boot, seed=seed)
    return TrialMetrics(**{**means, **scores})


# ----------------------------------------------------------------------------- the per-item artifact


def item_scores(results: Sequence[TrialResult], metric: str, notes: Mapping[str, str]) -> dict[str, Any]:
    """Per split and arm, doc position → score (the student per seed): what the report pairs on.

    `notes` says how each split was made (e.g. a validation slice carved from the test split), for the report.
    """
    splits: dict[str, Any] = {}
    for name in ("validation", "test"):
        arms = [getattr(r, name) for r in results]
        splits[name] = {
            "note": notes.get(name, ""),
            "teacher": _keyed(arms[0].teacher.per_item),
            "baseline": _keyed(arms[0].baseline.per_item),
            "student": {str(r.seed): _keyed(a.student.per_item) for r, a in zip(results, arms, strict=True)},
        }
    return {"format": FORMAT, "metric": metric, "seeds": [r.seed for r in results], "splits": splits}


def _keyed(per_item: Mapping[int, float]) -> dict[str, float]:
    return {str(int(k)): float(v) for k, v in sorted(per_item.items())}


@dataclass(frozen=True)
class SplitData:
    """One split of an `item_scores` artifact: doc position → score per arm, the student's per seed."""

    teacher: dict[int, float]
    baseline: dict[int, float]
    students: dict[int, dict[int, float]]


def read_item_scores(data: Mapping[str, Any], split: str = "test") -> SplitData:
    """One split of an `item_scores` artifact, keys back to integers."""
    if data.get("format") != FORMAT:
        raise ValueError(f"{SCORES_ARTIFACT}: format {data.get('format')!r}, expected {FORMAT}")
    block = data["splits"][split]
    as_int = lambda d: {int(k): float(v) for k, v in d.items()}  # noqa: E731
    students = {int(s): as_int(d) for s, d in block["student"].items()}
    return SplitData(as_int(block["teacher"]), as_int(block["baseline"]), students)


def paired(configs: Sequence[SplitData]) -> tuple[list[SplitScores], list[int]]:
    """Every configuration's grids on the items and seeds they all share (what a paired comparison needs),
    and those seeds."""
    if not configs:
        return [], []
    seeds = sorted(set.intersection(*(set(c.students) for c in configs)))
    if not seeds:
        raise stats.StatsError("the configurations share no training seed")
    items: set[int] = set.intersection(*(set(c.teacher) & set(c.baseline) for c in configs))
    for c in configs:
        for s in seeds:
            items &= set(c.students[s])
    only = lambda d: {i: d[i] for i in items}  # noqa: E731
    grids = [SplitScores.of(only(c.teacher), only(c.baseline), [only(c.students[s]) for s in seeds]) for c in configs]
    return grids, seeds
