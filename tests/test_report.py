"""The report reads a real study (tiny model, parity task, Optuna + MLflow on SQLite) back into files.

No fakes: a two-configuration, two-seed smoke study runs once per module (~50 s on 2 CPU cores)
and the report must agree with what MLflow and Optuna hold.
"""

from __future__ import annotations

import contextlib
import io
import json

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from helpers import write_suite

from harness import aggregate, stats, stores, sweep, tracking
from harness.cli import main
from harness.report.provenance import PACKAGES
from harness.report.write import COMPARISON, PLOTS, write_report
from harness.spec import SuiteError, load_suite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The smoke suite run as a 2-trial study by `harness run` (sweep, then report) in a tmp folder."""
    tmp = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the suite's own SQLite store, not the user's
        mp.chdir(tmp)  # `harness run` writes results/<suite>/ under the cwd
        path = write_suite(tmp)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["run", str(path), "--n-trials", "2"]) == 0
        suite = load_suite(path)
        exp_id = tracking.setup(suite)
        runs = mlflow.search_runs(experiment_ids=[exp_id], filter_string="tags.`harness.kind` = 'trial'")
        trials = optuna.load_study(study_name=stores.study_name(suite), storage=stores.storage_url(suite)).trials
        out = tmp / "results" / "smoke"
        yield {"suite": suite, "out": out, "runs": runs, "trials": trials, "tmp": tmp, "printed": printed.getvalue()}


@pytest.mark.slow
def test_run_prints_the_summary_then_writes_the_report(study):
    lines = study["printed"].splitlines()
    assert lines[0] == f"study {stores.study_name(study['suite'])}: 2 trials"
    assert [line.split()[:2] for line in lines[1:3]] == [["#0", "COMPLETE"], ["#1", "COMPLETE"]]
    assert lines[-1] == "report written to results/smoke"


@pytest.mark.slow
def test_writes_the_suite_folder(study):
    out = study["out"]
    for name in ("summary.csv", "summary.md", "provenance.json", COMPARISON, *PLOTS):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_summary_csv_has_one_row_per_trial_run(study):
    df = pd.read_csv(study["out"] / "summary.csv")
    assert list(df.columns[:3]) == ["trial", "state", "reason"]
    assert len(df) == len(study["runs"]) == len(study["trials"]) == 2
    assert list(df["trial"]) == sorted(t.number for t in study["trials"])
    assert set(df["run_id"]) == set(study["runs"]["run_id"])
    assert set(df["state"]) == {t.state.name for t in study["trials"]} == {"COMPLETE"}
    # params and metrics lose their MLflow prefixes; axis labels and hyperparameters are there
    for col in (
        "target",
        "context",
        "loss",
        "context.name",
        "hp.learning_rate",
        "seeds",
        "validation_gap_closure",
        "validation_student_score",
        "test_gap_closure",
        "test_gap_closure_low",
        "test_gap_closure_high",
        "test_student_score",
        "context_tokens_saved",
        "train_tokens",
        "wall_time_s",
        "git.commit",
    ):
        assert col in df.columns, col
    assert (df["seeds"] == 2).all()
    assert not any(c.startswith(("params.", "metrics.")) for c in df.columns)
    assert set(df["context"]) == {"empty", "fewer_demos(k=1)"}


@pytest.mark.slow
def test_gap_closure_matches_the_arm_scores(study):
    df = pd.read_csv(study["out"] / "summary.csv")
    for split in ("validation", "test"):
        ok = df[np.isfinite(df[f"{split}_gap_closure"])]
        assert len(ok) >= 1
        t, b, s = (ok[f"{split}_{arm}_score"] for arm in ("teacher", "baseline", "student"))
        assert np.allclose(ok[f"{split}_gap_closure"], (s - b) / (t - b))


@pytest.mark.slow
def test_comparison_is_recomputed_from_the_logged_item_scores(study):
    """comparison.csv is stats.comparison_table over the runs' item_scores.json, referenced on validation."""
    table = pd.read_csv(study["out"] / COMPARISON)
    df = pd.read_csv(study["out"] / "summary.csv").set_index("run_id")
    assert list(table["validation"]) == sorted(table["validation"], reverse=True)  # validation rank order
    assert table["verdict"].iloc[0] == "best"  # the reference: best on validation, whatever test says
    assert list(table["validation"]) == list(df.loc[table["run_id"], "validation_gap_closure"])
    data = [
        aggregate.read_item_scores(mlflow.artifacts.load_dict(f"runs:/{rid}/item_scores.json"))
        for rid in table["run_id"]
    ]
    grids, seeds = aggregate.paired(data)
    assert seeds == [0, 1]
    configs = [
        stats.Configuration(c, v, g.arms())
        for c, v, g in zip(table["configuration"], table["validation"], grids, strict=True)
    ]
    suite = study["suite"]
    again = stats.comparison_table(configs, "gap_closure", n_boot=suite.evaluation.bootstrap, seed=suite.seed)
    assert list(again["verdict"]) == list(table["verdict"])
    for col in ("test", "test_low", "test_high", "delta", "delta_low", "delta_high", "p_holm"):
        assert np.allclose(again[col], table[col], equal_nan=True), col
    # the configuration run's own test figure is the same pooled estimate
    assert np.allclose(table["test"], df.loc[table["run_id"], "test_gap_closure"])


@pytest.mark.slow
def test_summary_md_leads_with_the_quotable_sentence(study):
    md = (study["out"] / "summary.md").read_text()
    lines = md.splitlines()
    table = pd.read_csv(study["out"] / COMPARISON)
    assert lines[0] == "# Context distillation report: `smoke`"
    assert lines[2] == f"> **{stats.summary_sentence(table)}**"
    assert lines[2].startswith(f"> **{table['configuration'].iloc[0]} is best on validation; on test it is ")
    assert "2 seeds × 40 items" in lines[3]
    assert study["suite"].content_hash() in md
    assert "## Best configuration" not in md  # a single best number on test is never the headline
    for section in (
        "## Comparison on test",
        "## Reference scores",
        "### target",
        "### context",
        "### loss",
        "## All trials",
        "## Failed and pruned trials",
    ):
        assert section in md, section
    for label in table["configuration"]:
        assert f"| {label} |" in md
    assert "40 items of the task's `validation` split" in md and "Holm" in md
    for name in PLOTS:
        assert f"]({name})" in md, name


@pytest.mark.slow
def test_report_of_two_suites_writes_the_cross_task_benchmark(study, capsys):
    """`harness report A B --out DIR`: each suite's report under DIR, and benchmark.md / .csv across them."""
    tmp = study["tmp"]
    other = write_suite(
        tmp,
        name="smoke-b",
        axes={"targets": [{"name": "greedy"}], "contexts": [{"name": "empty"}], "losses": [{"name": "forward_kl"}]},
        sweep={"sampler": "grid", "n_trials": 1, "seeds": 2},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        sweep.run(load_suite(other))
        out = tmp / "bench"
        assert main(["report", str(tmp / "smoke.yaml"), str(other), "--out", str(out)]) == 0
    assert "cross-task benchmark written" in capsys.readouterr().out
    for name in ("smoke", "smoke-b"):
        assert (out / name / "summary.md").is_file() and (out / name / COMPARISON).is_file()
    bench = pd.read_csv(out / "benchmark.csv").set_index("configuration")
    shared = "greedy / empty / forward_kl"
    assert bench.loc[shared, "tasks"] == 2 and bench.loc[shared, "verdict[smoke-b]"] == "best"
    assert bench.loc["greedy / fewer_demos(k=1) / forward_kl", "tasks"] == 1
    md = (out / "benchmark.md").read_text()
    assert md.startswith("# Benchmark across tasks: `smoke`, `smoke-b`") and "mean rank" in md
    assert "(smoke/summary.md)" in md and "(smoke-b/summary.md)" in md


@pytest.mark.slow
def test_plots_are_valid_pngs(study):
    for name in PLOTS:
        data = (study["out"] / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), name


@pytest.mark.slow
def test_provenance_json(study):
    prov = json.loads((study["out"] / "provenance.json").read_text())
    suite = study["suite"]
    assert prov["suite"] == "smoke" and prov["suite_hash"] == suite.content_hash() and prov["seeds"] == [0, 1]
    assert prov["study"] == stores.study_name(suite)
    assert set(PACKAGES) <= set(prov["packages"])
    assert prov["report_machine"]["gpu"]


@pytest.mark.slow
def test_no_trials_is_a_one_line_suite_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_suite(tmp_path, name="never-run")
    with pytest.raises(SuiteError, match="no trials recorded for suite 'never-run'.*harness run"):
        write_report(load_suite(path), tmp_path / "results")
    assert main(["report", str(path), "--out", str(tmp_path / "results")]) == 2
    assert "no trials recorded" in capsys.readouterr().err
    assert main(["report", str(path), "--fast", "--out", str(tmp_path / "results")]) == 2  # its own study
    assert "no trials recorded for suite 'never-run-fast'" in capsys.readouterr().err


def test_report_of_several_suites_lists_every_bad_one(tmp_path, capsys):
    bad = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    bad[0].write_text("name: a\n")
    bad[1].write_text("name: b\ntask: {name: parity}\nsweep: {seeds: 0}\n")
    assert main(["report", *map(str, bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {bad[0]}: task: Field required",
        f"error: {bad[1]}: sweep.seeds: Input should be greater than or equal to 1 (got 0)",
    ]


@pytest.mark.slow
def test_failed_trials_are_listed_and_plots_skipped(tmp_path, monkeypatch):
    """A study whose only trial fails still gets tables (with the reason) and notes instead of plots."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_suite(
        tmp_path, name="all-fail", axes={"targets": [{"name": "on_policy"}], "losses": [{"name": "self_target_nll"}]}
    )
    suite = load_suite(path)
    sweep.run(suite, n_trials=1)
    out = write_report(suite, tmp_path / "results")
    df = pd.read_csv(out / "summary.csv")
    assert list(df["state"]) == ["FAIL"] and "InvalidCombination" in df["reason"][0]
    md = (out / "summary.md").read_text()
    assert "InvalidCombination" in md and "No completed configuration" in md
    assert md.count("*skipped:") == len(PLOTS)
    assert not any((out / name).exists() for name in PLOTS)
