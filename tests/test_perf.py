"""`python -m harness.perf` on the tiny model: the benchmark runs end to end and its checks can fail."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from helpers import SUITES

from harness.perf.cli import main
from harness.perf.stepping import SteppedTrain
from harness.perf.teacher_arms import topk_equal
from harness.perf.timing import Timing, interleave, ratio
from harness.teacher import TopKSeq


def _seq(idx, lp):
    return TopKSeq(torch.tensor([idx], dtype=torch.int32), torch.tensor([lp]), torch.tensor([-3.0]))


def test_topk_equal_accepts_only_ties_at_the_kth_place():
    a = _seq([4, 7, 9], [-0.5, -1.0, -2.0])
    assert topk_equal(a, _seq([4, 7, 9], [-0.5, -1.0 + 5e-6, -2.0]), 1e-5)
    assert not topk_equal(a, _seq([4, 7, 9], [-0.5, -1.001, -2.0]), 1e-5)
    assert topk_equal(a, _seq([4, 7, 11], [-0.5, -1.0, -2.0]), 1e-5)  # 9 and 11 tie at the k-th place
    assert not topk_equal(a, _seq([4, 11, 9], [-0.5, -1.0, -2.0]), 1e-5)  # a different token, no tie


def test_ratio_is_paired_per_repeat():
    num, den = Timing("a", [2.0, 30.0, 4.0]), Timing("b", [1.0, 10.0, 1.0])
    assert ratio(num, den) == (3.0, 2.0, 4.0, 2.0)


@pytest.mark.slow
def test_interleave_rotates_the_order_every_round():
    seen: list[str] = []
    calls = {n: (lambda n=n: seen.append(n) or len(seen)) for n in "abc"}
    out = interleave(calls, 3)
    assert seen == list("abcbcacab")
    assert out == {"a": [1, 6, 8], "b": [2, 4, 9], "c": [3, 5, 7]}


def test_perf_cli_on_the_tiny_model(tmp_path):
    out = tmp_path / "perf"
    argv = ["--model", "tiny-random", "--parts", "topk,generate,lmeval", "--demos", "8", "--prompts", "4"]
    argv += ["--teacher-repeats", "2", "--lmeval-limit", "6", "--lmeval-repeats", "1", "--out", str(out)]
    argv += ["--suite", str(SUITES / "quickstart.yaml")]
    assert main(argv) == 0
    goals = pd.read_csv(out / "ratios.csv")
    assert len(goals) == 3 and set(goals["met"]) <= {"yes", "NO", "—"}
    assert (goals["repeats"] >= 1).all() and (goals["ratio (median)"] > 0).all()
    arms = pd.read_csv(out / "perf.csv")
    assert {"generate: plain", "generate: prefix reuse", "top-k: plain", "top-k: prefix reuse"} <= set(arms["arm"])
    text = (out / "perf.md").read_text()
    assert "Command: `python -m harness.perf --model tiny-random" in text and "Load average" in text
    assert (out / "ratios.png").stat().st_size > 1000


def test_perf_cli_bad_suite_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    code = main(["--model", "tiny-random", "--parts", "lmeval", "--suite", str(bad), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("harness.perf: error:") and "\n" not in err


def test_stepped_train_runs_exactly_the_steps_asked(tiny):
    import copy

    from harness.train import Example

    ex = [Example([1, 5, 6, 7, 8], [9, 10]) for _ in range(12)]
    student = copy.deepcopy(tiny.model)
    before = [p.clone() for p in student.parameters()]
    stepper = SteppedTrain(student, ex, "self_target_nll", 0, total=5, batch_size=4)  # 3 batches per epoch
    times = [stepper.step() for _ in range(5)]
    assert all(t > 0 for t in times) and stepper.done_steps == 5
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    with pytest.raises(RuntimeError, match="no steps left"):
        stepper.step()
