"""harness.stats against hand-computed values, clear and null differences, and interval coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness import stats
from harness.stats import Arms, Configuration, StatsError


def test_gap_closure_point_estimate_by_hand():
    teacher = [1, 1, 1, 0]  # mean 0.75, one row: does not depend on the seed
    baseline = [0, 0, 1, 0]  # mean 0.25
    student = [[1, 0, 1, 0], [1, 1, 1, 0]]  # two seeds, mean (0.5 + 0.75) / 2 = 0.625
    est = stats.gap_closure(teacher, baseline, student, n_boot=500)
    assert est.estimate == pytest.approx((0.625 - 0.25) / (0.75 - 0.25))  # 0.75
    assert est.low <= est.estimate <= est.high
    assert stats.score(student, n_boot=500).estimate == pytest.approx(0.625)


def test_replicate_mean_by_hand():
    x = np.array([[1.0, 2, 3, 4], [5, 6, 7, 8]])
    cs = np.array([[2.0, 0]])  # seed 0 drawn twice
    ci = np.array([[0.0, 1, 2, 1]])  # items 1, 2, 2, 3 -> values 2, 3, 3, 4 -> mean 3
    assert stats._replicate_means(x, cs, ci)[0] == pytest.approx(3.0)
    cs = np.array([[1.0, 1]])  # both seeds once: (2 + 3 + 3 + 4 + 6 + 7 + 7 + 8) / 8 = 5
    assert stats._replicate_means(x, cs, ci)[0] == pytest.approx(5.0)


def test_weighted_replicates_equal_explicit_resampling():
    """The count-weighted means are exactly the means of the explicitly resampled grids."""
    rng = np.random.default_rng(3)
    x = rng.random((3, 17))
    cs, ci = stats.bootstrap_counts(3, 17, n_boot=50, seed=9)
    fast = stats._replicate_means(x, cs, ci)
    for b in range(50):
        seeds = np.repeat(np.arange(3), cs[b].astype(int))
        items = np.repeat(np.arange(17), ci[b].astype(int))
        assert fast[b] == pytest.approx(x[np.ix_(seeds, items)].mean())


def test_counts_are_reproducible_and_pair_items_across_seed_counts():
    cs, ci = stats.bootstrap_counts(4, 30, n_boot=100, seed=1)
    assert (cs.sum(axis=1) == 4).all() and (ci.sum(axis=1) == 30).all()
    cs2, ci2 = stats.bootstrap_counts(4, 30, n_boot=100, seed=1)
    assert np.array_equal(cs, cs2) and np.array_equal(ci, ci2)
    _, ci3 = stats.bootstrap_counts(1, 30, n_boot=100, seed=1)
    assert np.array_equal(ci, ci3)  # the item draw does not depend on the number of seeds
    _, ci4 = stats.bootstrap_counts(4, 30, n_boot=100, seed=2)
    assert not np.array_equal(ci, ci4)


def test_one_teacher_row_is_the_same_as_the_row_repeated_per_seed():
    rng = np.random.default_rng(0)
    t, b = rng.integers(0, 2, 40), rng.integers(0, 2, 40) * 0
    s = rng.integers(0, 2, (3, 40))
    one = stats.gap_closure(t, b, s, n_boot=300, seed=4)
    rep = stats.gap_closure(np.tile(t, (3, 1)), np.tile(b, (3, 1)), s, n_boot=300, seed=4)
    assert one == rep


def test_student_equal_to_teacher_closes_the_whole_gap_in_every_replicate():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 2, 50)
    b = np.zeros(50)
    est = stats.gap_closure(t, b, np.tile(t, (2, 1)), n_boot=400)
    assert (est.estimate, est.low, est.high) == (1.0, 1.0, 1.0)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(StatsError, match="gap closure is undefined"):
        stats.gap_closure([1, 0], [1, 0], [[1, 1]])
    with pytest.raises(StatsError, match="teacher has 3 items"):
        Arms.of([[1, 0]], teacher=[1, 0, 1], baseline=[0, 0])
    with pytest.raises(StatsError, match="seed rows"):
        Arms.of([[1, 0], [0, 1], [1, 1]], teacher=[[1, 0], [0, 1]], baseline=[0, 0])
    with pytest.raises(StatsError, match="NaN"):
        stats.score([1.0, np.nan])
    with pytest.raises(StatsError, match="same items x seeds"):
        stats.paired_difference(Arms.of([[1, 0]]), Arms.of([[1, 0, 1]]), "score")
    with pytest.raises(StatsError, match="unknown statistic"):
        stats.interval(Arms.of([1, 0]), "median")


def test_holm_matches_a_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # 0.02*3 = 0.06, 0.3*2 = 0.6, 0.9*1 = 0.9
    assert stats.holm([0.3, 0.9, 0.02]) == pytest.approx([0.6, 0.9, 0.06])
    # capped at 1 and kept monotone: 0.5*2 = 1.0, then max(1.0, 0.6)
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.2]) == pytest.approx([0.2])
    assert stats.holm([]).size == 0
    with pytest.raises(StatsError):
        stats.holm([0.1, 1.5])


def _binary(rng: np.random.Generator, p: float, seeds: int = 3, items: int = 120) -> np.ndarray:
    return (rng.random((seeds, items)) < p).astype(float)


def test_clearly_different_configurations():
    rng = np.random.default_rng(5)
    t, b = _binary(rng, 0.9, 1), _binary(rng, 0.05, 1)
    good = Arms.of(_binary(rng, 0.8), t, b)
    poor = Arms.of(_binary(rng, 0.3), t, b)
    for statistic in ("gap_closure", "score"):
        d = stats.paired_difference(good, poor, statistic, n_boot=2000, seed=0)
        assert d.p_value < 0.01 and d.excludes_zero() and d.low > 0
        exact = stats._point(good, statistic) - stats._point(poor, statistic)
        assert d.estimate == pytest.approx(exact)
    d = stats.paired_difference(good, poor, "score", n_boot=2000)
    assert d.estimate == pytest.approx(good.student.mean() - poor.student.mean())
    assert stats.paired_difference(poor, good, "score", n_boot=2000).high < 0


def test_identical_configurations_tie_with_p_one():
    rng = np.random.default_rng(6)
    t, b, s = _binary(rng, 0.9, 1), _binary(rng, 0.1, 1), _binary(rng, 0.5)
    d = stats.paired_difference(Arms.of(s, t, b), Arms.of(s.copy(), t, b), "gap_closure", n_boot=1000)
    assert d.p_value == 1.0 and d.estimate == 0.0 and d.low <= 0.0 <= d.high and not d.excludes_zero()


def test_a_small_true_difference_is_not_declared_from_noise():
    """Two configurations drawn from the same distribution: the paired test rarely rejects (about 5%)."""
    rejections = 0
    for rep in range(60):
        rng = np.random.default_rng(100 + rep)
        t, b = _binary(rng, 0.9, 1, 60), _binary(rng, 0.1, 1, 60)
        a, c = Arms.of(_binary(rng, 0.5, 2, 60), t, b), Arms.of(_binary(rng, 0.5, 2, 60), t, b)
        rejections += stats.paired_difference(a, c, "gap_closure", n_boot=400, seed=rep).p_value < 0.05
    assert rejections <= 9  # expected 3; 9 or more has probability < 1% under a correct 5% test


def test_interval_coverage_on_synthetic_data():
    """95% intervals cover the population value about 95% of the time when item effects dominate.

    Score = item effect + seed x item noise; configuration c also has its own per-item effect
    (some items suit it better), so the paired difference has an item-level part to resample.
    """
    hits, diff_hits, reps = 0, 0, 200
    for rep in range(reps):
        rng = np.random.default_rng(rep)
        item = rng.normal(0.0, 1.0, 50)
        a = 0.5 + item + rng.normal(0.0, 0.5, (4, 50))
        c = 0.2 + item + rng.normal(0.0, 1.0, 50) + rng.normal(0.0, 0.5, (4, 50))  # true difference 0.3
        hits += stats.score(a, n_boot=400, seed=rep).contains(0.5)
        d = stats.paired_difference(Arms.of(a), Arms.of(c), "score", n_boot=400, seed=rep)
        diff_hits += d.low <= 0.3 <= d.high
    assert 0.90 <= hits / reps <= 0.99
    assert 0.88 <= diff_hits / reps <= 0.99


def test_crossed_bootstrap_is_conservative_when_cell_noise_dominates():
    """Only seed x item noise (no item-level difference): resampling both ways over-covers, never under.

    This is the known behaviour of the crossed (pigeonhole) bootstrap (Owen 2007): it can overstate the
    variance of the cell noise up to about 3x; a claimed difference is then harder to get, not easier.
    """
    hits, reps = 0, 200
    for rep in range(reps):
        rng = np.random.default_rng(1000 + rep)
        item = rng.normal(0.0, 1.0, 50)
        a, c = 0.3 + item + rng.normal(0.0, 0.5, (4, 50)), item + rng.normal(0.0, 0.5, (4, 50))
        d = stats.paired_difference(Arms.of(a), Arms.of(c), "score", n_boot=400, seed=rep)
        hits += d.low <= 0.3 <= d.high
    assert hits / reps >= 0.95


def test_verdict_needs_both_holm_p_and_an_interval_excluding_zero():
    assert stats.verdict(0.2, 0.1, 0.3, 0.01) == "better"
    assert stats.verdict(-0.2, -0.3, -0.1, 0.01) == "worse"
    assert stats.verdict(0.2, -0.01, 0.4, 0.01) == "tie"  # interval touches 0
    assert stats.verdict(0.2, 0.1, 0.3, 0.06) == "tie"  # Holm p too large


def _four_configurations() -> list[Configuration]:
    rng = np.random.default_rng(7)
    t, b = _binary(rng, 0.95, 1), _binary(rng, 0.05, 1)
    mid = _binary(rng, 0.5)
    return [
        Configuration("A", 0.60, Arms.of(mid, t, b)),  # best on validation
        Configuration("B", 0.40, Arms.of(_binary(rng, 0.9), t, b)),  # best on test, not on validation
        Configuration("C", 0.30, Arms.of(_binary(rng, 0.1), t, b)),
        Configuration("D", 0.55, Arms.of(mid.copy(), t, b)),  # identical to A on test
    ]


def test_comparison_table_chooses_on_validation_and_corrects_with_holm():
    configs = _four_configurations()
    df = stats.comparison_table(configs, "gap_closure", n_boot=2000, seed=0)
    assert isinstance(df, pd.DataFrame)
    assert list(df["configuration"]) == ["A", "B", "C", "D"]
    row = df.set_index("configuration")
    assert row.loc["A", "verdict"] == "best" and row.loc["A", "delta"] == 0.0 and np.isnan(row.loc["A", "p_holm"])
    assert row.loc["B", "test"] > row.loc["A", "test"]  # the test winner is not the reference
    assert list(row.loc[["B", "C", "D"], "verdict"]) == ["better", "worse", "tie"]
    assert list(row.loc[["B", "C", "D"], "p_holm"]) == pytest.approx(stats.holm(row.loc[["B", "C", "D"], "p"]))
    assert row.loc["D", "p"] == 1.0 and row.loc["D", "delta"] == 0.0
    # B and C are separated in every replicate: raw p = 2/2001, Holm x3 and x2, made monotone
    assert row.loc["B", "p_holm"] == pytest.approx(3 * 2 / 2001) and row.loc["C", "p_holm"] == pytest.approx(6 / 2001)
    for c in configs:
        est = stats.interval(c.test, "gap_closure", n_boot=2000, seed=0)
        assert (row.loc[c.label, "test_low"], row.loc[c.label, "test_high"]) == (est.low, est.high)
    assert df.attrs["best"] == "A"
    assert stats.summary_sentence(df) == (
        "A is best on validation; on test it is not distinguishable from 1 of 3 others (p >= 1.00), "
        "better than 1 (p <= 0.003) and worse than 1 (B; p <= 0.003)."
    )


def test_comparison_table_edge_cases():
    one = stats.comparison_table(_four_configurations()[:1], n_boot=200)
    assert list(one["verdict"]) == ["best"]
    assert "only configuration" in stats.summary_sentence(one)
    with pytest.raises(StatsError, match="duplicate"):
        stats.comparison_table([_four_configurations()[0]] * 2, n_boot=200)
    with pytest.raises(StatsError, match="no configurations"):
        stats.comparison_table([], n_boot=200)


def test_aggregate_tasks_mean_rank_by_hand():
    t1 = pd.DataFrame(
        {
            "configuration": ["A", "B", "C", "D"],
            "test": [0.9, 0.5, 0.7, 0.1],
            "verdict": ["best", "worse", "tie", "worse"],
        }
    )
    t2 = pd.DataFrame({"configuration": ["A", "B", "C"], "test": [0.4, 0.6, 0.6], "verdict": ["tie", "best", "tie"]})
    agg = stats.aggregate_tasks({"t1": t1, "t2": t2}, n_boot=500).set_index("configuration")
    # ranks t1: A 1, C 2, B 3, D 4; t2: B 1.5, C 1.5, A 3
    assert list(agg.index) == ["C", "A", "B", "D"]
    assert agg["rank_mean"].to_dict() == pytest.approx({"A": 2.0, "B": 2.25, "C": 1.75, "D": 4.0})
    assert agg["rank_min"].to_dict() == pytest.approx({"A": 1.0, "B": 1.5, "C": 1.5, "D": 4.0})
    assert agg["rank_max"].to_dict() == pytest.approx({"A": 3.0, "B": 3.0, "C": 2.0, "D": 4.0})
    assert agg["tasks"].to_dict() == {"A": 2, "B": 2, "C": 2, "D": 1}
    assert ((agg["rank_low"] >= agg["rank_min"]) & (agg["rank_high"] <= agg["rank_max"])).all()
    assert agg.loc["A", "rank_low"] == 1.0 and agg.loc["A", "rank_high"] == 3.0  # both tasks drawn twice happens
    assert agg.loc["D", "verdict[t2]"] == "-" and agg.loc["B", "verdict[t1]"] == "worse"


def test_summary_sentence_says_when_validation_ties():
    """Two configurations with the same validation figure: the sentence names the reference and says it is tied."""
    df = stats.comparison_table(_four_configurations(), n_boot=200)
    df.loc[df["configuration"] == "C", "validation"] = df.loc[df["configuration"] == "A", "validation"].iloc[0]
    assert stats.summary_sentence(df).startswith(
        "A is best on validation (tied there with 1 other; the earliest trial is the reference); on test it is"
    )
