"""A whole trial on the tiny model: teacher cache, training, three lm-eval arms on both splits, reuse on rerun."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import SUITES, write_suite

from harness import scoring
from harness.cache import Store, content_hash
from harness.cli import main
from harness.config import fixed_config
from harness.contexts import Context
from harness.spec import load_suite
from harness.trial import Workbench, context_gaps, per_item_table, run_trial

TIMING = {"train_time_s", "teacher_time_s", "train_tokens_per_s", "eval_time_s", "wall_time_s", "peak_memory_mb"}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trial")
    path = write_suite(
        folder,
        axes={
            "targets": [{"name": "greedy"}],
            "contexts": [{"name": "empty"}],
            "losses": [{"name": "self_target_nll"}],
        },
    )
    return load_suite(path)


@pytest.fixture(scope="module")
def first(suite):
    bench = Workbench(suite)
    return bench, run_trial(bench, fixed_config(suite), suite.seed)


@pytest.mark.slow
def test_three_arms_scored_by_lm_eval_on_both_splits(first):
    bench, result = first
    m = result.metrics.logged()
    for split in ("validation", "test"):
        arms = getattr(result, split).present()
        assert set(arms) == {"teacher", "baseline", "student"}  # no control task in this suite
        n = len(bench.splits[split].docs)
        for name in ("teacher", "baseline", "student"):
            arm = arms[name]
            assert arm.metric == "acc" and sorted(arm.per_item) == list(range(n))
            assert m[f"{split}_{name}_score"] == pytest.approx(np.mean(list(arm.per_item.values())))
            assert "acc,none" in arm.raw  # lm-eval's own results block
        # the prompts lm-eval scored are this split's documents, in order
        assert arms["teacher"].prompts[0] == bench.task.render(bench.splits[split].docs[0], bench.context, bench.tok)
        t, b, st = (m[f"{split}_{a}_score"] for a in ("teacher", "baseline", "student"))
        assert t != b
        assert m[f"{split}_gap_closure"] == pytest.approx((st - b) / (t - b))
    assert result.validation.teacher.prompts[0] != result.test.teacher.prompts[0]
    for name in ("test_gap_closure", "test_student_score"):
        assert m[f"{name}_low"] < m[name] < m[f"{name}_high"]
    assert m["seeds"] == 1 and result.seed == bench.suite.seed
    rows = per_item_table(result)
    n_items = len(bench.splits["test"].docs) + len(bench.splits["validation"].docs)
    assert len(rows) == n_items and {"split", "reference", "teacher", "baseline", "student"} <= set(rows[0])
    assert {r["reference"] for r in rows} == {"0", "1"}  # multiple choice: the gold index


@pytest.mark.slow
def test_training_context_is_the_evaluation_context(first):
    """The string the teacher saw while making targets is the string lm-eval scored the teacher on."""
    bench, result = first
    arms = result.test
    docs = bench.splits["test"].docs
    c, c_student = bench.context, result.student_context
    assert c == Context("Answer E if the number is even and O if it is odd.", 4) and c_student == Context(None, 0)
    for i, doc in enumerate(docs):
        assert arms.teacher.prompts[i] == bench.task.render(doc, c, bench.tok)
        assert arms.student.prompts[i] == bench.task.render(doc, c_student, bench.tok)
        assert arms.baseline.prompts[i] == arms.student.prompts[i]
    # and the training prompts are built by that same render call
    train_doc = bench.task.train_docs(1)[0]
    assert bench.encode([train_doc], c)[0] == bench.tok.encode(
        bench.task.render(train_doc, c, bench.tok), add_special_tokens=False
    )
    assert "<|im_start|>system\nAnswer E" in arms.teacher.prompts[0]
    assert arms.teacher.prompts[0].count("<|im_start|>assistant\n") == 5  # 4 demos as turns + the query


@pytest.mark.slow
def test_rerun_reuses_caches_and_gives_identical_metrics(suite, first, caplog):
    _, result = first
    caplog.set_level(logging.INFO, logger="harness")
    bench2 = Workbench(suite)  # a fresh process would see only the on-disk cache, as this one does
    again = run_trial(bench2, fixed_config(suite), suite.seed)
    hits = [r.getMessage() for r in caplog.records if "teacher cache hit" in r.getMessage()]
    assert any(h.startswith("teacher cache hit: targets") for h in hits)
    assert any(h.startswith("teacher cache hit: scores") for h in hits)
    assert not [r for r in caplog.records if "cache miss: targets" in r.getMessage()]
    assert again.test.teacher.cached and again.test.baseline.cached and again.validation.teacher.cached
    same = {k: v for k, v in again.metrics.logged().items() if k not in TIMING}
    assert same == {k: v for k, v in result.metrics.logged().items() if k not in TIMING}


@pytest.mark.slow
def test_context_gaps_reuse_the_trial_arms(suite, first, capsys):
    """`harness gap` decides whether a task is worth a study: a choice, so it reads validation, never test."""
    bench, result = first
    m = result.metrics.logged()
    (row,) = context_gaps(bench)
    assert row.context == "empty" and row.items == len(bench.splits["validation"].docs)
    assert row.teacher == m["validation_teacher_score"] and row.baseline == m["validation_baseline_score"]
    assert row.gap == pytest.approx(m["validation_teacher_score"] - m["validation_baseline_score"])
    assert row.gap_stderr > 0
    # the command prints the same figures; a threshold above the gap fails with exit 1
    gap_points = 100 * row.gap
    assert main(["gap", suite.source, "--min-gap", str(gap_points - 1)]) == 0
    assert f"{gap_points:+8.1f}" in capsys.readouterr().out
    assert main(["gap", suite.source, "--min-gap", str(gap_points + 1)]) == 1
    assert "gap below" in capsys.readouterr().err


@pytest.mark.slow
def test_a_seed_changes_training_not_the_references(suite, first):
    """Another seed trains another student (data order) from the same teacher targets, scored on the same items
    against the very same teacher and baseline arms."""
    bench, result = first
    other = run_trial(bench, fixed_config(suite), suite.seed + 1)
    assert other.seed == suite.seed + 1
    assert other.metrics.final_train_loss != result.metrics.final_train_loss
    for split in ("validation", "test"):
        a, b = getattr(result, split), getattr(other, split)
        assert a.teacher is b.teacher and a.baseline is b.baseline  # scored once per study and split
        assert sorted(a.student.per_item) == sorted(b.student.per_item)
    assert [i.teacher_target for i in other.inputs] == [i.teacher_target for i in result.inputs]  # greedy: seedless


def test_arm_state_survives_the_cache(tmp_path):
    """lm-eval hands back numpy scalars; a cached arm must still load (torch.load weights_only=True)."""
    arm = scoring.ArmScore(
        "teacher",
        "exact_match",
        np.float64(0.75),
        np.float64(0.1),
        {np.int64(0): np.float64(1.0), 1: 0.5},
        raw={"exact_match,none": np.float64(0.75), "samples": (np.int32(2), "x")},
    )
    store = Store(tmp_path)
    first = store.get_or_compute("scores", {"k": 1}, arm.to_state)
    again = store.get_or_compute("scores", {"k": 1}, lambda: pytest.fail("recomputed"))
    assert again == first and store.hits == 1
    loaded = scoring.ArmScore(**again)
    assert loaded.score == 0.75 and loaded.per_item == {0: 1.0, 1: 0.5}
    assert loaded.raw == {"exact_match,none": 0.75, "samples": [2, "x"]}
    store.path("scores", content_hash({"k": 1})).write_bytes(b"damaged")  # an unreadable entry is recomputed
    assert store.get_or_compute("scores", {"k": 1}, lambda: {"fresh": 1}) == {"fresh": 1}
    assert store.get_or_compute("scores", {"k": 1}, lambda: pytest.fail("recomputed")) == {"fresh": 1}


@pytest.mark.slow
def test_control_task_scores_base_and_student(tmp_path):
    """An unrelated task scored for the untrained model and the student: forgetting = base − student."""
    control = {"name": "name_gender", "path": str(SUITES / "tasks" / "name_gender"), "eval_limit": 20}
    path = write_suite(
        tmp_path,
        task={"control": control},
        axes={"targets": [{"name": "greedy"}], "contexts": [{"name": "empty"}], "losses": [{"name": "forward_kl"}]},
    )
    suite = load_suite(path)
    bench = Workbench(suite)
    first = run_trial(bench, fixed_config(suite), 0)
    m = first.metrics
    result = run_trial(bench, fixed_config(suite), 0)  # second trial: the base model's control score is reused
    base, student = result.test.control_base, result.test.control_student
    assert base is not None and student is not None
    assert result.validation.control_base is None  # the control task is reported with test, never chooses
    assert base is first.test.control_base  # scored once per study
    assert student is not first.test.control_student  # each student is scored itself
    assert len(base.per_item) == len(student.per_item) == 20 and base.metric == "acc"
    assert result.metrics.control_base_score == pytest.approx(np.mean(list(base.per_item.values())))
    assert result.metrics.control_forgetting == pytest.approx(
        result.metrics.control_base_score - result.metrics.control_student_score
    )
    low, high = result.metrics.control_forgetting_low, result.metrics.control_forgetting_high
    assert low <= result.metrics.control_forgetting <= high
    assert m.control_forgetting == result.metrics.control_forgetting  # same config, same seed
    assert base.prompts[0] == student.prompts[0]  # same prompt for both; only the weights differ
