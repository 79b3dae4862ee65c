"""c's KV cache for on-policy scoring goes through the teacher cache (`teacher.prefix`): a study's first trial
prefills c, the others read it, with the same losses as prefilling it in every trial."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from helpers import parity_prompts, settings

from harness import generation, teacher
from harness.cache import Store
from harness.train import Example, OnPolicy, train

N = 8


@pytest.fixture(scope="module")
def prompts(tiny, parity) -> tuple[list[list[int]], list[list[int]]]:
    tok = tiny.tokenizer
    t_prompts, s_prompts, _ = parity_prompts(tok, parity, N)
    return t_prompts, s_prompts


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Prefix lengths the real `generation._prefill` ran on (a spy; it computes what it always does)."""
    calls: list[int] = []
    real = generation._prefill

    def counting(model, prefix):
        calls.append(len(prefix))
        return real(model, prefix)

    monkeypatch.setattr(generation, "_prefill", counting)
    return calls


def test_the_cached_prefix_is_prefill_read_back(tiny, prompts, tmp_path, counted):
    t_prompts, _ = prompts
    store = Store(tmp_path)
    fresh = generation.prefill(tiny.model, t_prompts)
    first = teacher.prefix(store, tiny, t_prompts)
    again = teacher.prefix(store, tiny, t_prompts)
    assert fresh is not None and first is not None and again is not None
    assert first.tokens == again.tokens == fresh.tokens
    assert (store.misses, store.hits) == (1, 1) and len(counted) == 2  # `fresh` and the miss; the hit prefills none
    for (k0, v0), (k1, v1), (k2, v2) in zip(fresh.kv, first.kv, again.kv, strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1) and torch.equal(k0, k2) and torch.equal(v0, v2)
    assert teacher.prefix(store, tiny, [[1, 2, 3], [4, 5, 6]]) is None  # no shared prefix: nothing stored
    assert store.misses == 1


def test_trials_reading_the_cached_prefix_train_as_prefilling_it(tiny, prompts, tmp_path, counted):
    t_prompts, s_prompts = prompts
    items = [Example(p, [], None, tp) for p, tp in zip(s_prompts, t_prompts, strict=True)]
    cfg = settings(learning_rate=3e-3, epochs=1, batch_size=4, warmup_ratio=0.0, scheduler="constant")
    store = Store(tmp_path)
    shared = generation.common_prefix_length(t_prompts)

    def trial(prefill=None) -> list[float]:
        op = OnPolicy(
            mix=1.0,
            teacher=tiny.model,
            max_new_tokens=6,
            stop_strings=("\n",),
            tokenizer=tiny.tokenizer,
            top_k=16,
            prefill=prefill,
        )
        student = copy.deepcopy(tiny.model).float()
        return train(student, items, "forward_kl", {}, cfg, pad_id=tiny.tokenizer.pad_token_id, on_policy=op).losses

    plain = trial()
    assert sum(n >= shared for n in counted) == 1
    cached = functools.partial(teacher.prefix, store, tiny)
    cold, warm = trial(cached), trial(cached)
    assert sum(n >= shared for n in counted) == 2  # the cold trial prefilled c; the warm one read it
    assert (store.misses, store.hits) == (1, 1)
    assert len(plain) == len(cold) == len(warm) == 2
    torch.testing.assert_close(torch.tensor(cold), torch.tensor(plain), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(warm), torch.tensor(plain), rtol=0, atol=1e-5)
