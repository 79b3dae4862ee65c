"""MLflow laid out the way its users read it, checked on the smoke study run through the CLI (real MLflow store):
the experiment opens as model training with a saved trials view, runs are named by configuration, final metrics
are one batch, every trial has system metrics and source tags, and the study's run carries the summary."""

from __future__ import annotations

import json

import mlflow
import pytest
from helpers import write_suite
from mlflow.tracking import MlflowClient

from harness import stores, tracking
from harness.cli import main
from harness.metrics import METRICS, STEP_METRICS
from harness.spec import load_suite


def test_run_name_is_the_configuration():
    assert tracking.run_name("greedy", "empty", "forward_kl") == "greedy|empty|forward_kl"
    assert tracking.run_name("beam(n=4)", "tag", "jsd(beta=0.5)", seed=3) == "beam(n=4)|tag|jsd(beta=0.5) seed=3"


@pytest.fixture(scope="module")
def store(cli_smoke):
    assert cli_smoke["returncode"] == 0, cli_smoke["log"]
    suite = load_suite(cli_smoke["suite"])
    client = MlflowClient(f"sqlite:///{stores.work_dir(suite) / 'mlflow.db'}")
    exp = client.get_experiment_by_name(tracking.experiment_name(suite))
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("harness.kind") == "trial"]
    seeds = [r for r in runs if r.data.tags.get("harness.kind") == "seed"]
    parents = [r for r in runs if r.data.tags.get("harness.kind") == "study"]
    seeds = [r for r in runs if r.data.tags.get("harness.kind") == "seed"]
    assert len(trials) == 2 and len(parents) == 1
    return {"suite": suite, "client": client, "exp": exp, "trials": trials, "seeds": seeds, "parent": parents[0]}


@pytest.mark.slow
def test_experiment_opens_as_model_training_with_a_saved_trials_view(store):
    tags = store["exp"].tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    note = tags[tracking.NOTE]
    assert "`heldout/kl`" in note and "`heldout_kl`" in note and "per-step" in note  # the two KLs explained
    envelope = json.loads(tags[tracking.VIEW_TAG])
    assert envelope["name"] == "harness: trials"
    state = json.loads(envelope["state"])
    # the seeds, grouped by configuration (MLflow's Group by on their tag), best validation figure first
    assert state["searchFilter"] == tracking.SEED_FILTER
    assert state["orderByKey"] == "metrics.`validation_gap_closure`" and state["orderByAsc"] is False
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": tracking.CONFIGURATION_TAG}]
    # the configuration, then gap closure on validation and test, on screen beside the run name
    assert state["columnOrder"][:6] == [
        tracking.RUN_NAME_COLUMN,
        "params.`target`",
        "params.`context`",
        "params.`loss`",
        "metrics.`validation_gap_closure`",
        "metrics.`test_gap_closure`",
    ]
    assert set(state["columnOrder"][1:]) == set(state["selectedColumns"])
    assert not [c for c in state["selectedColumns"] if c.endswith(("_low`", "_high`"))]
    url = tracking.ui_url("http://127.0.0.1:5000", store["exp"].experiment_id)
    assert url.endswith(f"/runs?viewStateShareKey={tracking.VIEW_ID}&workflowType=machine_learning")


@pytest.mark.slow
def test_seed_runs_carry_their_configuration_for_the_view(store):
    """Each seed run's `harness.configuration` is `#<trial> <its configuration run's name>` (the view's groups)."""
    trials = {r.info.run_id: r for r in store["trials"]}
    for seed in store["seeds"]:
        parent = trials[seed.data.tags["mlflow.parentRunId"]]
        number = parent.data.tags["optuna.trial_number"]
        assert seed.data.tags[tracking.CONFIGURATION_TAG] == f"#{number} {parent.info.run_name}"
    assert tracking.CONFIGURATION_TAG not in store["parent"].data.tags


@pytest.mark.slow
def test_trial_runs_are_named_by_configuration_and_seed(store):
    configurations = {"greedy|empty|forward_kl", "greedy|fewer_demos(k=1)|forward_kl"}
    assert {r.info.run_name for r in store["trials"]} == configurations
    assert {r.info.run_name for r in store["seeds"]} == {f"{c} seed={s}" for c in configurations for s in (0, 1)}
    assert store["parent"].info.run_name == f"study {stores.study_name(store['suite'])}"


@pytest.mark.slow
def test_final_metrics_are_logged_in_one_batch(store):
    """One log_batch for a trial's final values: MLflow stamps them all with the same time."""
    client = store["client"]
    for run in store["trials"]:
        finals = [k for k in run.data.metrics if k in METRICS]
        assert "validation_gap_closure" in finals and len(finals) >= 20
        stamps = {m.timestamp for k in finals for m in client.get_metric_history(run.info.run_id, k)}
        assert len(stamps) == 1, stamps
    for run in store["seeds"]:  # the step series live on the seed runs, where training happened
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "heldout/kl")}
        assert len(steps) >= 2


@pytest.mark.slow
def test_every_trial_run_has_system_metrics_and_source_tags(store):
    for run in store["trials"] + [store["parent"]]:
        tags = run.data.tags
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"] and tags["mlflow.user"], tags
    for run in store["trials"]:
        system = {k for k in run.data.metrics if k.startswith("system/")}
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system


@pytest.mark.slow
def test_study_run_carries_the_study_summary(store):
    client, parent, trials = store["client"], store["parent"], store["trials"]
    best = max(trials, key=lambda r: r.data.metrics["validation_gap_closure"])
    assert parent.info.status == "FINISHED"
    assert parent.info.end_time >= max(r.info.end_time for r in trials)  # it spans the study, not 8 ms
    assert parent.data.tags["harness.best_run_id"] == best.info.run_id
    assert parent.data.params == best.data.params
    finals = {k: v for k, v in best.data.metrics.items() if k in METRICS}
    assert {k: v for k, v in parent.data.metrics.items() if k in METRICS} == finals
    assert not set(parent.data.metrics) & {*STEP_METRICS, "system/cpu_utilization_percentage"}
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/summary.md", "report/summary.csv", "report/gap_by_target_loss.png"} <= report
    assert parent.data.tags[tracking.NOTE].startswith("# ")  # summary.md as the run's description


def test_report_of_a_never_run_suite_creates_no_experiment(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    suite = load_suite(write_suite(tmp_path, name="never-run"))
    assert main(["report", str(suite.source), "--out", str(tmp_path / "results")]) == 2
    assert "no trials recorded" in capsys.readouterr().err
    mlflow.set_tracking_uri(stores.tracking_uri(suite))
    assert MlflowClient().get_experiment_by_name(tracking.experiment_name(suite)) is None


@pytest.mark.slow
def test_older_seed_runs_get_their_configuration_tag(store):
    """A store written before the tag existed: the view's refresh (`harness ui`) tags its seeds, once."""
    seed = store["seeds"][0]
    want = seed.data.tags[tracking.CONFIGURATION_TAG]
    store["client"].delete_tag(seed.info.run_id, tracking.CONFIGURATION_TAG)
    tracking.use_store(store["client"].tracking_uri)
    assert tracking.tag_configurations(store["exp"].experiment_id) == 1
    assert store["client"].get_run(seed.info.run_id).data.tags[tracking.CONFIGURATION_TAG] == want
    assert tracking.tag_configurations(store["exp"].experiment_id) == 0
