"""lm-eval's `hf-prefix-reuse` model (harness/lm.py) attends to one batch-1 cache of the shared prefix (the
`shared_prefix` attention, no per-row copy) and gives plain HFLM's log-likelihoods (1e-5) and generations."""

from __future__ import annotations

import pytest
import torch
from helpers import CAPITAL_QUERIES, capital_messages, sharp_tiny
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from harness import generation, shared_prefix
from harness.lm import PrefixReuseLM

QUERIES = CAPITAL_QUERIES


@pytest.fixture(scope="module")
def tiny():
    return sharp_tiny()


@pytest.fixture(scope="module")
def contexts(tiny) -> list[str]:
    msgs = capital_messages([("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Chad", "N'Djamena")])
    tok = tiny.tokenizer
    return [
        tok.apply_chat_template(msgs + [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in QUERIES
    ]


@pytest.fixture
def shared_only(monkeypatch):
    """Counts model calls through the shared-prefix attention and fails any per-row copy of the prefix."""
    calls = {"shared": 0}
    real = shared_prefix.attention

    def counting(module, *args, **kwargs):
        if shared_prefix._ACTIVE.get() is not None:
            calls["shared"] += 1
        return real(module, *args, **kwargs)

    def no_copy(*args, **kwargs):
        raise AssertionError("the prefix was copied into every row")

    monkeypatch.setitem(shared_prefix.AttentionInterface._global_mapping, shared_prefix.NAME, counting)
    monkeypatch.setattr(generation, "_expand_cache", no_copy)
    return calls


def test_loglikelihoods_through_the_shared_prefix_equal_hflm(tiny, contexts, shared_only):
    tok = tiny.tokenizer
    pairs = [(c, cont) for c in contexts for cont in (" Paris", " B", " Rome x", " Berlin and Bonn")]
    reqs = [Instance("loglikelihood", {}, pair, idx=i) for i, pair in enumerate(pairs)]
    plain = HFLM(pretrained=tiny.model, tokenizer=tok, batch_size=5).loglikelihood(reqs, disable_tqdm=True)
    lm = PrefixReuseLM(pretrained=tiny.model, tokenizer=tok, batch_size=5)
    reused = lm.loglikelihood(reqs, disable_tqdm=True)
    assert lm.prefix_hits >= len(reqs) // 5 and shared_only["shared"] > 0
    assert tiny.model.config._attn_implementation != shared_prefix.NAME  # restored after every call
    assert [g for _, g in reused] == [g for _, g in plain]
    # fp32 sums of up to ~140 nats: on this model plain HFLM is 2.6e-5 from an fp64 run of it and the shared-prefix
    # path 3.6e-5 (measured once); so 1e-5 absolute + 1e-5 relative, as torch.allclose(rtol=atol=1e-5)
    want = torch.tensor([v for v, _ in plain], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor([v for v, _ in reused], dtype=torch.float64), want, atol=1e-5, rtol=1e-5)
    assert want.std() > 0.1  # different requests, different numbers


def test_generations_through_the_shared_prefix_equal_hflm(tiny, contexts, shared_only):
    tok = tiny.tokenizer
    args = [{"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}, {"until": ["e"], "max_gen_toks": 6}]
    reqs = [Instance("generate_until", {}, (c, args[i % 2]), idx=i) for i, c in enumerate(contexts)]
    plain = HFLM(pretrained=tiny.model, tokenizer=tok, batch_size=3).generate_until(reqs, disable_tqdm=True)
    lm = PrefixReuseLM(pretrained=tiny.model, tokenizer=tok, batch_size=3)
    reused = lm.generate_until(reqs, disable_tqdm=True)
    assert lm.prefix_hits > 0 and shared_only["shared"] > 0
    assert reused == plain
    assert len(set(plain)) > 2 and any(len(g) > 3 for g in plain)  # real, differing generations: not vacuous
