"""harness.aggregate: per-item scores → a seed's and a configuration's figures, and the artifact the report pairs on."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from harness import aggregate, stats
from harness.contexts import Context
from harness.metrics import METRICS, TrialMetrics
from harness.results import Arms, TrialResult
from harness.scoring import ArmScore


def arm(name: str, values: list[float], start: int = 0) -> ArmScore:
    return ArmScore(name, "acc", float(np.mean(values)), 0.0, {start + i: v for i, v in enumerate(values)})


T_VAL, B_VAL = [1, 1, 1, 0] * 5, [0, 0, 1, 0] * 5  # validation: teacher 0.75, baseline 0.25
T_TEST, B_TEST = [1, 1, 0, 1, 1] * 6, [0, 1, 0, 0, 0] * 6  # test: teacher 0.8, baseline 0.2


def result(seed: int, val_student: list[float], test_student: list[float], **metrics: float) -> TrialResult:
    validation = Arms(arm("teacher", T_VAL), arm("baseline", B_VAL), arm("student", val_student))
    test = Arms(arm("teacher", T_TEST, 100), arm("baseline", B_TEST, 100), arm("student", test_student, 100))
    scores = aggregate.score_metrics([validation], [test], n_boot=300, seed=0)
    rest = {f.name: 1.0 for f in dataclasses.fields(TrialMetrics) if f.name not in scores}
    rest.update({k: None for k in rest if k.startswith("control_")}, **metrics)
    return TrialResult(TrialMetrics(**{**rest, **scores}), validation, test, Context(None, 0), [], seed)


def test_one_seed_figures_by_hand():
    r = result(0, [1, 0, 1, 0] * 5, [1, 1, 0, 0, 1] * 6)
    m = r.metrics
    assert (m.validation_teacher_score, m.validation_baseline_score, m.validation_student_score) == (0.75, 0.25, 0.5)
    assert m.validation_gap_closure == pytest.approx((0.5 - 0.25) / (0.75 - 0.25))
    assert m.test_gap_closure == pytest.approx((0.6 - 0.2) / (0.8 - 0.2))
    assert m.test_gap_closure_low < m.test_gap_closure < m.test_gap_closure_high
    assert m.test_student_score_low < 0.6 < m.test_student_score_high and m.seeds == 1
    est = stats.gap_closure([T_TEST], [B_TEST], [[1, 1, 0, 0, 1] * 6], n_boot=300, seed=0)
    assert (m.test_gap_closure_low, m.test_gap_closure_high) == (est.low, est.high)


def test_configuration_pools_seeds_and_averages_the_rest():
    a = result(0, [1, 0, 1, 0] * 5, [1, 1, 0, 0, 1] * 6, train_time_s=2.0, heldout_kl=0.5)
    b = result(1, [1, 1, 1, 0] * 5, [1, 1, 1, 0, 1] * 6, train_time_s=4.0, heldout_kl=0.25)
    m = aggregate.combine([a, b], n_boot=300, seed=0)
    assert m.seeds == 2 and m.train_time_s == 3.0 and m.heldout_kl == 0.375
    assert m.validation_student_score == pytest.approx(0.625)
    # teacher and baseline do not depend on the seed: the pooled gap closure is the mean of the seeds'
    assert m.validation_gap_closure == pytest.approx(np.mean([a.metrics.validation_gap_closure, 1.0]))
    assert m.test_gap_closure == pytest.approx((a.metrics.test_gap_closure + b.metrics.test_gap_closure) / 2)
    est = stats.gap_closure([T_TEST], [B_TEST], [[1, 1, 0, 0, 1] * 6, [1, 1, 1, 0, 1] * 6], n_boot=300, seed=0)
    assert (m.test_gap_closure, m.test_gap_closure_low, m.test_gap_closure_high) == pytest.approx(
        (est.estimate, est.low, est.high)
    )
    assert m.control_forgetting is None  # no control task: absent, not zero


def test_undefined_gap_closure_is_nan_not_an_error():
    tie = aggregate.SplitScores.of({0: 1.0, 1: 0.0}, {0: 1.0, 1: 0.0}, [{0: 1.0, 1: 1.0}])
    out = aggregate.split_figures("test", tie, intervals=True, n_boot=200, seed=0)
    assert math.isnan(out["test_gap_closure"]) and math.isnan(out["test_gap_closure_low"])
    assert out["test_student_score"] == 1.0


def test_control_forgetting_interval():
    base = {i: float(i % 2) for i in range(30)}  # 0.5
    students = [{i: 0.0 for i in range(30)}, {i: float(i % 2) for i in range(30)}]  # 0.0 and 0.5
    out = aggregate.control_figures(base, students, n_boot=300, seed=0)
    assert out["control_forgetting"] == pytest.approx(0.25) and out["control_student_score"] == 0.25
    assert out["control_forgetting_low"] <= 0.25 <= out["control_forgetting_high"]


def test_item_scores_round_trip_and_pairing():
    a = result(0, [1, 0, 1, 0] * 5, [1, 1, 0, 0, 1] * 6)
    b = result(1, [1, 1, 1, 0] * 5, [1, 1, 1, 0, 1] * 6)
    data = aggregate.item_scores([a, b], "acc", {"validation": "v note", "test": "t note"})
    assert data["seeds"] == [0, 1] and data["splits"]["test"]["note"] == "t note"
    back = aggregate.read_item_scores(data, "test")
    assert back.teacher == a.test.teacher.per_item and back.students[1] == b.test.student.per_item
    # a second configuration that missed one item and ran a third seed: paired on what both have
    other = aggregate.SplitData(
        {k: v for k, v in back.teacher.items() if k != 100},
        back.baseline,
        {**back.students, 2: back.students[0]},
    )
    grids, seeds = aggregate.paired([back, other])
    assert seeds == [0, 1] and grids[0].items == grids[1].items == list(range(101, 130))
    assert grids[0].student.shape == (2, 29)
    with pytest.raises(ValueError, match="format"):
        aggregate.read_item_scores({**data, "format": 0})


def test_every_score_metric_is_defined():
    r = result(0, [1, 0, 1, 0] * 5, [1, 1, 0, 0, 1] * 6)
    scores = aggregate.score_metrics([r.validation], [r.test], n_boot=100, seed=0)
    assert set(scores) <= set(METRICS)
