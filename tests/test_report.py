"""The report reads a real study (tiny model, parity task, Optuna + MLflow on SQLite) back into files.

No fakes: a two-trial smoke study runs once per module (~25 s on 2 CPU cores) and the
report must agree with what MLflow and Optuna hold.
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

from harness import stores, sweep, tracking
from harness.cli import main
from harness.report.provenance import PACKAGES
from harness.report.write import PLOTS, write_report
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
    for name in ("summary.csv", "summary.md", "provenance.json", *PLOTS):
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
        "gap_closure",
        "student_score",
        "context_tokens_saved",
        "train_tokens",
        "wall_time_s",
        "git.commit",
    ):
        assert col in df.columns, col
    assert not any(c.startswith(("params.", "metrics.")) for c in df.columns)
    assert set(df["context"]) == {"empty", "fewer_demos(k=1)"}


@pytest.mark.slow
def test_gap_closure_matches_the_arm_scores(study):
    df = pd.read_csv(study["out"] / "summary.csv")
    ok = df[np.isfinite(df["gap_closure"])]
    assert len(ok) >= 1
    expected = (ok["student_score"] - ok["baseline_score"]) / (ok["teacher_score"] - ok["baseline_score"])
    assert np.allclose(ok["gap_closure"], expected)


@pytest.mark.slow
def test_summary_md_names_suite_hash_and_best_configuration(study):
    md = (study["out"] / "summary.md").read_text()
    suite = study["suite"]
    assert suite.content_hash() in md
    assert "## Best configuration" in md
    df = pd.read_csv(study["out"] / "summary.csv")
    best = df.loc[df["gap_closure"].idxmax()]
    assert f"Trial **#{best['trial']}**" in md
    for section in (
        "## Reference scores",
        "### target",
        "### context",
        "### loss",
        "## All trials",
        "## Failed and pruned trials",
    ):
        assert section in md, section
    for name in PLOTS:
        assert f"]({name})" in md, name


@pytest.mark.slow
def test_plots_are_valid_pngs(study):
    for name in PLOTS:
        data = (study["out"] / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), name


@pytest.mark.slow
def test_provenance_json(study):
    prov = json.loads((study["out"] / "provenance.json").read_text())
    suite = study["suite"]
    assert prov["suite"] == "smoke" and prov["suite_hash"] == suite.content_hash()
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
    assert "InvalidCombination" in md and "No completed trial" in md
    assert md.count("*skipped:") == len(PLOTS)
    assert not any((out / name).exists() for name in PLOTS)
