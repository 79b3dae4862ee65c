"""Metrics are defined once (harness/metrics.py): the README, the sweep's objectives and tracking follow it."""

from __future__ import annotations

import dataclasses
import typing

import mlflow
import pytest
from helpers import ROOT

from harness import metrics, sweep, tracking
from harness.spec import Sweep


def test_readme_metric_table_is_generated_from_the_definitions():
    """Regenerate with `python -m harness.metrics` and paste into the README when a metric changes."""
    assert metrics.markdown_table() in (ROOT / "README.md").read_text()


def test_every_objective_is_a_metric_with_a_direction():
    (literal,) = typing.get_args(Sweep.model_fields["objectives"].annotation)
    assert set(typing.get_args(literal)) == set(metrics.OBJECTIVES)
    for name in typing.get_args(literal):
        metric = metrics.METRICS[metrics.OBJECTIVES[name]]
        assert metric.direction in ("maximize", "minimize"), name
        assert sweep.direction(name) == metric.direction
        assert "score" not in name and "gap" not in name or metric.name.startswith("validation_")  # never test


def test_metric_names_are_the_trial_fields_and_mlflow_safe():
    names = [f.name for f in dataclasses.fields(metrics.TrialMetrics)]
    assert list(metrics.METRICS) == names
    for name in [*names, *metrics.STEP_METRICS]:
        assert tracking.metric_name(name) == name  # logged under the very name the report reads back
    assert set(metrics.METRICS).isdisjoint(metrics.STEP_METRICS)


def test_logged_leaves_out_absent_optional_metrics():
    values = {f.name: 0.5 for f in dataclasses.fields(metrics.TrialMetrics) if not f.name.startswith("control_")}
    m = metrics.TrialMetrics(**values)
    assert m.logged() == values
    with_control = dataclasses.replace(m, control_forgetting=0.25)
    assert with_control.logged() == {**values, "control_forgetting": 0.25}


@pytest.mark.slow
def test_tracking_refuses_an_undefined_step_metric(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("m", artifact_location=(tmp_path / "a").as_uri())
    run = mlflow.MlflowClient().create_run(exp)
    tr = tracking.TrialRun(run.info.run_id)
    tr.log_step(1, {metrics.TRAIN_LOSS.name: 0.5})
    with pytest.raises(ValueError, match=r"undefined step metrics \['train/los'\]"):
        tr.log_step(2, {"train/los": 0.4})
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, metrics.TRAIN_LOSS.name)
    assert [(h.step, h.value) for h in history] == [(1, 0.5)]


@pytest.mark.slow
def test_mlflow_holds_full_precision_and_the_report_rounds(tmp_path):
    """What tracking logs is the float itself (the MLflow UI shows its digits); only the report rounds, to the
    decimals each metric's definition gives."""
    from harness.report.tables import fmt_metric

    tracking.use_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("m", artifact_location=(tmp_path / "a").as_uri())
    run = mlflow.MlflowClient().create_run(exp)
    names = [f.name for f in dataclasses.fields(metrics.TrialMetrics) if not f.name.startswith("control_")]
    values = {name: (i + 1) / 7 + 1e-12 for i, name in enumerate(names)}
    tracking.TrialRun(run.info.run_id).log_metrics(metrics.TrialMetrics(**values))
    tracking.TrialRun(run.info.run_id).log_step(1, {metrics.TRAIN_LOSS.name: 1 / 3})
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert {k: logged[k] for k in values} == values  # bit for bit
    assert logged[metrics.TRAIN_LOSS.name] == 1 / 3
    assert fmt_metric("validation_gap_closure", 1 / 7) == "0.143"
