"""The tiny model learns from every loss and every target strategy: loss on the teacher targets falls; a target
schedule trains on each phase's targets exactly in its share of the optimizer updates."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import parity_prompts, settings

from harness import targets, teacher
from harness.batching import make_batch, target_logits, target_logits_and_hidden
from harness.losses import LOSSES, Extras, TeacherNeeds, compute_loss, register, teacher_needs
from harness.train import Example, OnPolicy, Switch, TrainingDiverged, apply_lora, train

N = 8


@pytest.fixture(scope="module")
def setup(tiny, parity):
    tok = tiny.tokenizer
    t_prompts, s_prompts, docs = parity_prompts(tok, parity, N)
    refs = [parity.reference(d) for d in docs]
    return t_prompts, s_prompts, refs


def _examples(tiny, setup, strategy: str, params: dict, layers: tuple[int, ...] = ()) -> list[Example]:
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
    pad = tiny.tokenizer.pad_token_id
    tops = teacher.score_topk(tiny.model, t_prompts, tgts, k=16, temperature=1.0, batch_size=N, pad_id=pad)
    hidden = [None] * N
    if layers:
        hidden = teacher.score_hidden(tiny.model, t_prompts, tgts, layers=layers, batch_size=N, pad_id=pad)
    return [Example(*e) for e in zip(s_prompts, tgts, tops, t_prompts, hidden, strict=True)]


@torch.no_grad()
def _loss(model, examples: list[Example], loss: str, pad_id: int) -> float:
    batch = make_batch([e.prompt for e in examples], [e.target for e in examples], pad_id)
    T = batch.target_ids.shape[1]
    dist = teacher.stack([e.teacher for e in examples], T)
    layers = teacher_needs(loss, {}).hidden_layers
    extras = None
    if layers:
        logits, s_hidden = target_logits_and_hidden(model, batch, layers)
        extras = Extras(student_hidden=s_hidden, teacher_hidden=teacher.stack_rows([e.hidden for e in examples], T))
    else:
        logits = target_logits(model, batch)
    return float(compute_loss(loss, logits.float(), batch.target_ids, batch.mask, dist, extras))


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
    """With its defaults; sampled_kl on teacher targets trains on (and is measured by) its off-policy loss."""
    layers = teacher_needs(loss, {}).hidden_layers
    _train_and_check(tiny, _examples(tiny, setup, "greedy", {}, layers), loss)


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


# ----------------------------------------------------------------------------- target schedules


@pytest.fixture
def recorder():
    """A throwaway loss that records, per step, each row's first target token and whether the batch was sampled."""
    seen: list[tuple[list[int], bool]] = []

    @register("_record", needs=lambda p: TeacherNeeds(sampled_logprobs=True))
    def _record(student_logits, target_ids, mask, teacher, extras=None):
        sampled = extras is not None and extras.sampled
        if sampled:  # the teacher scored exactly the sampled tokens, nothing else
            assert extras.teacher_token_logprobs.shape == target_ids.shape
            assert bool((extras.teacher_token_logprobs[mask] <= 0).all())
        seen.append((target_ids[:, 0].tolist(), sampled))
        return student_logits[mask].float().logsumexp(-1).mean() * 0.0

    yield seen
    del LOSSES["_record"]


def _fixed(setup, token: int) -> list[Example]:
    """The training inputs with one made-up target each: [token, eos-like 2], so a batch shows its phase."""
    t_prompts, s_prompts, _ = setup
    return [Example(p, [token, 2], None, tp) for p, tp in zip(s_prompts, t_prompts, strict=True)]


@pytest.mark.parametrize(
    ("at", "grad_accum", "first_steps"),
    [(0.5, 1, 2), (0.25, 1, 1), (0.0, 1, 0), (1.0, 1, 4), (0.5, 2, 2), (0.6, 2, 2), (0.25, 2, 0), (0.75, 1, 3)],
)
def test_schedule_switches_targets_after_its_share_of_the_updates(tiny, setup, recorder, at, grad_accum, first_steps):
    """8 inputs, batches of 4, 2 epochs: 4 steps, 4 // grad_accum updates; the first ⌊at · updates⌋ updates
    (every micro-batch of them) train on the first phase's targets, the rest on the second's."""
    first, second = _fixed(setup, 41), _fixed(setup, 42)
    cfg = settings(epochs=2, batch_size=4, grad_accum=grad_accum, warmup_ratio=0.0)
    result = train(copy.deepcopy(tiny.model), first, "_record", {}, cfg, pad_id=0, then=Switch(at=at, examples=second))
    assert result.steps == 4
    rows = [r for r, _ in recorder]
    assert rows == [[41] * 4] * first_steps + [[42] * 4] * (4 - first_steps)
    assert not any(s for _, s in recorder)


def test_schedule_goes_on_policy_only_after_the_switch(tiny, setup, recorder):
    """first: fixed teacher targets; then: on_policy with mix 1, so every later batch is the student's own
    samples, scored by the teacher (token log-probs only)."""
    first, second = _fixed(setup, 41), _fixed(setup, 42)
    op = OnPolicy(mix=1.0, teacher=tiny.model, max_new_tokens=4, stop_strings=(), tokenizer=tiny.tokenizer, top_k=16)
    cfg = settings(epochs=3, batch_size=4, warmup_ratio=0.0)  # 6 steps, 6 updates; switch after 2
    train(copy.deepcopy(tiny.model), first, "_record", {}, cfg, pad_id=0, then=Switch(1 / 3, second, op))
    assert [s for _, s in recorder] == [False, False, True, True, True, True]
    assert [r for r, _ in recorder[:2]] == [[41] * 4] * 2
    assert all(r != [42] * 4 and r != [41] * 4 for r, _ in recorder[2:])  # the student's samples, not fixed ones


def test_schedule_phases_must_cover_the_same_inputs(tiny, setup, recorder):
    first = _fixed(setup, 41)
    with pytest.raises(ValueError, match="the same inputs: 8 and 7 examples"):
        train(copy.deepcopy(tiny.model), first, "_record", {}, settings(), pad_id=0, then=Switch(0.5, first[:7]))
