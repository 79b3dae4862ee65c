"""On-policy trials skip work they never use: with mix 1 no teacher greedy targets or top-k are requested (every
batch is the student's own sample), and the teacher's cache of c is prefilled once per trial, not once per step,
with the same scores as prefilling it each time."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import parity_prompts, settings, write_suite

from harness import generation, targets, teacher
from harness import trial as trial_mod
from harness.config import HyperParams, TrialConfig
from harness.losses import teacher_needs
from harness.spec import load_suite
from harness.train import Example, OnPolicy, _on_policy_batch, train
from harness.trial import Workbench, run_trial

N = 8


@pytest.fixture(scope="module")
def prompts(tiny, parity) -> tuple[list[list[int]], list[list[int]]]:
    tok = tiny.tokenizer
    t_prompts, s_prompts, _ = parity_prompts(tok, parity, N)
    return t_prompts, s_prompts


def test_mix_one_is_the_only_setting_that_skips_precomputed_targets():
    assert not targets.trains_on_precomputed("on_policy", {"mix": 1})
    assert targets.trains_on_precomputed("on_policy", {"mix": 0.99})
    assert targets.trains_on_precomputed("on_policy", {})  # default mix 0.5
    assert targets.trains_on_precomputed("greedy", {})
    # a schedule's on-policy phase is asked on its own (phases); the schedule itself trains on `first`'s targets
    assert targets.trains_on_precomputed("schedule", {"then": {"name": "on_policy", "mix": 1}})


def test_a_prefilled_prefix_gives_the_logits_of_prefilling_each_call(tiny, prompts):
    t_prompts, _ = prompts
    conts = [[5, 6, 7][: 1 + i % 3] for i in range(N)]
    prefix = generation.prefill(tiny.model, t_prompts)
    assert prefix is not None and len(prefix.tokens) == generation.common_prefix_length(t_prompts)
    for rows in (slice(0, 4), slice(4, N)):  # two "steps", each a batch of its own prompts
        p, c = t_prompts[rows], conts[rows]
        per_call = dict((tuple(i), x) for i, x in generation.continuation_logits(tiny.model, p, c, batch_size=4))
        reused = dict(
            (tuple(i), x) for i, x in generation.continuation_logits(tiny.model, p, c, batch_size=4, prefix=prefix)
        )
        assert per_call.keys() == reused.keys()
        for key, x in per_call.items():
            torch.testing.assert_close(reused[key], x, rtol=0, atol=1e-5)
    pad = tiny.tokenizer.pad_token_id
    kw = {"k": 16, "temperature": 1.0, "batch_size": 4, "pad_id": pad}
    plain = teacher.score_topk(tiny.model, t_prompts, conts, **kw)
    shared = teacher.score_topk(tiny.model, t_prompts, conts, prefix=prefix, **kw)
    for a, b in zip(plain, shared, strict=True):
        assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(b.logprobs, a.logprobs, rtol=0, atol=1e-5)
        torch.testing.assert_close(b.tail, a.tail, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="must start with the given"):
        next(generation.continuation_logits(tiny.model, [[1, 2, 3]], [[4]], prefix=prefix))


def _op(tiny, **kw: object) -> OnPolicy:
    return OnPolicy(
        mix=1.0,
        teacher=tiny.model,
        max_new_tokens=6,
        stop_strings=("\n",),
        tokenizer=tiny.tokenizer,
        top_k=16,
        **kw,  # type: ignore[arg-type]
    )


def test_on_policy_scoring_with_the_trial_prefix_equals_the_per_step_path(tiny, prompts):
    t_prompts, s_prompts = prompts
    items = [Example(p, [], None, tp) for p, tp in zip(s_prompts, t_prompts, strict=True)]
    pad, needs, op = tiny.tokenizer.pad_token_id, teacher_needs("forward_kl", {}), _op(tiny)
    student = copy.deepcopy(tiny.model).float()
    prefix = generation.prefill(tiny.model, t_prompts)
    a = _on_policy_batch(student, items[:4], op, 7, pad, needs)
    b = _on_policy_batch(student, items[:4], op, 7, pad, needs, prefix)
    assert a[0] == b[0] and any(a[0])  # the same samples (same seed)
    for x, y in zip(a[1], b[1], strict=True):
        assert x is not None and y is not None and torch.equal(x.indices, y.indices)
        torch.testing.assert_close(y.logprobs, x.logprobs, rtol=0, atol=1e-5)


def test_training_prefills_the_teacher_context_once(tiny, prompts, monkeypatch):
    t_prompts, s_prompts = prompts
    items = [Example(p, [], None, tp) for p, tp in zip(s_prompts, t_prompts, strict=True)]
    shared = generation.common_prefix_length(t_prompts)
    calls: list[int] = []
    real = generation._prefill

    def counting(model, prefix):  # a spy: the real prefill, its prefix lengths recorded
        calls.append(len(prefix))
        return real(model, prefix)

    monkeypatch.setattr(generation, "_prefill", counting)
    cfg = settings(learning_rate=3e-3, epochs=2, batch_size=4, warmup_ratio=0.0, scheduler="constant")
    student = copy.deepcopy(tiny.model).float()
    result = train(student, items, "forward_kl", {}, cfg, pad_id=tiny.tokenizer.pad_token_id, on_policy=_op(tiny))
    assert result.steps == 4 and result.onpolicy_batches == 4
    assert sum(n >= shared for n in calls) == 1  # c once for the trial, not once per step


@pytest.mark.slow
def test_a_mix_one_trial_requests_no_teacher_targets_and_trains_as_before(tmp_path, monkeypatch):
    """The same trial with and without the skip (the old path computed greedy targets and their top-k, then
    sampled every batch anyway): identical training and scores; only the skip's cache lacks those entries."""

    def one(folder, old: bool):
        folder.mkdir()
        if old:
            monkeypatch.setattr(trial_mod, "trains_on_precomputed", lambda name, params: True)
        suite = load_suite(
            write_suite(folder, axes={"targets": [{"name": "on_policy", "mix": 1}], "losses": [{"name": "forward_kl"}]})
        )
        bench = Workbench(suite)
        cfg = TrialConfig(
            suite.axes.targets[0],
            suite.axes.contexts[0],
            suite.axes.losses[0],
            HyperParams.from_values(dict(suite.hyperparameters)),
        )
        result = run_trial(bench, cfg, suite.seed)
        monkeypatch.undo()
        described = [p.read_text() for p in bench.store.root.rglob("*.json")]
        return result, described

    new, new_entries = one(tmp_path / "new", old=False)
    old, old_entries = one(tmp_path / "old", old=True)
    assert not any("on_policy" in d for d in new_entries)  # no on_policy targets asked of the teacher cache
    assert any("on_policy" in d for d in old_entries)
    assert len(new_entries) < len(old_entries)  # and no top-k along them either
    m_new, m_old = new.metrics.logged(), old.metrics.logged()
    for key in ("final_train_loss", "heldout_kl", "train_steps", "target_tokens", "greedy_agreement"):
        assert m_new[key] == pytest.approx(m_old[key], abs=1e-5), key
    assert new.validation.student.per_item == old.validation.student.per_item
    assert new.test.student.per_item == old.test.student.per_item
    assert new.ledger["cost/tokens_generated"] == 0 < old.ledger["cost/tokens_generated"]
