"""Optuna studies with MLflow runs on the tiny model: resume, nesting (study → configuration → seed), failed
trials with reasons."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import mlflow
import optuna
import pytest
import torch
from helpers import write_suite

from harness import cli, stores, sweep, tracking, workers
from harness import trial as trial_module
from harness.spec import load_suite


def _children(suite, kind="trial"):
    exp = tracking.setup(suite)
    runs = mlflow.search_runs(
        experiment_ids=[exp], filter_string=f"tags.`harness.study` = '{stores.study_name(suite)}'"
    )
    parents = runs[runs["tags.harness.kind"] == "study"]
    return parents, runs[runs["tags.harness.kind"] == kind]


@pytest.mark.slow
def test_resume_runs_only_missing_trials(tmp_path):
    path = write_suite(
        tmp_path,
        axes={
            "targets": [{"name": "greedy"}],
            "contexts": [{"name": "empty"}, {"name": "fewer_demos", "k": 1}],
            "losses": [{"name": "self_target_nll"}, {"name": "forward_kl"}],
        },
        hyperparameters={
            "learning_rate": {"low": 1e-4, "high": 3e-3, "log": True},
            "epochs": 1,
            "batch_size": 4,
            "train_inputs": 8,
        },
        sweep={"sampler": "tpe", "n_trials": 4, "seeds": 1},
    )
    suite = load_suite(path)
    sweep.run(suite)
    _, first = _children(suite)
    assert len(first) == 4
    resumed = sweep.run(suite, n_trials=6)
    parents, children = _children(suite)
    assert len(parents) == 1 and len(children) == 6
    assert set(children["tags.mlflow.parentRunId"]) == {parents.iloc[0].run_id}
    assert set(first.run_id) < set(children.run_id)  # the first four were kept, two were added
    study = optuna.load_study(study_name=stores.study_name(suite), storage=stores.storage_url(suite))
    assert len(study.trials) == 6
    assert sorted(children["tags.optuna.trial_number"].astype(int)) == list(range(6))
    done = children[children.status == "FINISHED"]
    assert len(done) == 6
    for col in (
        "params.target",
        "params.context",
        "params.loss",
        "params.hp.learning_rate",
        "metrics.validation_gap_closure",
        "metrics.test_gap_closure",
        "metrics.test_gap_closure_low",
        "metrics.test_student_score",
        "metrics.test_teacher_score",
        "metrics.test_baseline_score",
        "metrics.greedy_agreement",
        "metrics.context_tokens_saved",
        "metrics.peak_memory_mb",
        "tags.harness.suite_hash",
        "tags.git.commit",
        "tags.teacher",
    ):
        assert done[col].notna().all(), col
    _, seeds = _children(suite, "seed")
    assert len(seeds) == 6 and set(seeds["tags.mlflow.parentRunId"]) == set(children.run_id)  # one seed each
    client = mlflow.MlflowClient()
    seed_run = seeds.iloc[0].run_id
    assert client.get_run(seed_run).inputs.dataset_inputs, "the distillation inputs are logged as an MLflow dataset"
    assert {a.path for a in client.list_artifacts(seed_run)} >= {
        "per_item.json",
        "lm_eval_results.json",
        "training_inputs.json",
    }
    rows = mlflow.load_table("training_inputs.json", run_ids=[seed_run])
    assert list(rows.columns[:3]) == ["input", "reference", "teacher_target"] and len(rows) == 8
    assert rows["input"].str.len().gt(0).all()
    assert {a.path for a in client.list_artifacts(done.iloc[0].run_id)} >= {"suite.yaml", "item_scores.json"}
    steps = client.get_metric_history(seed_run, "train/loss")
    assert len(steps) == 2
    lines = sweep.summary(resumed)
    assert lines[0] == f"study {stores.study_name(suite)}: 6 trials"
    assert [line.split()[:2] for line in lines[1:]] == [[f"#{n}", "COMPLETE"] for n in range(6)]


@pytest.mark.slow
def test_nan_loss_trial_fails_with_reason_and_study_goes_on(tmp_path):
    path = write_suite(
        tmp_path,
        axes={"targets": [{"name": "greedy"}], "contexts": [{"name": "empty"}], "losses": [{"name": "forward_kl"}]},
        hyperparameters={"learning_rate": {"choices": [1e30, 1e-3]}, "epochs": 2, "batch_size": 4, "train_inputs": 8},
        sweep={"sampler": "grid", "n_trials": 2},
    )
    suite = load_suite(path)
    sweep.run(suite)
    study = optuna.load_study(study_name=stores.study_name(suite), storage=stores.storage_url(suite))
    by_lr = {t.params["learning_rate"]: t for t in study.trials}
    bad, good = by_lr[1e30], by_lr[1e-3]
    assert bad.state == optuna.trial.TrialState.FAIL
    assert "TrainingDiverged" in bad.user_attrs["reason"] and "nan" in bad.user_attrs["reason"].lower()
    assert good.state == optuna.trial.TrialState.COMPLETE and math.isfinite(good.value)
    _, children = _children(suite)
    status = dict(zip(children["tags.optuna.trial_number"].astype(int), children.status, strict=True))
    assert status == {bad.number: "FAILED", good.number: "FINISHED"}
    reason = children.set_index(children["tags.optuna.trial_number"].astype(int)).loc[bad.number, "tags.harness.reason"]
    assert "training diverged" in reason
    assert (
        children.set_index(children["tags.optuna.trial_number"].astype(int)).loc[bad.number, "tags.optuna.trial_state"]
        == "FAIL"
    )


@pytest.mark.parametrize(
    ("sampler", "objectives", "expected"),
    [
        ("grid", ["gap_closure"], optuna.samplers.GridSampler),
        ("tpe", ["gap_closure"], optuna.samplers.TPESampler),
        ("tpe", ["gap_closure", "train_tokens"], optuna.samplers.NSGAIISampler),
    ],
)
def test_sampler_choice(tmp_path, sampler, objectives, expected):
    suite = load_suite(write_suite(tmp_path, sweep={"sampler": sampler, "objectives": objectives}))
    assert isinstance(sweep.make_sampler(suite).for_number(0), expected)


def _draws(suite, study, numbers, sampler=None):
    """Ask trials with the suite's sampler (a new process = a new sampler object) and return their configs."""
    study.sampler = sampler or sweep.make_sampler(suite)
    out = {}
    for _ in numbers:
        trial = study.ask()
        cfg = sweep.suggest(trial, suite)
        out[trial.number] = (cfg.context.label, cfg.hp.learning_rate)
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_sampler_seeds_follow_trial_numbers(tmp_path, sampler):
    """One process: reproducible. A resume in a new process does not replay the first draws, and two
    workers interleaving on one study never draw alike (each trial's seed comes from its number)."""
    suite = load_suite(
        write_suite(
            tmp_path,
            hyperparameters={"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": 1},
            sweep={"sampler": sampler},
        )
    )
    first = _draws(suite, optuna.create_study(direction="maximize"), range(6))
    again = _draws(suite, optuna.create_study(direction="maximize"), range(6))
    assert first == again
    assert len(set(first.values())) == 6
    resumed = optuna.create_study(direction="maximize")
    _draws(suite, resumed, range(3))
    later = _draws(suite, resumed, range(3))  # a new sampler object, as a restarted process has
    assert set(later) == {3, 4, 5} and not set(later.values()) & set(first.values()) - {first[3], first[4], first[5]}
    shared = optuna.create_study(direction="maximize")
    a, b = sweep.make_sampler(suite), sweep.make_sampler(suite)  # two workers, same suite seed
    drawn = {}
    for i in range(6):
        drawn |= _draws(suite, shared, [i], a if i % 2 else b)
    assert len(set(drawn.values())) == 6


def test_trials_count_toward_n_trials_by_how_they_ended():
    study = optuna.create_study()
    add = study.add_trial
    create = optuna.trial.create_trial
    fail = optuna.trial.TrialState.FAIL
    add(create(value=1.0))
    add(create(state=optuna.trial.TrialState.PRUNED, intermediate_values={0: 1.0}))
    add(create(state=fail, user_attrs={"failure": "configuration", "reason": "TrainingDiverged: nan"}))
    add(create(state=fail, user_attrs={"failure": "interrupted", "reason": "interrupted (Ctrl-C or SIGTERM)"}))
    add(create(state=fail))  # its worker died: failed by the heartbeat check
    add(create(state=fail, user_attrs={"failure": "bug", "reason": "KeyError: 'x' (stopped the study)"}))
    add(create(state=fail, user_attrs={"failure": "surplus", "reason": "not run"}))
    add(create(state=fail, user_attrs={"reason": "TrainingDiverged: nan"}))  # recorded before the marks existed
    assert [workers.counts(t) for t in study.trials] == [True, True, True, False, False, False, False, True]
    assert workers.tally(study) == workers.Tally(counted=4, running=0, waiting=0)


def test_a_trial_claimed_when_the_study_is_full_is_surplus():
    """Two workers claim the last trial at once: the lower number runs, the higher one is closed unrun."""
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(value=1.0))
    last, extra = study.ask(), study.ask()
    workers.claim(last, target=2)
    with pytest.raises(workers.Surplus):
        workers.claim(extra, target=2)
    assert extra.study.trials[extra.number].user_attrs["failure"] == "surplus"
    workers.claim(extra, target=3)


@pytest.mark.slow
def test_pruned_trial_ends_killed_with_reason(tmp_path):
    """The median pruner sees the held-out KL during training: a trial far worse than its peers stops early."""
    path = write_suite(
        tmp_path,
        axes={"targets": [{"name": "greedy"}], "contexts": [{"name": "empty"}], "losses": [{"name": "forward_kl"}]},
        hyperparameters={"learning_rate": 1e-9, "epochs": 2, "batch_size": 4, "train_inputs": 8},
        training={"eval_every": 1},
        sweep={"sampler": "tpe", "pruner": "median", "n_trials": 3},
    )
    suite = load_suite(path)
    study = optuna.create_study(
        study_name=stores.study_name(suite), storage=stores.storage_url(suite), direction="maximize"
    )
    for _ in range(2):  # two earlier trials whose student matched the teacher (KL 0) at every step
        study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={s: -0.0 for s in range(8)}))
    sweep.run(suite)
    study = optuna.load_study(study_name=stores.study_name(suite), storage=stores.storage_url(suite))
    pruned = study.trials[2]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert pruned.user_attrs["reason"].startswith("held-out KL ") and "at step 1 " in pruned.user_attrs["reason"]
    _, children = _children(suite)
    assert len(children) == 1
    row = children.iloc[0]
    assert row["status"] == "KILLED" and row["tags.optuna.trial_state"] == "PRUNED"
    assert row["tags.harness.reason"].startswith("TrialPruned: held-out KL")


@pytest.mark.parametrize(
    ("sampler", "pruner", "objectives", "expected"),
    [
        ("grid", "auto", ["gap_closure"], False),
        ("grid", "median", ["gap_closure"], True),
        ("tpe", "auto", ["gap_closure"], True),
        ("tpe", "none", ["gap_closure"], False),
        ("tpe", "median", ["gap_closure", "train_tokens"], False),
    ],
)
def test_pruner_choice(tmp_path, sampler, pruner, objectives, expected):
    suite = load_suite(write_suite(tmp_path, sweep={"sampler": sampler, "pruner": pruner, "objectives": objectives}))
    assert sweep.prunes(suite) is expected
    assert isinstance(sweep.make_pruner(suite), optuna.pruners.MedianPruner if expected else optuna.pruners.NopPruner)


def test_only_configuration_failures_are_caught(tmp_path):
    assert ValueError not in sweep.EXPECTED_FAILURES and RuntimeError not in sweep.EXPECTED_FAILURES
    for e in (sweep.TrainingDiverged, sweep.InvalidCombination, torch.OutOfMemoryError, sweep.ObjectiveUndefined):
        assert e in sweep.EXPECTED_FAILURES
    suite = load_suite(write_suite(tmp_path))
    with pytest.raises(sweep.ObjectiveUndefined, match="gap_closure is undefined"):
        sweep.objective_values(suite, SimpleNamespace(validation_gap_closure=math.nan))


@pytest.mark.slow
def test_a_bug_stops_the_study_and_marks_the_trial_failed(tmp_path, monkeypatch):
    """A programming error is not a result: the study stops with the traceback instead of recording a FAIL row
    and going on, and the trial it hit is failed in Optuna and in MLflow with the reason."""
    path = write_suite(
        tmp_path,
        axes={"targets": [{"name": "greedy"}], "contexts": [{"name": "empty"}], "losses": [{"name": "forward_kl"}]},
        hyperparameters={"learning_rate": {"choices": [1e-3, 1e-4]}, "epochs": 1, "batch_size": 4, "train_inputs": 8},
        sweep={"sampler": "grid", "n_trials": 2},
    )
    suite = load_suite(path)

    def broken_train(*args, **kwargs):
        raise KeyError("no_such_setting")

    monkeypatch.setattr(trial_module, "train", broken_train)
    with pytest.raises(KeyError, match="no_such_setting"):
        sweep.run(suite)
    study = optuna.load_study(study_name=stores.study_name(suite), storage=stores.storage_url(suite))
    bad, queued = study.trials  # the study stopped at the first bug; its configuration waits for the fix
    assert bad.state == optuna.trial.TrialState.FAIL
    assert bad.user_attrs["reason"] == "KeyError: 'no_such_setting' (stopped the study)"
    assert queued.state == optuna.trial.TrialState.WAITING and queued.user_attrs["requeued_from"] == 0
    assert study.trials[1].system_attrs["fixed_params"] == bad.params
    _, children = _children(suite)
    assert len(children) == 1
    row = children.iloc[0]
    assert row["status"] == "FAILED" and row["tags.optuna.trial_state"] == "FAIL"
    assert row["tags.harness.reason"] == "KeyError: 'no_such_setting'"


@pytest.mark.slow
def test_ctrl_c_requeues_the_trial_and_ends_its_run_killed(tmp_path, monkeypatch):
    """Ctrl-C mid-trial: the trial is failed as interrupted, its configuration requeued at once and its MLflow
    run ended KILLED with the reason; the next start runs that configuration, and only it."""
    path = write_suite(
        tmp_path,
        hyperparameters={"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": 1, "train_inputs": 8},
        sweep={"sampler": "random", "n_trials": 1},
    )
    suite = load_suite(path)
    real_train = trial_module.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trial_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(suite)
    study = optuna.load_study(study_name=stores.study_name(suite), storage=stores.storage_url(suite))
    cut, queued = study.trials
    assert cut.state == optuna.trial.TrialState.FAIL and cut.user_attrs["reason"].startswith("interrupted")
    assert queued.state == optuna.trial.TrialState.WAITING and queued.user_attrs["requeued_from"] == cut.number
    _, children = _children(suite)
    assert list(children.status) == ["KILLED"] and children.iloc[0]["tags.harness.reason"].startswith("interrupted")

    monkeypatch.setattr(trial_module, "train", real_train)
    study = sweep.run(suite)
    cut, rerun = study.trials
    assert rerun.state == optuna.trial.TrialState.COMPLETE and rerun.params == cut.params
    assert "rerun as #1" in sweep.summary(study)[1] and "rerun of #0" in sweep.summary(study)[2]


@pytest.mark.slow
def test_run_exits_1_when_no_trial_completed(tmp_path, capsys):
    path = write_suite(
        tmp_path,
        axes={"targets": [{"name": "greedy"}], "contexts": [{"name": "empty"}], "losses": [{"name": "forward_kl"}]},
        hyperparameters={"learning_rate": 1e30, "epochs": 2, "batch_size": 4, "train_inputs": 8},
        sweep={"sampler": "grid", "n_trials": 1},
    )
    assert cli.main(["run", str(path), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert "error: no trial completed (1 trials: 1 × TrainingDiverged)" in err


def test_the_grid_sampler_visits_every_point_once(tmp_path):
    """Every trial gets a fresh sampler (workers.PerTrialSeed); the grid's order must still be the same in all of
    them, or a grid id means a different point in each trial and points repeat while others never run."""
    path = write_suite(
        tmp_path,
        axes={
            "contexts": [{"name": "empty"}, {"name": "fewer_demos", "k": 1}],
            "losses": [{"name": "self_target_nll"}, {"name": "forward_kl"}],
        },
        hyperparameters={"lora_rank": {"choices": [0, 8]}, "learning_rate": {"choices": [1.0e-4, 1.0e-3]}},
        sweep={"sampler": "grid", "n_trials": 16},
    )
    suite = load_suite(path)
    for seed in (0, 1, 7):
        study = optuna.create_study(sampler=sweep.make_sampler(suite.model_copy(update={"seed": seed})))
        study.optimize(lambda t: float(len(str(sweep.suggest(t, suite)))), n_trials=16)
        points = {tuple(sorted(t.params.items())) for t in study.trials}
        assert len(points) == 16, f"seed {seed}: {len(points)} distinct points in 16 trials"


# ---------------------------------------------------------------- one tie-break rule: report, export, kept student
def test_a_tie_on_validation_is_broken_the_same_way_by_report_export_and_keep(tmp_path, caplog):
    """Three configurations tie on validation (trials 3, 1 and 2, in that row order): the report's reference,
    export's default trial and the student `keep` registers are all the earliest trial, 1."""
    import pandas as pd

    from harness import aggregate, keep
    from harness.report import comparison
    from harness.report.runs import best_trials

    rows = [(3, 0.8), (0, 0.5), (1, 0.8), (2, 0.8)]  # trial, validation gap closure
    df = pd.DataFrame(
        {
            "trial": [t for t, _ in rows],
            "state": "COMPLETE",
            "run_id": [f"run{t}" for t, _ in rows],
            "target": "greedy",
            "context": "empty",
            "loss": "forward_kl",
            "hp.learning_rate": [1e-4 * (t + 1) for t, _ in rows],
            "validation_gap_closure": [v for _, v in rows],
            "test_gap_closure": 0.5,
        }
    )
    items = {str(i): float(i % 2) for i in range(20)}
    split = {"note": "", "teacher": {k: 1.0 for k in items}, "baseline": {k: 0.0 for k in items}}
    scores = {
        f"run{t}": {
            "format": aggregate.FORMAT,
            "metric": "acc",
            "seeds": [0, 1],
            "splits": {"test": {**split, "student": {"0": items, "1": items}}},
        }
        for t, _ in rows
    }
    suite = load_suite(write_suite(tmp_path, evaluation={"bootstrap": 200}))
    assert int(best_trials(df, 1).iloc[0]["trial"]) == 1  # export's default and settle's alias `best`
    assert int(comparison.compare(suite, df, scores).table.iloc[0]["trial"]) == 1  # the report's reference

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        exp = mlflow.create_experiment("tie")
        client = mlflow.MlflowClient()
        for number, value in rows:
            if number == 1:
                continue  # the configuration now finishing
            run = client.create_run(exp, tags={"harness.study": stores.study_name(suite), "harness.kind": "trial"})
            client.set_tag(run.info.run_id, "optuna.trial_number", str(number))
            client.log_metric(run.info.run_id, "validation_gap_closure", value)
            client.set_terminated(run.info.run_id)
        assert keep.leads(suite, exp, 0.8, 1, "now")  # ties with 2 and 3, earlier than both: registered
        assert not keep.leads(suite, exp, 0.8, 4, "now")  # ties, later than 2: not registered
        assert keep.leads(suite, exp, 0.81, 4, "now")

        # settle (the end of a run) finds trial 1's registered student: no "not registered" warning
        chosen = str(best_trials(df, 1).iloc[0]["run_id"])
        name = keep.registered_name(suite)
        client.create_registered_model(name)
        client.create_model_version(name, source=str(tmp_path), tags={"harness.trial_run_id": chosen})
        with caplog.at_level(logging.WARNING, logger="harness.keep"):
            assert keep.settle(suite, chosen) == "1"
            assert "not registered" not in caplog.text
            assert keep.settle(suite, "run3") is None  # a later tie, never registered: the warning is due
            assert "not registered" in caplog.text
    finally:
        mlflow.set_tracking_uri(None)
