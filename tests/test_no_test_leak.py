"""DESIGN.md section 9: the test split is reported, never used to choose.

The proof: the same study runs twice, the second time with every answer of the test split changed
(train, validation and demonstrations identical). Everything that chooses (the objective values Optuna
ranks, the intermediate values the pruner reads, the sampler's suggestions) must come out identical;
what is reported on test must differ. Plus the cheap checks: the held-out inputs behind the pruner are
validation items, and the objective reads the validation metric.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from helpers import PARITY, write_suite

from harness import aggregate, metrics, stores, sweep, tracking
from harness.spec import load_suite
from harness.trial import Workbench

SETTINGS = {
    "axes": {
        "targets": [{"name": "greedy"}],
        "contexts": [{"name": "empty"}, {"name": "fewer_demos", "k": 1}],
        "losses": [{"name": "forward_kl"}],
    },
    "hyperparameters": {"learning_rate": 1e-3, "epochs": 1, "batch_size": 4, "train_inputs": 12},  # 3 steps
    "training": {"eval_every": 1},  # intermediate held-out KL at every step: what the pruner reads
    "sweep": {"sampler": "grid", "pruner": "median", "n_trials": 2, "seeds": 2},
}


def _parity_copy(folder: Path, flip_test: bool) -> Path:
    """The parity task in `folder`, its test answers flipped (even ↔ odd) when asked."""
    task = folder / "parity"
    shutil.copytree(PARITY, task)
    if flip_test:
        rows = [json.loads(line) for line in (task / "test.jsonl").read_text().splitlines() if line]
        (task / "test.jsonl").write_text("".join(json.dumps({**r, "label": 1 - r["label"]}) + "\n" for r in rows))
    return task


def _run(folder: Path, flip_test: bool) -> dict:
    folder.mkdir()
    task = _parity_copy(folder, flip_test)
    suite = load_suite(write_suite(folder, task={"path": str(task)}, **SETTINGS))
    study = sweep.run(suite)
    exp = tracking.setup(suite)
    runs = mlflow.search_runs([exp], filter_string=f"tags.`harness.study` = '{stores.study_name(suite)}'")
    configs = runs[runs["tags.harness.kind"] == "trial"]
    configs = configs.set_index(configs["tags.optuna.trial_number"].astype(int))
    seeds = runs[runs["tags.harness.kind"] == "seed"]
    return {"suite": suite, "study": study, "configs": configs.sort_index(), "seeds": seeds}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leak")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield _run(tmp / "original", False), _run(tmp / "test_answers_changed", True)


@pytest.mark.slow
def test_changing_test_answers_changes_nothing_that_chooses(studies):
    a, b = studies
    ta, tb = a["study"].trials, b["study"].trials
    assert [t.state for t in ta] == [t.state for t in tb] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [t.params for t in ta] == [t.params for t in tb]  # the sampler saw the same history
    assert [t.values for t in ta] == [t.values for t in tb]  # the objective
    assert [t.intermediate_values for t in ta] == [t.intermediate_values for t in tb]  # the pruner's input
    assert all(sorted(t.intermediate_values) == [1, 2] for t in ta)  # steps 1 and 2 were reported (3 is the end)
    chose = [m for m in metrics.METRICS if m.startswith("validation_")] + ["heldout_kl", "greedy_agreement"]
    for name in chose:
        assert np.allclose(a["configs"][f"metrics.{name}"], b["configs"][f"metrics.{name}"]), name
    # ... while what test reports did change: the teacher's and the students' answers are now scored as wrong
    for name in ("test_teacher_score", "test_baseline_score", "test_student_score"):
        assert np.allclose(a["configs"][f"metrics.{name}"], 1 - b["configs"][f"metrics.{name}"]), name
    assert not np.allclose(a["configs"]["metrics.test_teacher_score"], b["configs"]["metrics.test_teacher_score"])


@pytest.mark.slow
def test_one_configuration_run_with_one_nested_run_per_seed(studies):
    """The configuration's run carries the means over seeds (the objective is their validation mean), the test
    intervals over items x seeds and the per-item scores; the first seed alone fed the pruner."""
    a, _ = studies
    configs, seeds, study = a["configs"], a["seeds"], a["study"]
    tracking.use_store(stores.tracking_uri(a["suite"]))  # the fixture ran b's study last
    client = mlflow.MlflowClient()
    for t in study.trials:
        row = configs.loc[t.number]
        mine = seeds[seeds["tags.mlflow.parentRunId"] == row.run_id].sort_values("tags.harness.seed")
        assert list(mine["tags.harness.seed"]) == ["0", "1"] and set(mine.status) == {"FINISHED"}
        mean = mine["metrics.validation_gap_closure"].mean()
        assert row["metrics.validation_gap_closure"] == pytest.approx(mean)
        assert t.value == pytest.approx(mean)
        assert row["metrics.seeds"] == 2 and row["params.training_seeds"] == "0,1"
        assert row["metrics.test_student_score"] == pytest.approx(mine["metrics.test_student_score"].mean())
        low, high = row["metrics.test_student_score_low"], row["metrics.test_student_score_high"]
        assert low <= row["metrics.test_student_score"] <= high
        # the pruner's values are the first seed's held-out KL (negated: the study maximises)
        kl = {m.step: m.value for m in client.get_metric_history(mine.iloc[0].run_id, "heldout/kl")}
        assert {s: -v for s, v in t.intermediate_values.items()} == {s: kl[s] for s in t.intermediate_values}
        scores = mlflow.artifacts.load_dict(f"runs:/{row.run_id}/{aggregate.SCORES_ARTIFACT}")
        assert scores["seeds"] == [0, 1] and set(scores["splits"]) == {"validation", "test"}
        test = aggregate.read_item_scores(scores, "test")
        assert len(test.teacher) == len(test.students[0]) == 40
        assert np.mean([np.mean(list(s.values())) for s in test.students.values()]) == pytest.approx(
            row["metrics.test_student_score"]
        )


def test_held_out_inputs_are_validation_items(tmp_path):
    """The intrinsic metrics (and the pruner's held-out KL) read the first validation items, never test ones."""
    suite = load_suite(write_suite(tmp_path))
    bench = Workbench(suite)
    validation, test = bench.splits["validation"], bench.splits["test"]
    n = suite.evaluation.heldout_inputs
    assert bench.heldout().docs == list(validation.docs[:n])
    assert {d["question"] for d in validation.docs}.isdisjoint(d["question"] for d in test.docs)
    assert validation.source == "validation" and test.source == "test"


def test_the_objective_reads_validation_only(tmp_path):
    suite = load_suite(write_suite(tmp_path, sweep={"objectives": ["gap_closure", "student_score"]}))
    values = {f: 0.5 for f in metrics.METRICS}
    m = metrics.TrialMetrics(**{**values, "validation_gap_closure": 0.25, "validation_student_score": 0.75})
    assert sweep.objective_values(suite, m) == [0.25, 0.75]
    assert all(v.startswith("validation_") for k, v in metrics.OBJECTIVES.items() if "score" in k or "gap" in k)
    nan = metrics.TrialMetrics(**{**values, "validation_gap_closure": math.nan, "test_gap_closure": 0.5})
    with pytest.raises(sweep.ObjectiveUndefined, match="validation split"):
        sweep.objective_values(suite, nan)
