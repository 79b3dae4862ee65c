"""`on_policy` targets with `teacher: ema` (SDFT's teacher): its weights are an exponential moving average of the
student's, the base teacher stays frozen, bad combinations are refused at validate, and a trial runs end to end
with the EMA's cost in its ledger."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from helpers import parity_prompts, settings, write_suite

from harness import targets, teacher
from harness.cli import main
from harness.config import HyperParams, TrialConfig
from harness.ema import EmaTeacher
from harness.spec import AxisValue, load_suite
from harness.train import Example, OnPolicy, apply_lora, train
from harness.trial import InvalidCombination, Workbench, check_combination, run_trial

N = 8


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_the_average_moves_every_sync_steps_and_swaps_in_and_out(tiny):
    student = copy.deepcopy(tiny.model).float()
    start = _weights(student)
    ema = EmaTeacher(student, update_rate=0.25, sync_steps=2)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema.step()  # optimizer update 1 of 2: no EMA update yet
    assert ema.updates == 0
    assert all(torch.equal(s, w) for s, w in zip(ema.shadow, start, strict=True))
    ema.step()  # update 2: teacher = 0.75 · θ0 + 0.25 · (θ0 + 1)
    assert ema.updates == 1
    student.train()
    with ema.as_teacher():
        assert not student.training
        for p, w in zip(student.parameters(), start, strict=True):
            torch.testing.assert_close(p, w + 0.25)
    assert student.training
    for p, w in zip(student.parameters(), start, strict=True):
        torch.testing.assert_close(p, w + 1.0)  # the student's own weights are back


def test_lora_averages_only_the_adapters(tiny):
    student = apply_lora(copy.deepcopy(tiny.model).float(), 4)
    ema = EmaTeacher(student, update_rate=0.05, sync_steps=1)
    assert ema.params and all("lora_" in n for n, p in student.named_parameters() if p.requires_grad)
    assert ema.elements == sum(p.numel() for p in student.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def examples(tiny, parity) -> list[Example]:
    tok = tiny.tokenizer
    t_prompts, s_prompts, _ = parity_prompts(tok, parity, N)
    tgts = targets.select_targets(
        "on_policy", {}, tiny.model, tok, t_prompts, None, max_new_tokens=6, batch_size=N, seed=0, stop_strings=("\n",)
    )
    pad = tok.pad_token_id
    tops = teacher.score_topk(tiny.model, t_prompts, tgts, k=16, temperature=1.0, batch_size=N, pad_id=pad)
    return [Example(p, t, top, tp) for p, t, top, tp in zip(s_prompts, tgts, tops, t_prompts, strict=True)]


def _on_policy(tiny, **kw: object) -> OnPolicy:
    return OnPolicy(
        mix=1.0,
        max_new_tokens=6,
        stop_strings=("\n",),
        tokenizer=tiny.tokenizer,
        top_k=16,
        **kw,  # type: ignore[arg-type]
    )


def test_training_keeps_the_ema_of_the_student_and_the_base_frozen(tiny, examples):
    """Every optimizer update (on_step sees the weights right after it) moves the teacher by α toward the student;
    the on-policy batches are scored by it; a base-teacher run leaves the teacher's weights untouched."""
    pad = tiny.tokenizer.pad_token_id
    cfg = settings(learning_rate=3e-3, epochs=2, batch_size=4, warmup_ratio=0.0, scheduler="constant")
    student = copy.deepcopy(tiny.model).float()
    rate = 0.2
    ema = EmaTeacher(student, update_rate=rate, sync_steps=1)
    expected = [p.detach().clone() for p in ema.params]

    def on_step(step: int, _: dict) -> None:
        for e, p in zip(expected, ema.params, strict=True):
            e.mul_(1 - rate).add_(p.detach(), alpha=rate)

    op = _on_policy(tiny, teacher=student, teacher_mode=ema.as_teacher, ema=ema)
    result = train(student, examples, "forward_kl", {}, cfg, pad_id=pad, on_policy=op, on_step=on_step)
    assert result.steps == 4 and ema.updates == result.ema_updates == 4
    assert result.onpolicy_batches == 4 and result.onpolicy_teacher_tokens > result.onpolicy_generated_tokens > 0
    for s, e in zip(ema.shadow, expected, strict=True):
        torch.testing.assert_close(s, e, rtol=1e-6, atol=1e-7)
    start = _weights(tiny.model)
    moved = [not torch.equal(s, w) for s, w in zip(ema.shadow, start, strict=True)]
    assert any(moved)  # the teacher is no longer the base

    base_before = _weights(tiny.model)
    other = copy.deepcopy(tiny.model).float()
    train(other, examples, "forward_kl", {}, cfg, pad_id=pad, on_policy=_on_policy(tiny, teacher=tiny.model))
    assert all(torch.equal(a, b) for a, b in zip(base_before, _weights(tiny.model), strict=True))


def _suite(tmp_path, targets_axis: list, contexts: list | None = None):
    axes: dict = {"targets": targets_axis, "losses": [{"name": "forward_kl"}]}
    if contexts is not None:
        axes["contexts"] = contexts
    return write_suite(tmp_path, axes=axes)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"name": "greedy", "teacher": "ema"}, "axes.targets.0.teacher: 'greedy' targets are precomputed once"),
        ({"name": "schedule", "teacher": "ema"}, "axes.targets.0.teacher: 'schedule' takes the teacher kind in its"),
        ({"name": "on_policy", "teacher": "live"}, "axes.targets.0.teacher: Input should be 'base' or 'ema'"),
        ({"name": "on_policy", "teacher": "ema", "update_rate": 0}, "axes.targets.0.update_rate: Input should be"),
    ],
)
def test_validate_refuses_a_teacher_kind_where_it_cannot_apply(tmp_path, capsys, value, message):
    assert main(["validate", str(_suite(tmp_path, [value]))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_ema_and_base_are_two_values_of_the_targets_axis(tmp_path, capsys):
    path = _suite(tmp_path, [{"name": "on_policy"}, {"name": "on_policy", "teacher": "ema"}])
    assert main(["validate", str(path)]) == 0
    assert "2 target" in capsys.readouterr().out
    ema = load_suite(path).axes.targets[1]
    (phase,) = targets.phases(ema.name, ema.params)
    assert phase.params == {"mix": 0.5, "teacher": "ema", "update_rate": 0.05, "sync_steps": 1}  # TRL's defaults
    # the precomputed targets are the frozen teacher's either way: one cache entry for both kinds
    assert targets.cache_key_params("on_policy", {"teacher": "ema"}) == targets.cache_key_params("on_policy", {})


@pytest.mark.slow
def test_a_trial_with_the_ema_teacher_runs_and_logs_its_cost(tmp_path):
    path = _suite(tmp_path, [{"name": "on_policy", "mix": 1, "teacher": "ema", "update_rate": 0.5}])
    suite = load_suite(path)
    bench = Workbench(suite)
    base_before = _weights(bench.teacher.model)
    cfg = TrialConfig(
        suite.axes.targets[0],
        suite.axes.contexts[0],
        suite.axes.losses[0],
        HyperParams.from_values(dict(suite.hyperparameters)),
    )
    result = run_trial(bench, cfg, suite.seed)
    m, cost = result.metrics.logged(), result.ledger
    assert m["train_steps"] == 2 and m["heldout_kl"] == m["heldout_kl"]  # finite
    assert cost["cost/ema_updates"] == 2 and cost["cost/ema_bytes"] > 0
    assert cost["cost/onpolicy_teacher_tokens"] > 0 and cost["cost/ema_update_flops"] > 0
    assert cost["cost/total_flops"] > cost["cost/teacher_flops"] + cost["cost/student_flops"]
    assert all(torch.equal(a, b) for a, b in zip(base_before, _weights(bench.teacher.model), strict=True))
    # a learned c' trains no weights: its EMA teacher would be the base, so the combination is refused
    soft = dataclasses.replace(cfg, context=AxisValue(name="soft_prompt"))
    with pytest.raises(InvalidCombination, match="teacher: ema, an average of the student's weights"):
        check_combination(soft)
