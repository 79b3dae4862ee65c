"""The tiny model learns from every loss and every target strategy: loss on the teacher targets falls."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import settings

from harness import targets, teacher
from harness.batching import make_batch, target_logits
from harness.contexts import Context
from harness.losses import LOSSES, compute_loss
from harness.train import Example, OnPolicy, TrainingDiverged, apply_lora, train

INSTRUCTION = "Answer E if the number is even and O if it is odd."
N = 8


@pytest.fixture(scope="module")
def setup(tiny, parity):
    tok = tiny.tokenizer
    docs = parity.train_docs(N)
    t_prompts = [tok.encode(parity.render(d, Context(INSTRUCTION, 4), tok), add_special_tokens=False) for d in docs]
    s_prompts = [tok.encode(parity.render(d, Context(None, 0), tok), add_special_tokens=False) for d in docs]
    refs = [parity.reference(d) for d in docs]
    return t_prompts, s_prompts, refs


def _examples(tiny, setup, strategy: str, params: dict) -> list[Example]:
    t_prompts, s_prompts, refs = setup
    tgts = targets.select_targets(
        strategy,
        params,
        tiny.model,
        tiny.tokenizer,
        t_prompts,
        refs,
        max_new_tokens=6,
        batch_size=N,
        seed=0,
        stop_strings=("\n",),
    )
    tops = teacher.score_topk(
        tiny.model, t_prompts, tgts, k=16, temperature=1.0, batch_size=N, pad_id=tiny.tokenizer.pad_token_id
    )
    return [Example(p, t, top, tp) for p, t, top, tp in zip(s_prompts, tgts, tops, t_prompts, strict=True)]


@torch.no_grad()
def _loss(model, examples: list[Example], loss: str, pad_id: int) -> float:
    batch = make_batch([e.prompt for e in examples], [e.target for e in examples], pad_id)
    dist = teacher.stack([e.teacher for e in examples], batch.target_ids.shape[1])
    return float(
        compute_loss(loss, target_logits(model, batch).float(), batch.target_ids, batch.mask, dist, temperature=1.0)
    )


def _train_and_check(tiny, examples, loss: str, *, lora: int = 0, on_policy: OnPolicy | None = None) -> None:
    pad = tiny.tokenizer.pad_token_id
    student = copy.deepcopy(tiny.model)
    before = _loss(student, examples, loss, pad)
    if lora:
        student = apply_lora(student, lora)
    cfg = settings(
        learning_rate=3e-3 if not lora else 1e-2,
        epochs=6,
        batch_size=4,
        warmup_ratio=0.0,
        scheduler="constant_with_warmup",
    )
    result = train(student, examples, loss, {}, cfg, pad_id=pad, on_policy=on_policy)
    assert result.steps == 12 and result.train_tokens > 0 and len(result.losses) == 12
    after = _loss(student, examples, loss, pad)
    assert after < 0.8 * before, (loss, before, after)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_each_loss_lowers_itself(tiny, setup, loss):
    _train_and_check(tiny, _examples(tiny, setup, "greedy", {}), loss)


@pytest.mark.parametrize("strategy", sorted(targets.TARGETS))
def test_each_target_strategy_trains(tiny, setup, strategy):
    spec = targets.TARGETS[strategy]
    params = {"n_beams": 2} if strategy == "beam" else {"n": 2} if strategy == "best_of" else {}
    examples = _examples(tiny, setup, strategy, params)
    on_policy = None
    loss = "self_target_nll"
    if spec.uses_student:
        loss = "forward_kl"
        on_policy = OnPolicy(
            mix=0.5, teacher=tiny.model, max_new_tokens=6, stop_strings=("\n",), tokenizer=tiny.tokenizer, top_k=16
        )
    _train_and_check(tiny, examples, loss, on_policy=on_policy)


def test_lora_trains_only_adapters(tiny, setup):
    examples = _examples(tiny, setup, "greedy", {})
    _train_and_check(tiny, examples, "self_target_nll", lora=4)


def test_divergence_is_reported(tiny, setup):
    examples = _examples(tiny, setup, "greedy", {})
    student = copy.deepcopy(tiny.model)
    cfg = settings(learning_rate=1e30, epochs=3, batch_size=4, warmup_ratio=0.0, scheduler="constant_with_warmup")
    with pytest.raises(TrainingDiverged, match="training diverged"):
        train(student, examples, "forward_kl", {}, cfg, pad_id=tiny.tokenizer.pad_token_id)
