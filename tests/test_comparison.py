"""The report's comparison, forest plot and cross-task benchmark on synthetic per-item scores (no study needed)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import write_suite

from harness import aggregate, stats, stores
from harness.report import benchmark, comparison, plots
from harness.spec import SuiteError, load_suite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N = 60


def _scores(student_p: float, rng: np.random.Generator, seeds=(0, 1, 2)) -> dict:
    teacher = {i: float(i % 10 < 9) for i in range(N)}  # 0.9
    baseline = {i: float(i % 10 < 1) for i in range(N)}  # 0.1
    students = {str(s): {str(i): float(rng.random() < student_p) for i in range(N)} for s in seeds}
    keyed = lambda d: {str(k): v for k, v in d.items()}  # noqa: E731
    split = {"note": "", "teacher": keyed(teacher), "baseline": keyed(baseline), "student": students}
    return {"format": aggregate.FORMAT, "metric": "acc", "seeds": list(seeds), "splits": {"test": split}}


@pytest.fixture
def study_frame():
    """Four completed configurations and a failed one, as trial_table gives them, and their item scores."""
    rng = np.random.default_rng(0)
    rows = [  # trial, context, lr, validation gap closure, test student accuracy
        (0, "empty", 1e-4, 0.70, 0.5),
        (1, "empty", 1e-3, 0.40, 0.85),  # the best on test, not on validation
        (2, "tag", 1e-4, 0.65, 0.5),
        (3, "tag", 1e-3, 0.20, 0.15),
    ]
    df = pd.DataFrame(
        {
            "trial": [r[0] for r in rows] + [4],
            "state": ["COMPLETE"] * 4 + ["FAIL"],
            "run_id": [f"run{r[0]}" for r in rows] + ["run4"],
            "target": "greedy",
            "context": [r[1] for r in rows] + ["tag"],
            "loss": "forward_kl",
            "hp.learning_rate": [r[2] for r in rows] + [1e-2],
            "hp.epochs": 2,
            "validation_gap_closure": [r[3] for r in rows] + [np.nan],
            "context_tokens_saved": [100.0, 100.0, 90.0, 90.0, np.nan],
        }
    )
    scores = {f"run{t}": _scores(p, rng) for t, _, _, _, p in rows}
    return df, scores


def test_labels_name_axes_and_varying_hyperparameters(study_frame):
    df, _ = study_frame
    labels = comparison.labels(df)
    assert labels[0] == "greedy / empty / forward_kl, learning_rate=0.0001"  # epochs is fixed: not in the label
    twice = pd.concat([df.iloc[[0]], df.iloc[[0]].assign(trial=7)], ignore_index=True)
    assert list(comparison.labels(twice)) == [
        "greedy / empty / forward_kl #0",
        "greedy / empty / forward_kl #7",
    ]


def test_compare_references_the_validation_best(tmp_path, study_frame):
    df, scores = study_frame
    suite = load_suite(write_suite(tmp_path, evaluation={"bootstrap": 500}))
    c = comparison.compare(suite, df, scores)
    t = c.table
    assert list(t["trial"]) == [0, 2, 1, 3]  # validation rank, failed trial left out
    assert t.loc[0, "verdict"] == "best" and t.attrs["best"].startswith("greedy / empty")
    verdicts = dict(zip(t["trial"], t["verdict"], strict=True))
    assert verdicts[1] == "better" and verdicts[3] == "worse"  # the test winner is reported, not chosen
    assert c.seeds == [0, 1, 2] and c.items == N and c.statistic == "gap_closure" and c.fallback is None
    assert c.sentence == stats.summary_sentence(t)
    assert c.references["teacher"].estimate == pytest.approx(0.9)
    assert set(c.references["baselines"]) == {"empty", "tag"}
    plots.plot_forest(t, tmp_path / "forest.png")
    assert (tmp_path / "forest.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(plots.SkipPlot):
        plots.plot_forest(None, tmp_path / "none.png")


def test_undefined_test_gap_falls_back_to_the_student_score(tmp_path, study_frame):
    df, scores = study_frame
    for s in scores.values():
        s["splits"]["test"]["baseline"] = s["splits"]["test"]["teacher"]  # no gap on test
    suite = load_suite(write_suite(tmp_path, evaluation={"bootstrap": 200}))
    c = comparison.compare(suite, df, scores)
    assert c.statistic == "score" and "gap closure is undefined on test" in c.fallback
    assert c.table.loc[0, "test"] == pytest.approx(
        np.mean(list(scores["run0"]["splits"]["test"]["student"]["0"].values())), abs=0.1
    )


def test_nothing_to_compare(tmp_path, study_frame):
    df, _ = study_frame
    suite = load_suite(write_suite(tmp_path))
    assert comparison.compare(suite, df, {}) is None


def test_benchmark_table_and_headline():
    t1 = pd.DataFrame(
        {
            "configuration": ["A", "B", "C"],
            "test": [0.9, 0.5, 0.7],
            "verdict": ["best", "worse", "tie"],
            "p_holm": [np.nan, 0.01, 0.4],
        }
    )
    t2 = pd.DataFrame(
        {
            "configuration": ["A", "B", "C"],
            "test": [0.8, 0.6, 0.2],
            "verdict": ["tie", "best", "worse"],
            "p_holm": [0.3, np.nan, 0.02],
        }
    )
    tables = {"plural": t1, "dates": t2}
    agg = stats.aggregate_tasks(tables, n_boot=200)
    line = benchmark.headline(agg)
    assert line.startswith("`A` has the best mean test rank across 2 tasks: 1.00")
    md = benchmark.benchmark_md(agg, tables)
    assert "| A | 2 | 1.00 [1.00, 1.00] | 1 – 1 | best | tie |" in md
    assert "- [`dates`](dates/summary.md): B is best on validation" in md


def test_benchmark_needs_distinct_suite_names(tmp_path):
    suite = load_suite(write_suite(tmp_path))
    with pytest.raises(SuiteError, match="share a name"):
        benchmark.write_benchmark([suite, suite], tmp_path / "out")


def test_benchmark_headline_names_every_configuration_tied_for_the_best_rank():
    """Two configurations with the same mean rank: the line names both (a sort order must not pick one)."""
    t1 = pd.DataFrame({"configuration": ["A", "B", "C"], "test": [0.9, 0.8, 0.1], "verdict": ["best", "tie", "worse"]})
    t2 = pd.DataFrame({"configuration": ["A", "B", "C"], "test": [0.7, 0.8, 0.1], "verdict": ["tie", "best", "worse"]})
    agg = stats.aggregate_tasks({"one": t1, "two": t2}, n_boot=200)
    line = benchmark.headline(agg)
    assert line.startswith("`A` and `B` tie for the best mean test rank across 2 tasks: 1.50") or line.startswith(
        "`B` and `A` tie for the best mean test rank across 2 tasks: 1.50"
    )
    assert line.endswith("the rank intervals of 0 of the 1 others overlap theirs.")


def _ledger_frame(flops: list[float] | None) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "trial": [0, 1, 2],
            "state": ["COMPLETE"] * 3,
            "target": ["greedy"] * 3,
            "context": ["empty"] * 3,
            "loss": ["forward_kl", "self_target_nll", "jsd"],
            "validation_gap_closure": [0.1, 0.2, 0.3],
            "test_gap_closure": [0.1, 0.4, 0.3],
        }
    )
    return df if flops is None else df.assign(**{"cost/total_flops": flops})


def test_benchmark_quality_per_compute_plot_and_front(tmp_path):
    """A suite with a ledger gets a panel and its front named; one run before the ledger gets a skip note."""
    frames = {"ruled": _ledger_frame([1e9, 2e9, 4e9]), "old": _ledger_frame(None)}
    path = tmp_path / benchmark.COMPUTE_PLOT
    lines = benchmark.compute_md(frames, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    md = "\n".join(lines)
    assert f"![quality per compute]({benchmark.COMPUTE_PLOT})" in md
    # trial 2 (4e9 FLOPs, 0.3) is beaten by trial 1 (2e9, 0.4): the front is trials 0 and 1, by FLOPs
    assert "- `ruled`: #0 `greedy / empty / forward_kl` (1.00e+09 FLOPs, 0.100); #1 `greedy / empty / " in md
    assert "#2" not in md.split("- `ruled`:")[1].split("\n")[0]
    assert "- `old`: *skipped: no completed configuration with a cost ledger" in md
    table = pd.DataFrame({"configuration": ["A"], "test": [0.5], "verdict": ["best"]})
    agg = stats.aggregate_tasks({"ruled": table, "old": table}, n_boot=50)
    assert "## Quality per compute" in benchmark.benchmark_md(agg, {"ruled": table, "old": table}, lines)


def test_benchmark_without_any_ledger_writes_no_plot(tmp_path):
    path = tmp_path / benchmark.COMPUTE_PLOT
    path.write_bytes(b"stale")
    lines = benchmark.compute_md({"a": _ledger_frame(None), "b": _ledger_frame([np.nan] * 3)}, path)
    assert not path.exists()
    assert sum("*skipped: no completed configuration with a cost ledger" in x for x in lines) == 2
    assert not any("![" in x for x in lines)


def test_benchmark_keeps_a_committed_report_of_the_same_study(tmp_path, monkeypatch):
    """Studies run on another machine: their committed reports enter the table as they are, said so; a report
    of another study (the suite changed since) does not, and the suite needs running."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    suites = [load_suite(write_suite(tmp_path, name=n)) for n in ("alpha", "beta")]
    out = tmp_path / "out"
    for suite, flops in zip(suites, ([1e9, 2e9, 4e9], None), strict=True):
        folder = out / suite.name
        folder.mkdir(parents=True)
        prov = {"study": stores.study_name(suite), "git_commit_trials": ["abc1234def"], "git_commit_report": "fed4321"}
        (folder / "provenance.json").write_text(json.dumps(prov))
        _ledger_frame(flops).to_csv(folder / "summary.csv", index=False)
        pd.DataFrame(
            {"configuration": ["A", "B"], "test": [0.9, 0.5], "verdict": ["best", "worse"], "p_holm": [np.nan, 0.01]}
        ).to_csv(folder / "comparison.csv", index=False)
    benchmark.write_benchmark(suites, out)
    md = (out / "benchmark.md").read_text()
    assert f"- `alpha`: report of study `{stores.study_name(suites[0])}` kept from `alpha/` (trials at commit" in md
    assert "abc1234, report at fed4321)" in md
    assert "| A | 2 | 1.00 [1.00, 1.00] | 1 – 1 | best | best |" in md
    assert (out / benchmark.COMPUTE_PLOT).read_bytes()[:8] == PNG_MAGIC
    assert "- `beta`: *skipped: no completed configuration with a cost ledger" in md
    (out / "beta" / "provenance.json").write_text(json.dumps({"study": "beta-000000000000"}))
    with pytest.raises(SuiteError, match="no trials recorded for suite 'beta'"):
        benchmark.write_benchmark(suites, out)


def test_benchmark_headline_says_when_the_best_ran_on_fewer_tasks():
    """A configuration ranked first on the one task it ran on: the line counts its tasks, not the table's."""
    t1 = pd.DataFrame({"configuration": ["A", "B"], "test": [0.9, 0.5], "verdict": ["best", "worse"]})
    t2 = pd.DataFrame({"configuration": ["B", "C"], "test": [0.8, 0.1], "verdict": ["best", "worse"]})
    t3 = pd.DataFrame({"configuration": ["B", "C"], "test": [0.2, 0.3], "verdict": ["tie", "best"]})
    agg = stats.aggregate_tasks({"one": t1, "two": t2, "three": t3}, n_boot=200)
    assert benchmark.headline(agg).startswith("`A` has the best mean test rank across the 1 of 3 tasks it ran on: 1.00")


def test_benchmark_matches_the_default_inputs_source_with_a_suite_that_does_not_sweep_inputs():
    """`... / train_split` (a suite sweeping inputs) and the label without it (one that does not) are one
    configuration in the cross-task table; other sources, hyperparameters and #trial suffixes are untouched."""
    swept = pd.DataFrame(
        {
            "configuration": [
                "greedy / empty / nll / train_split",
                "greedy / empty / nll / train_split, learning_rate=0.001",
                "greedy / empty / nll / train_split #3",
                "greedy / empty / nll / self_study",
                "greedy / empty / nll / train_split_x",
            ]
        }
    )
    got = benchmark.same_default_inputs(swept)["configuration"].tolist()
    assert got == [
        "greedy / empty / nll",
        "greedy / empty / nll, learning_rate=0.001",
        "greedy / empty / nll #3",
        "greedy / empty / nll / self_study",
        "greedy / empty / nll / train_split_x",
    ]
    assert swept["configuration"][0].endswith("train_split"), "the suite's own table is left as it is"
    t1 = pd.DataFrame({"configuration": ["greedy / empty / nll"], "test": [0.9], "verdict": ["best"]})
    t2 = benchmark.same_default_inputs(
        pd.DataFrame(
            {
                "configuration": ["greedy / empty / nll / train_split", "greedy / empty / nll / self_study"],
                "test": [0.8, 0.1],
                "verdict": ["best", "worse"],
            }
        )
    )
    agg = stats.aggregate_tasks({"a": t1, "b": t2}, n_boot=50)
    row = agg.set_index("configuration").loc["greedy / empty / nll"]
    assert row["tasks"] == 2
