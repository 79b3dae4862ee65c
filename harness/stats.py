"""Statistics a comparison must carry (DESIGN.md section 9): intervals, paired tests, Holm, verdicts.

Every score is a grid [seeds, items]: one row per training seed, one column per held-out item.
Teacher and baseline do not depend on the seed and may have one row; it is broadcast.

One resampling scheme everywhere, a crossed bootstrap: each replicate draws items with replacement
and, independently, seeds with replacement, and scores every arm and every configuration on the
same drawn items and seeds. Sharing the draws pairs the arms (the teacher-baseline gap and the
student move together item by item) and the configurations (a hard item is hard for both), which
is what makes small differences visible. A replicate is a weighted mean with multinomial counts,
so B replicates cost one matrix product, not B copies of the grid.

This crossed ("pigeonhole") bootstrap is conservative where seed x item noise dominates: it can
overstate that part of the variance up to about 3x (Owen 2007, Ann. Appl. Stat. 1(2)), and with
very few seeds (3) the seed draw is coarse. Intervals err wide, so a claimed difference errs rare;
tests/test_stats.py measures both regimes.

Pure numpy (+ pandas for the tables); every function takes a seed, so results are reproducible.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVEL = 0.95
N_BOOT = 2000
ALPHA = 0.05


class StatsError(ValueError):
    """Score arrays that cannot be compared (shapes, missing arms, NaN, an undefined gap)."""


def grid(x: np.ndarray | Sequence[float] | Sequence[Sequence[float]], name: str = "scores") -> np.ndarray:
    """A [seeds, items] float array; a 1-D array is one seed row."""
    a = np.asarray(x, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise StatsError(f"{name}: expected a non-empty [seeds, items] array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise StatsError(f"{name}: contains NaN or infinite values")
    return a


@dataclass(frozen=True)
class Arms:
    """One configuration's per-item test scores: student [seeds, items], teacher/baseline [1 or seeds, items]."""

    student: np.ndarray
    teacher: np.ndarray | None = None
    baseline: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        student: np.ndarray | Sequence,
        teacher: np.ndarray | Sequence | None = None,
        baseline: np.ndarray | Sequence | None = None,
    ) -> Arms:
        s = grid(student, "student")
        t = None if teacher is None else grid(teacher, "teacher")
        b = None if baseline is None else grid(baseline, "baseline")
        for name, a in (("teacher", t), ("baseline", b)):
            if a is None:
                continue
            if a.shape[1] != s.shape[1]:
                raise StatsError(f"{name} has {a.shape[1]} items, student has {s.shape[1]}: score the same items")
            if a.shape[0] not in (1, s.shape[0]):
                raise StatsError(f"{name} has {a.shape[0]} seed rows; expected 1 or {s.shape[0]} (the student's)")
        return cls(student=s, teacher=t, baseline=b)

    @property
    def shape(self) -> tuple[int, int]:
        return self.student.shape


@dataclass(frozen=True)
class Interval:
    """A point estimate on the full data and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Difference:
    """Configuration a minus configuration b on shared items x seeds: estimate, interval, two-sided p."""

    estimate: float
    low: float
    high: float
    p_value: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def bootstrap_counts(n_seeds: int, n_items: int, n_boot: int = N_BOOT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial draw counts [B, seeds] and [B, items]: replicate b weights cell (s, i) by cs[b,s] * ci[b,i].

    A function of the shape and the seed only, so two calls with the same arguments resample the same
    items and seeds: that is how separate calls stay paired.
    """
    rng = np.random.default_rng(seed)
    ci = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot)
    cs = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot)
    return cs.astype(float), ci.astype(float)


def _replicate_means(x: np.ndarray, cs: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """The grid mean of x under each replicate's counts; a one-row x ignores the seed draw."""
    n_items = ci.shape[1]
    if x.shape[0] == 1:
        return ci @ x[0] / n_items
    return ((cs @ x) * ci).sum(axis=1) / (cs.shape[1] * n_items)


def _gap_closure(t: np.ndarray, b: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(student - baseline) / (teacher - baseline); NaN where teacher equals baseline."""
    den = t - b
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, (s - b) / np.where(den != 0, den, 1.0), np.nan)


def _score(t: np.ndarray, b: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.asarray(s, dtype=float)


STATISTICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "gap_closure": _gap_closure,
    "score": _score,
}


def _statistic(name: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    if name not in STATISTICS:
        raise StatsError(f"unknown statistic '{name}'; choose one of {', '.join(STATISTICS)}")
    return STATISTICS[name]


def _arm_means(arms: Arms, statistic: str, cs: np.ndarray, ci: np.ndarray) -> tuple[np.ndarray, ...]:
    """(teacher, baseline, student) replicate means; teacher/baseline are zeros when the statistic ignores them."""
    if statistic == "gap_closure" and (arms.teacher is None or arms.baseline is None):
        raise StatsError("gap closure needs teacher and baseline scores")
    zero = np.zeros(ci.shape[0])
    t = zero if arms.teacher is None else _replicate_means(arms.teacher, cs, ci)
    b = zero if arms.baseline is None else _replicate_means(arms.baseline, cs, ci)
    return t, b, _replicate_means(arms.student, cs, ci)


def _point(arms: Arms, statistic: str) -> float:
    """The statistic on the full grid (every item and seed once)."""
    s, i = arms.shape
    value = _statistic(statistic)(*_arm_means(arms, statistic, np.ones((1, s)), np.ones((1, i))))[0]
    if not np.isfinite(value):
        raise StatsError("teacher and baseline have the same mean score: gap closure is undefined (no gap to close)")
    return float(value)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def interval(
    arms: Arms, statistic: str = "gap_closure", n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> Interval:
    """Point estimate and crossed-bootstrap percentile interval of one configuration's statistic.

    Replicates where teacher and baseline tie (gap closure undefined) are left out of the percentiles.
    """
    value = _point(arms, statistic)
    cs, ci = bootstrap_counts(*arms.shape, n_boot=n_boot, seed=seed)
    reps = _statistic(statistic)(*_arm_means(arms, statistic, cs, ci))
    return Interval(value, *_percentiles(reps, level))


def gap_closure(
    teacher: np.ndarray | Sequence,
    baseline: np.ndarray | Sequence,
    student: np.ndarray | Sequence,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Gap closure (mean student - mean baseline) / (mean teacher - mean baseline) with its 95% interval."""
    return interval(Arms.of(student, teacher, baseline), "gap_closure", n_boot, seed, level)


def score(student: np.ndarray | Sequence, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Interval:
    """Mean score over items x seeds with its 95% interval."""
    return interval(Arms.of(student), "score", n_boot, seed, level)


def paired_difference(
    a: Arms, b: Arms, statistic: str = "gap_closure", n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> Difference:
    """Statistic of a minus statistic of b, both computed on the same resampled items and seeds.

    The p-value is the paired bootstrap's two-sided one, p = 2 min(P*(d <= 0), P*(d >= 0)) with the +1
    correction (never 0 from a finite B), not a sign-flip permutation: gap closure is a ratio of means,
    and two configurations with different c' have different baselines, so flipping per-cell signs is not
    a valid null for it; the bootstrap handles any statistic of the arm means. The same replicates give
    the interval, so p < 1 - level goes with an interval that excludes 0 (up to Monte Carlo error).
    Identical configurations give d = 0 in every replicate: p = 1 and the interval [0, 0].
    """
    if a.shape != b.shape:
        raise StatsError(f"paired comparison needs the same items x seeds; got {a.shape} and {b.shape}")
    fn = _statistic(statistic)
    value = _point(a, statistic) - _point(b, statistic)
    cs, ci = bootstrap_counts(*a.shape, n_boot=n_boot, seed=seed)
    d = fn(*_arm_means(a, statistic, cs, ci)) - fn(*_arm_means(b, statistic, cs, ci))
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise StatsError("every bootstrap replicate had teacher = baseline: the difference is undefined")
    n = d.size
    p = min(1.0, 2 * (min(np.sum(d <= 0), np.sum(d >= 0)) + 1) / (n + 1))
    return Difference(value, *_percentiles(d, level), p_value=float(p))


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: p_(k) * (m - k + 1), made monotone, capped at 1, in the input order."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise StatsError("holm: expected a flat list of p-values")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise StatsError("holm: p-values must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


@dataclass(frozen=True)
class Configuration:
    """One configuration's label, its validation mean (what chooses) and its test arms (what is reported)."""

    label: str
    validation: float
    test: Arms


def verdict(diff: float, low: float, high: float, p_holm: float, alpha: float = ALPHA) -> str:
    """'better' / 'worse' only when the Holm-adjusted p is below alpha and the interval excludes 0."""
    if p_holm < alpha and (low > 0 or high < 0):
        return "better" if diff > 0 else "worse"
    return "tie"


def comparison_table(
    configs: Sequence[Configuration],
    statistic: str = "gap_closure",
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """One row per configuration: validation mean, test mean and interval, difference to the validation-best.

    The reference is the highest *validation* mean (first one on a tie), never a test figure: choosing
    on test and then reporting test is the optimism this table exists to avoid. `delta` is this
    configuration minus the reference on test; `verdict` says whether it is better, worse or not
    distinguishable from the reference after Holm's correction over the len(configs) - 1 comparisons.
    """
    if not configs:
        raise StatsError("comparison table: no configurations")
    labels = [c.label for c in configs]
    if len(set(labels)) != len(labels):
        raise StatsError(f"comparison table: duplicate configuration labels in {labels}")
    vals = np.array([c.validation for c in configs], dtype=float)
    if not np.all(np.isfinite(vals)):
        raise StatsError("comparison table: every configuration needs a finite validation mean")
    best = int(np.argmax(vals))
    rows = []
    for k, c in enumerate(configs):
        est = interval(c.test, statistic, n_boot, seed, level)
        row = {
            "configuration": c.label,
            "validation": float(c.validation),
            "test": est.estimate,
            "test_low": est.low,
            "test_high": est.high,
            "delta": 0.0,
            "delta_low": 0.0,
            "delta_high": 0.0,
            "p": np.nan,
            "p_holm": np.nan,
            "verdict": "best",
        }
        if k != best:
            d = paired_difference(c.test, configs[best].test, statistic, n_boot, seed, level)
            row.update(delta=d.estimate, delta_low=d.low, delta_high=d.high, p=d.p_value)
        rows.append(row)
    df = pd.DataFrame(rows)
    others = df.index != best
    if others.any():
        df.loc[others, "p_holm"] = holm(df.loc[others, "p"].to_numpy())
        df.loc[others, "verdict"] = [
            verdict(r.delta, r.delta_low, r.delta_high, r.p_holm, alpha) for r in df[others].itertuples()
        ]
    df.attrs.update(statistic=statistic, best=configs[best].label, level=level, alpha=alpha, n_boot=n_boot)
    return df


def _fmt_p(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else f"{p:.1g}"


def summary_sentence(table: pd.DataFrame) -> str:
    """The quotable line: the validation-best and how it stands on test against the others (Holm p-values)."""
    best_rows = table[table["verdict"] == "best"]
    if len(best_rows) != 1:
        raise StatsError("summary: the table needs exactly one 'best' row (build it with comparison_table)")
    name = best_rows["configuration"].iloc[0]
    others = table[table["verdict"] != "best"]
    lead = f"{name} is best on validation"
    if "validation" in table and len(tied := others[others["validation"] == best_rows["validation"].iloc[0]]):
        plural = "s" if len(tied) > 1 else ""
        lead += f" (tied there with {len(tied)} other{plural}; the earliest trial is the reference)"
    if others.empty:
        return f"{name} is the only configuration; there is nothing to compare it with."
    n = len(others)
    parts = []
    ties = others[others["verdict"] == "tie"]
    beaten = others[others["verdict"] == "worse"]  # worse than the best: the best is better than these
    ahead = others[others["verdict"] == "better"]  # better than the best on test
    if len(ties):
        parts.append(f"not distinguishable from {len(ties)} of {n} others (p >= {_fmt_p(ties['p_holm'].min())})")
    if len(beaten):
        parts.append(f"better than {len(beaten)} (p <= {_fmt_p(beaten['p_holm'].max())})")
    if len(ahead):
        who = ", ".join(ahead["configuration"])
        parts.append(f"worse than {len(ahead)} ({who}; p <= {_fmt_p(ahead['p_holm'].max())})")
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{lead}; on test it is {body}."


def aggregate_tasks(tables: Mapping[str, pd.DataFrame], n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per configuration across tasks: mean test rank (1 = best), its spread, and the verdict on each task.

    Ranks (ties share the average rank) make tasks with different metrics and scales comparable.
    The spread is a percentile interval from resampling tasks with replacement plus the min and max
    rank; with a handful of tasks the min-max is the more honest of the two. A configuration missing
    from a task is left out of that task's ranks, and `tasks` counts where it was scored.
    """
    if not tables:
        raise StatsError("aggregate: no task tables")
    names = list(tables)
    ranks = pd.DataFrame(
        {t: tables[t].set_index("configuration")["test"].rank(ascending=False, method="average") for t in names}
    )
    verdicts = pd.DataFrame({t: tables[t].set_index("configuration")["verdict"] for t in names})
    r = ranks.to_numpy()
    counts = np.random.default_rng(seed).multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=n_boot)
    present = np.isfinite(r)
    filled = np.where(present, r, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate that drew none of a configuration's tasks
        reps = (counts @ filled.T) / (counts @ present.T)  # [B, configurations]
        lows, highs = np.nanpercentile(reps, [2.5, 97.5], axis=0)
    out = pd.DataFrame(
        {
            "configuration": ranks.index,
            "tasks": present.sum(axis=1),
            "rank_mean": np.nanmean(r, axis=1),
            "rank_low": lows,
            "rank_high": highs,
            "rank_min": np.nanmin(r, axis=1),
            "rank_max": np.nanmax(r, axis=1),
        }
    )
    for t in names:
        out[f"verdict[{t}]"] = verdicts[t].reindex(ranks.index).fillna("-").to_numpy()
    return out.sort_values(["rank_mean", "configuration"]).reset_index(drop=True)
