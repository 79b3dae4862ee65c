"""`python -m harness.perf.topk_gap` on the tiny model: both parts run and their figures obey the bounds."""

from __future__ import annotations

import pandas as pd

from harness.perf.topk_gap import main


def test_topk_gap_on_the_tiny_model(tmp_path):
    out = tmp_path / "perf"
    args = ["--model", "tiny-random", "--inputs", "4", "--demos", "2", "--k", "2", "8"]
    args += ["--heldout-inputs", "4", "--train-inputs", "8", "--epochs", "1", "--out", str(out)]
    assert main(args) == 0
    gap = pd.read_csv(out / "topk_gap.csv")
    assert list(gap["k"]) == [2, 8]
    # the k+1-bucket KL is a lower bound of the full one; kept mass grows with k
    assert (gap["topk_tail_kl"] <= gap["full_kl"] + 1e-6).all()
    assert gap["coverage_mean"].is_monotonic_increasing and gap["coverage_mean"].between(0, 1).all()
    held = pd.read_csv(out / "topk_heldout.csv")
    assert list(held["k"]) == [2, 8] and held.select_dtypes("number").notna().all().all()
    assert (held["trained_full_kl"] < held["untrained_full_kl"]).all(), "training moves the student to the teacher"
    assert (held["trained_topk_tail_kl"] <= held["trained_full_kl"] + 1e-6).all()
    md = (out / "topk_gap.md").read_text()
    assert "Command: `python -m harness.perf.topk_gap --model tiny-random" in md
