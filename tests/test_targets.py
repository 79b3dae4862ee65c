"""Generation, scoring and target strategies on the tiny random model (fast, CPU)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from helpers import CAPITAL_QUERIES, capital_messages, sharpen

from harness import generation, targets, teacher
from harness.cache import Store

MAX_NEW = 12


@pytest.fixture(scope="module")
def sharp_tiny(tiny):
    """A copy of the session's tiny model with larger random weights, so outputs depend on the prompt and
    sometimes hit eos; its own fingerprint keeps it apart from `tiny` in any cache."""
    model = sharpen(copy.deepcopy(tiny.model), seed=0)
    return dataclasses.replace(tiny, name="tiny-random-sharp", model=model, fingerprint=tiny.fingerprint + "-sharp")


@pytest.fixture(scope="module")
def prompts(sharp_tiny):
    """Teacher-style prompts: a long shared context (instruction + demo turns) then different inputs."""
    tok = sharp_tiny.tokenizer
    context = capital_messages([("France", "Paris")])
    queries = CAPITAL_QUERIES[:6]
    return [
        list(
            tok.apply_chat_template(
                context + [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for q in queries
    ]


def _manual_logprob(model, prompt, cont):
    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return float(lp[len(prompt) - 1 :].sum())


def test_prompts_share_a_long_prefix(prompts):
    assert generation.common_prefix_length(prompts) >= generation.MIN_SHARED_PREFIX
    assert len({len(p) for p in prompts}) > 1  # suffixes differ in length: padding is exercised


def test_batched_greedy_equals_one_by_one(sharp_tiny, prompts):
    kw = dict(max_new_tokens=MAX_NEW, reuse_prefix=False)
    batched = generation.generate(sharp_tiny.model, sharp_tiny.tokenizer, prompts, batch_size=4, **kw)
    single = [generation.generate(sharp_tiny.model, sharp_tiny.tokenizer, [p], **kw)[0] for p in prompts]
    assert batched == single
    assert len({tuple(b[0]) for b in batched}) > 1  # the check is not vacuous


@pytest.mark.slow
def test_reuse_prefix_equals_no_reuse(sharp_tiny, prompts):
    kw = dict(max_new_tokens=MAX_NEW, batch_size=4)
    for extra in ({}, {"num_beams": 3}, {"do_sample": True, "num_return_sequences": 2, "seed": 3}):
        plain = generation.generate(sharp_tiny.model, sharp_tiny.tokenizer, prompts, reuse_prefix=False, **kw, **extra)
        reused = generation.generate(sharp_tiny.model, sharp_tiny.tokenizer, prompts, reuse_prefix=True, **kw, **extra)
        assert plain == reused, extra


def test_stop_string_cut_and_eos_appended(sharp_tiny, prompts):
    tok = sharp_tiny.tokenizer
    full = generation.generate(sharp_tiny.model, tok, prompts, max_new_tokens=MAX_NEW)
    stop = tok.decode(full[0][0][3:4])  # a character the first answer is known to produce
    cut = generation.generate(sharp_tiny.model, tok, prompts, max_new_tokens=MAX_NEW, stop_strings=(stop,))
    eos = tok.eos_token_id
    for f, c in zip(full, cut, strict=True):
        text = tok.decode([t for t in f[0] if t != eos], skip_special_tokens=False)
        if stop in text:
            assert c[0] == tok(text[: text.index(stop)], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        else:
            assert c[0] == f[0]
    assert len(cut[0][0]) <= 4 and cut[0][0][-1] == eos


def test_sequence_logprobs_matches_manual(sharp_tiny, prompts):
    conts = [[10 + i, 20, 30 + i][: 1 + i % 3] for i in range(len(prompts))] + [[]]
    ps = prompts + [prompts[0]]
    want = [_manual_logprob(sharp_tiny.model, p, c) if c else 0.0 for p, c in zip(ps, conts, strict=True)]
    for reuse in (False, True):
        got = generation.sequence_logprobs(sharp_tiny.model, ps, conts, batch_size=3, reuse_prefix=reuse)
        assert got == pytest.approx(want, abs=1e-5)


def _select(sharp_tiny, prompts, name, params=None, seed=0, references=None):
    return targets.select_targets(
        name,
        params or {},
        sharp_tiny.model,
        sharp_tiny.tokenizer,
        prompts,
        references,
        max_new_tokens=MAX_NEW,
        batch_size=4,
        seed=seed,
    )


@pytest.mark.parametrize("name", ["greedy", "beam", "sample", "best_of", "on_policy"])
def test_strategies_return_finished_targets(sharp_tiny, prompts, name):
    out = _select(sharp_tiny, prompts, name)
    eos = sharp_tiny.tokenizer.eos_token_id
    assert len(out) == len(prompts)
    for t in out:
        assert t and (t[-1] == eos or len(t) == MAX_NEW)
        assert eos not in t[:-1]


def test_greedy_and_on_policy_agree(sharp_tiny, prompts):
    assert _select(sharp_tiny, prompts, "on_policy") == _select(sharp_tiny, prompts, "greedy")
    assert targets.TARGETS["on_policy"].uses_student and not targets.TARGETS["greedy"].uses_student


def test_sampling_is_seeded(sharp_tiny, prompts):
    a = _select(sharp_tiny, prompts, "sample", seed=1)
    assert a == _select(sharp_tiny, prompts, "sample", seed=1)
    assert a != _select(sharp_tiny, prompts, "sample", seed=2)


def test_best_of_picks_max_logprob(sharp_tiny, prompts):
    n, seed = 3, 5
    picked = _select(sharp_tiny, prompts, "best_of", {"n": n}, seed=seed)
    cands = generation.generate(
        sharp_tiny.model,
        sharp_tiny.tokenizer,
        prompts,
        max_new_tokens=MAX_NEW,
        batch_size=4,
        do_sample=True,
        temperature=1.0,
        top_p=0.95,
        num_return_sequences=n,
        seed=seed,
    )
    for p, cs, pick in zip(prompts, cands, picked, strict=True):
        scores = [_manual_logprob(sharp_tiny.model, p, c) for c in cs]
        assert pick in cs
        assert _manual_logprob(sharp_tiny.model, p, pick) == pytest.approx(max(scores), abs=1e-5)
    assert any(len({tuple(c) for c in cs}) > 1 for cs in cands)  # there was a choice to make


def test_ground_truth(sharp_tiny, prompts):
    tok = sharp_tiny.tokenizer
    refs = [f"City {i}" for i in range(len(prompts))]
    out = _select(sharp_tiny, prompts, "ground_truth", references=refs)
    assert out == [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in refs]
    with pytest.raises(ValueError, match="references"):
        _select(sharp_tiny, prompts, "ground_truth")


def test_unknown_strategy_and_params_raise(sharp_tiny, prompts):
    with pytest.raises(ValueError, match="unknown target strategy 'nope'.*greedy"):
        _select(sharp_tiny, prompts, "nope")
    with pytest.raises(ValueError, match=r"target strategy 'beam': beams: unknown parameter \(known: n_beams\)"):
        _select(sharp_tiny, prompts, "beam", {"beams": 2})
    with pytest.raises(ValueError, match="on_policy': mix: Input should be less than or equal to 1"):
        targets.cache_key_params("on_policy", {"mix": 1.5})


def test_cache_key_params_fills_defaults():
    assert targets.cache_key_params("beam", {}) == {"n_beams": 4}
    assert targets.cache_key_params("sample", {"top_p": 0.9}) == {"temperature": 1.0, "top_p": 0.9}
    assert targets.cache_key_params("best_of", None) == {"n": 4, "temperature": 1.0, "top_p": 0.95}
    assert targets.cache_key_params("on_policy", {}) == {"mix": 0.5}
    assert targets.TARGETS["best_of"].params == ("n", "temperature", "top_p")


@pytest.mark.parametrize(
    ("name", "params", "seeded"),
    [("greedy", {}, False), ("beam", {"n_beams": 2}, False), ("on_policy", {}, False), ("sample", {}, True)],
)
def test_teacher_cache_keys_only_sampled_targets_on_the_seed(tmp_path, sharp_tiny, prompts, name, params, seeded):
    """Seeds of one configuration share deterministic targets (one teacher pass); sampled ones are drawn per seed."""
    assert targets.TARGETS[name].seeded is seeded
    store = Store(tmp_path)
    kw = {"max_new_tokens": MAX_NEW, "batch_size": 4, "stop_strings": ()}
    first = teacher.targets(store, sharp_tiny, prompts, None, name, params, seed=0, **kw)
    second = teacher.targets(store, sharp_tiny, prompts, None, name, params, seed=1, **kw)
    assert (store.misses, store.hits) == ((2, 0) if seeded else (1, 1))
    assert (first != second) if seeded else (first == second)
    assert first == _select(sharp_tiny, prompts, name, params, seed=0)
