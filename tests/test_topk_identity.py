"""The perf arms' top-k identity check (`teacher_arms.topk_equal`) tells fp32 rounding from a wrong prefix: the
prefix-reuse top-k passes against plain scoring, and the same path over a prefix shifted by one token (or prefilled
at positions off by one) fails, on the tiny model."""

from __future__ import annotations

import pytest
import torch
from helpers import sharp_tiny
from transformers import DynamicCache

from harness import generation
from harness.perf import workload
from harness.perf.teacher_arms import TOPK_LOGPROB_TOL, max_diff, topk_equal

K = 16


@pytest.fixture(scope="module")
def tiny():
    return sharp_tiny()


@pytest.fixture(scope="module")
def work(tiny):
    prompts = workload.teacher_prompts(tiny.tokenizer, 6, workload.queries(7))
    assert generation._usable_prefix(prompts, True) >= generation.MIN_SHARED_PREFIX
    tgts = workload.targets(tiny, prompts, 3)
    assert all(tgts)
    plain = workload.topk(tiny, prompts, tgts, 3, K, reuse=False)
    return prompts, tgts, plain


def _wrong_prefill(kind: str):
    real = generation._prefill

    def prefill(model, prefix):
        if kind == "shifted":  # the prefix one token late: [x0, x0, x1, ..., x_{P-2}]
            return real(model, [prefix[0], *prefix[:-1]])
        ids = torch.tensor([list(prefix)], device=model.device)  # right tokens, positions 1..P instead of 0..P-1
        pos = torch.arange(1, len(prefix) + 1, device=model.device)[None]
        out = model(input_ids=ids, position_ids=pos, past_key_values=DynamicCache(config=model.config), use_cache=True)
        return [(k, v) for k, v, *_ in out.past_key_values]

    return prefill


def test_the_reuse_path_passes_the_check(tiny, work):
    prompts, tgts, plain = work
    reused = workload.topk(tiny, prompts, tgts, 3, K, reuse=True)
    assert all(topk_equal(a, b) for a, b in zip(plain, reused, strict=True))
    assert max_diff(plain, reused) < TOPK_LOGPROB_TOL / 4


@pytest.mark.parametrize("kind", ["shifted", "positions"])
def test_a_wrong_prefix_fails_the_check(tiny, work, monkeypatch, kind):
    prompts, tgts, plain = work
    monkeypatch.setattr(generation, "_prefill", _wrong_prefill(kind))
    wrong = workload.topk(tiny, prompts, tgts, 3, K, reuse=True)
    failed = [i for i, (a, b) in enumerate(zip(plain, wrong, strict=True)) if not topk_equal(a, b)]
    assert len(failed) == len(prompts)  # every row, not one by chance


def test_only_near_ties_at_the_kth_place_may_swap():
    from harness.teacher import TopKSeq

    def seq(idx, lp, tail=-3.0):
        return TopKSeq(torch.tensor([idx], dtype=torch.int32), torch.tensor([lp]), torch.tensor([tail]))

    tol = TOPK_LOGPROB_TOL
    a = seq([4, 7, 9], [-0.5, -1.0, -2.0])
    assert topk_equal(a, seq([7, 4, 9], [-1.0, -0.5, -2.0 + tol / 2]))  # by token, within tol
    assert topk_equal(a, seq([4, 7, 11], [-0.5, -1.0, -2.0 - tol / 2], -3.0 + tol))  # 9, 11 tie at the k-th place
    assert not topk_equal(a, seq([4, 7, 11], [-0.5, -1.0, -2.0 - 2 * tol]))  # 9 is above the other k-th: no tie
    assert not topk_equal(a, seq([4, 7, 9], [-0.5, -1.0 - 2 * tol, -2.0]))
    assert not topk_equal(a, seq([4, 7, 9], [-0.5, -1.0, -2.0], -3.0 + 2 * tol))  # the tail moved
