"""The cost ledger and top-k fidelity: the arithmetic on known inputs, then a real smoke study through the CLI whose
seed and configuration runs carry `cost/*` and `topk/*` in MLflow and whose report has the cost section and plot."""

from __future__ import annotations

import contextlib
import io
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import write_suite

from harness import ledger, stores, tracking
from harness.cache import encode
from harness.cli import main
from harness.report import cost
from harness.spec import load_suite
from harness.teacher import TopKSeq

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _seq(tail_mass: list[float], k: int = 4) -> TopKSeq:
    t = len(tail_mass)
    tail = torch.tensor([math.log(m) if m > 0 else -math.inf for m in tail_mass], dtype=torch.float32)
    return TopKSeq(torch.zeros((t, k), dtype=torch.int32), torch.zeros((t, k)), tail)


def test_non_embedding_params_leave_out_the_embeddings(tiny):
    model = tiny.model
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied head once
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    untied = head.data_ptr() != emb.data_ptr()
    expected = total - emb.numel() - (head.numel() if untied else 0)
    assert ledger.non_embedding_params(model) == expected > 0


def test_topk_fidelity_from_the_stored_tail():
    masses = [0.0, 0.1, 0.2, 0.3] + [0.05] * 16
    out = ledger.topk_fidelity([_seq(masses[:4]), None, _seq(masses[4:])])
    cover = 1 - np.array(masses)
    assert out["topk/k"] == 4 and out["topk/positions"] == 20
    assert out["topk/coverage_mean"] == pytest.approx(cover.mean(), abs=1e-6)
    assert out["topk/coverage_p05"] == pytest.approx(np.quantile(cover, 0.05), abs=1e-6)
    assert out["topk/tail_mass_mean"] == pytest.approx(np.mean(masses), abs=1e-6)
    assert ledger.topk_fidelity([None, None]) == {}


def test_cache_bytes_per_token_is_the_entry_size():
    tops = [_seq([0.1] * 5, k=16), _seq([0.2] * 3, k=16)]
    got = ledger.cache_bytes_per_token(tops)
    assert got == len(encode([(t.indices, t.logprobs, t.tail) for t in tops])) / 8
    assert got > 16 * 8 + 4  # int32 id + float32 log-prob per kept token, a float32 tail, plus framing


def test_cost_metrics_follow_the_stated_formulas():
    out = ledger.cost_metrics(
        n_teacher=10,
        n_student=5,
        teacher_prompt_tokens=100,
        generated_tokens=20,
        scored_tokens=120,
        train_tokens=110,
        teacher_s=1.0,
        train_s=2.0,
        scoring_s=3.0,
        wall_s=7.5,
        peak_memory_mb=99.0,
    )
    assert out["cost/teacher_flops"] == 2 * 10 * (100 + 20 + 120)
    assert out["cost/student_flops"] == 6 * 5 * 110
    assert out["cost/total_flops"] == out["cost/teacher_flops"] + out["cost/student_flops"]
    assert out["cost/other_s"] == pytest.approx(1.5)
    assert "cost/cache_bytes_per_token" not in out
    assert ledger.combine([{"cost/a": 1.0, "cost/b": 2.0}, {"cost/a": 3.0}]) == {"cost/a": 2.0}


def test_the_ledger_cannot_shadow_a_defined_metric(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # never the checkout's
    with pytest.raises(ValueError, match="cost/... or topk/"):
        tracking.TrialRun("no-such-run").log_ledger({"heldout_kl": 1.0})


def test_low_coverage_warns_and_the_plot_marks_the_front(tmp_path):
    df = pd.DataFrame(
        {
            "trial": [0, 1, 2],
            "state": ["COMPLETE"] * 3,
            "target": ["greedy"] * 3,
            "context": ["empty"] * 3,
            "loss": ["forward_kl"] * 3,
            "validation_gap_closure": [0.1, 0.2, 0.3],
            "test_gap_closure": [0.1, 0.4, 0.3],
            "cost/total_flops": [1e9, 2e9, 4e9],
            "topk/k": [16, 16, 64],
            "topk/coverage_mean": [0.95, 0.62, 0.99],
            "topk/coverage_p05": [0.8, 0.1, 0.9],
        }
    )
    warnings = cost.coverage_warnings(df)
    assert len(warnings) == 1 and "trial 1" in warnings[0] and "0.620" in warnings[0] and "k = 16" in warnings[0]
    md = "\n".join(cost.cost_md(df, None))
    assert "## Cost" in md and "Warning" in md and f"]({cost.PLOT})" in md
    path = tmp_path / cost.PLOT
    cost.plot_quality_per_compute(df, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(cost.SkipPlot):
        cost.plot_quality_per_compute(df.drop(columns=["cost/total_flops"]), path)


@pytest.mark.slow
def test_a_study_logs_the_ledger_and_reports_it(tmp_path, monkeypatch):
    """The smoke suite (forward_kl, top_k 16) as `harness run`: the ledger on seed and configuration runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    path = write_suite(tmp_path, sweep={"n_trials": 1, "seeds": 2})
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(path), "--n-trials", "1"]) == 0
    suite = load_suite(path)
    exp_id = tracking.setup(suite)
    runs = mlflow.search_runs(experiment_ids=[exp_id])
    kind = runs["tags.harness.kind"]
    seeds, trial = runs[kind == "seed"], runs[kind == "trial"].iloc[0]
    assert len(seeds) == 2
    for _, r in seeds.iterrows():
        gen, scored = r["metrics.cost/tokens_generated"], r["metrics.cost/tokens_scored"]
        assert gen > 0 and scored > gen  # the teacher scores (c, z, ŷ), longer than ŷ
        n = r["metrics.cost/teacher_params"]
        prompts = scored - gen  # every example's top-k was read (forward_kl)
        assert r["metrics.cost/teacher_flops"] == pytest.approx(2 * n * (prompts + gen + scored))
        assert r["metrics.cost/student_flops"] == pytest.approx(
            6 * r["metrics.cost/student_params"] * r["metrics.train_tokens"]
        )
        assert r["metrics.cost/train_s"] == pytest.approx(r["metrics.train_time_s"])
        assert r["metrics.cost/teacher_s"] + r["metrics.cost/train_s"] <= r["metrics.cost/wall_s"]
        assert r["metrics.topk/k"] == 16
        assert 0 < r["metrics.topk/coverage_p05"] <= r["metrics.topk/coverage_mean"] <= 1
        assert 16 * 8 < r["metrics.cost/cache_bytes_per_token"] < 16 * 8 + 200
    both = seeds["metrics.cost/total_flops"].mean()
    assert trial["metrics.cost/total_flops"] == pytest.approx(both)  # the configuration: mean over its seeds
    out = tmp_path / "results" / suite.name
    md = (out / "summary.md").read_text()
    assert "## Cost" in md and "DistillKit" in md and f"]({cost.PLOT})" in md
    assert (out / cost.PLOT).read_bytes()[:8] == PNG_MAGIC
    assert stores.study_name(suite)
