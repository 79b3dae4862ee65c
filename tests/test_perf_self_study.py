"""`python -m harness.perf.self_study` on the tiny model: both arms run, the identity is checked, files written."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import write_suite

from harness.perf.self_study import main


@pytest.mark.slow
def test_self_study_perf_on_the_tiny_model(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    suite = write_suite(tmp_path)
    out = tmp_path / "perf"
    args = ["--suite", str(suite), "--prompts", "3", "--max-new-tokens", "6", "--repeats", "1"]
    args += ["--student-repeats", "1", "--student-inputs", "4", "--top-k", "4", "--out", str(out)]
    assert main(args) == 0
    md = (out / "self_study.md").read_text()
    assert "- Command: `python -m harness.perf.self_study --suite" in md and "Load average" in md and "git commit" in md
    assert "3 of 3 rows token-identical; the study's cache holds no entry for this request" in md
    df = pd.read_csv(out / "self_study.csv")
    assert list(df["arm"]) == [
        "self-study generate: plain",
        "self-study generate: prefix reuse",
        "c = demonstrations only",
        "c = the suite's full context",
    ]
    assert (df["median_s"] > 0).all() and df["ratio"].notna().sum() == 2
    short, full = df["teacher prompt shared tokens"].iloc[2:]
    assert full > short  # the full c is the longer teacher context; the student prompts are the same
    assert df["student prompt tokens (mean)"].iloc[2] == df["student prompt tokens (mean)"].iloc[3]


def test_self_study_perf_bad_suite_is_one_line(tmp_path, capsys):
    assert main(["--suite", str(tmp_path / "missing.yaml")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
