"""Losses checked against float64 numpy references written as explicit per-position sums.

Guards the known distillation-loss bugs: JSD jumping to 0 at beta = 0/1, a temperature that
is never applied, and padding/context positions leaking into the mean.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.losses import (
    LOSSES,
    TeacherTopK,
    compute_loss,
    forward_kl,
    jsd,
    register,
    reverse_kl,
    self_target_nll,
    topk_with_tail,
)

B, T, V = 2, 4, 5
# Row 0: one context position then three target tokens; row 1: one context, two targets, one pad.
MASK = torch.tensor([[False, True, True, True], [False, True, True, False]])
ALL_LOSSES = [
    ("self_target_nll", {}),
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.3}),
    ("jsd", {"beta": 0.5}),
]


# --------------------------------------------------------------------------- numpy reference


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def np_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def np_jsd(p: list[float], q: list[float], beta: float) -> float:
    if beta == 0:
        return np_kl(p, q)
    if beta == 1:
        return np_kl(q, p)
    m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q, strict=True)]
    return (beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)) / (beta * (1 - beta))


def np_buckets(t_row: np.ndarray, s_row: np.ndarray, k: int | None, tau: float) -> tuple[list, list]:
    """Teacher/student probabilities on the teacher's top-k tokens plus one tail bucket."""
    pt, ps = np_softmax(t_row / tau), np_softmax(s_row / tau)
    if k is None or k >= len(pt):
        return list(pt), list(ps)
    top = [int(v) for v in np.argsort(-pt)[:k]]
    rest = [v for v in range(len(pt)) if v not in top]
    bt = [pt[v] for v in top] + [sum(pt[v] for v in rest)]
    bs = [ps[v] for v in top] + [sum(ps[v] for v in rest)]
    return bt, bs


def np_loss(name, s_logits, t_logits, targets, mask, *, k=None, tau=1.0, beta=None) -> float:
    s, t = s_logits.detach().numpy(), t_logits.numpy()
    values = []
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if not mask[b, i]:
                continue
            if name == "self_target_nll":
                values.append(-math.log(np_softmax(s[b, i] / tau)[int(targets[b, i])]))
                continue
            pt, ps = np_buckets(t[b, i], s[b, i], k, tau)
            if name == "forward_kl":
                values.append(np_kl(pt, ps))
            elif name == "reverse_kl":
                values.append(np_kl(ps, pt))
            else:
                values.append(np_jsd(pt, ps, beta))
    return sum(values) / len(values) if values else 0.0


def make(seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    student = (scale * torch.randn(B, T, V, generator=g, dtype=torch.float64)).requires_grad_()
    teacher = scale * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (B, T), generator=g)
    return student, teacher, targets


# --------------------------------------------------------------------------- teacher top-k


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_topk_with_tail_matches_numpy(tau):
    _, teacher, _ = make(1)
    top = topk_with_tail(teacher, 2, temperature=tau)
    assert top.indices.shape == (B, T, 2) and top.logprobs.shape == (B, T, 2) and top.tail.shape == (B, T)
    for b in range(B):
        for i in range(T):
            p = np_softmax(teacher[b, i].numpy() / tau)
            order = np.argsort(-p)
            assert top.indices[b, i].tolist() == order[:2].tolist()
            np.testing.assert_allclose(top.logprobs[b, i].numpy(), np.log(p[order[:2]]), rtol=1e-12)
            np.testing.assert_allclose(float(top.tail[b, i]), math.log(p[order[2:]].sum()), rtol=1e-12)


@pytest.mark.parametrize("k", [None, V, V + 3])
def test_topk_full_vocab_has_empty_tail(k):
    _, teacher, _ = make(2)
    top = topk_with_tail(teacher, k)
    assert top.indices.shape == (B, T, V)
    assert torch.all(torch.isneginf(top.tail))
    np.testing.assert_allclose(top.logprobs.exp().sum(-1).numpy(), 1.0, rtol=1e-12)


def test_topk_tail_is_accurate_when_tiny():
    # Tail mass ~ e^-60: log(1 - sum(top)) would round to log(0); logsumexp keeps it.
    logits = torch.tensor([[[60.0, 0.0, 0.0]]], dtype=torch.float64)
    top = topk_with_tail(logits, 1)
    assert float(top.tail) == pytest.approx(math.log(2.0) - 60.0, rel=1e-9)


def test_topk_rejects_bad_k():
    _, teacher, _ = make()
    with pytest.raises(ValueError, match="k must be"):
        topk_with_tail(teacher, 0)


# --------------------------------------------------------------------------- against numpy


@pytest.mark.parametrize("k", [None, 2])
@pytest.mark.parametrize("name,params", ALL_LOSSES)
def test_loss_matches_numpy(name, params, k):
    student, teacher, targets = make(3)
    top = topk_with_tail(teacher, k)
    got = compute_loss(name, student, targets, MASK, top, **params)
    want = np_loss(name, student, teacher, targets, MASK, k=k, beta=params.get("beta"))
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_hand_computed_values():
    # p_t = (1/2, 1/2), p_s = (1/4, 3/4), one position, full vocabulary.
    s = torch.log(torch.tensor([[[0.25, 0.75]]], dtype=torch.float64)).requires_grad_()
    top = topk_with_tail(torch.log(torch.tensor([[[0.5, 0.5]]], dtype=torch.float64)), None)
    mask, target = torch.ones(1, 1, dtype=torch.bool), torch.tensor([[0]])
    fkl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    rkl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert forward_kl(s, target, mask, top).item() == pytest.approx(fkl, rel=1e-12)
    assert reverse_kl(s, target, mask, top).item() == pytest.approx(rkl, rel=1e-12)
    assert self_target_nll(s, target, mask).item() == pytest.approx(math.log(4.0), rel=1e-12)
    # beta = 1/2: M = (3/8, 5/8), normalisation 1/(1/4).
    m = (0.375, 0.625)
    kl_t = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_s = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    assert jsd(s, target, mask, top, beta=0.5).item() == pytest.approx(2 * (kl_t + kl_s), rel=1e-12)


def test_self_target_nll_is_mean_negative_logprob():
    student, _, targets = make(4)
    logp = torch.log_softmax(student.detach(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    want = -logp[MASK].sum() / MASK.sum()
    got = compute_loss("self_target_nll", student, targets, MASK, None)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


# --------------------------------------------------------------------------- masking


@pytest.mark.parametrize("name,params", ALL_LOSSES)
def test_masked_positions_do_not_change_loss(name, params):
    student, teacher, targets = make(5)
    top = topk_with_tail(teacher, 2)
    base = compute_loss(name, student, targets, MASK, top, **params)

    junk = student.detach().clone()
    junk[~MASK] = torch.randn(int((~MASK).sum()), V, dtype=torch.float64) * 50
    junk[0, 0] = float("nan")
    junk.requires_grad_()
    junk_top = TeacherTopK(
        indices=top.indices.masked_fill(~MASK.unsqueeze(-1), 0),
        logprobs=top.logprobs.masked_fill(~MASK.unsqueeze(-1), float("nan")),
        tail=top.tail.masked_fill(~MASK, float("nan")),
    )
    junk_targets = targets.masked_fill(~MASK, V - 1)
    got = compute_loss(name, junk, junk_targets, MASK, junk_top, **params)
    assert got.item() == pytest.approx(base.item(), rel=1e-12)
    got.backward()
    assert torch.all(torch.isfinite(junk.grad))
    assert torch.all(junk.grad[~MASK] == 0)


def test_mask_accepts_int_tensor():
    student, teacher, targets = make(6)
    top = topk_with_tail(teacher, 3)
    a = compute_loss("forward_kl", student, targets, MASK, top)
    b = compute_loss("forward_kl", student, targets, MASK.long(), top)
    assert a.item() == b.item()


@pytest.mark.parametrize("name,params", ALL_LOSSES)
def test_empty_mask_gives_zero_with_grad(name, params):
    student, teacher, targets = make(7)
    empty = torch.zeros(B, T, dtype=torch.bool)
    loss = compute_loss(name, student, targets, empty, topk_with_tail(teacher, 2), **params)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(student.grad == 0)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("k", [None, 2])
@pytest.mark.parametrize("seed", range(5))
def test_divergences_nonnegative_and_zero_iff_equal(seed, k):
    student, teacher, targets = make(seed)
    differ = topk_with_tail(teacher, k)
    same = topk_with_tail(student.detach(), k)
    for name, params in ALL_LOSSES[1:]:
        assert compute_loss(name, student, targets, MASK, differ, **params).item() > 1e-6
        assert abs(compute_loss(name, student, targets, MASK, same, **params).item()) < 1e-6
    for beta in (0.0, 1e-3, 0.5, 1.0):
        assert jsd(student, targets, MASK, differ, beta=beta).item() >= 0.0


@pytest.mark.parametrize("k", [None, 2])
def test_jsd_is_continuous_at_both_ends(k):
    student, teacher, targets = make(8)
    top = topk_with_tail(teacher, k)
    fkl = forward_kl(student, targets, MASK, top)
    rkl = reverse_kl(student, targets, MASK, top)
    assert torch.equal(jsd(student, targets, MASK, top, beta=0.0), fkl)
    assert torch.equal(jsd(student, targets, MASK, top, beta=1.0), rkl)
    assert jsd(student, targets, MASK, top, beta=1e-4).item() == pytest.approx(fkl.item(), rel=1e-2)
    assert jsd(student, targets, MASK, top, beta=1 - 1e-4).item() == pytest.approx(rkl.item(), rel=1e-2)
    want = np_loss("jsd", student, teacher, targets, MASK, k=k, beta=0.5)
    assert jsd(student, targets, MASK, top, beta=0.5).item() == pytest.approx(want, rel=1e-10)


def test_jsd_near_ends_is_stable_in_float32():
    student, teacher, targets = make(9)
    s32 = student.detach().float()
    top = topk_with_tail(teacher.float(), 3)
    fkl = forward_kl(s32, targets, MASK, top).item()
    rkl = reverse_kl(s32, targets, MASK, top).item()
    assert jsd(s32, targets, MASK, top, beta=1e-5).item() == pytest.approx(fkl, rel=1e-3)
    assert jsd(s32, targets, MASK, top, beta=1 - 1e-5).item() == pytest.approx(rkl, rel=1e-3)


@pytest.mark.parametrize("name,params", ALL_LOSSES)
def test_temperature_is_applied(name, params):
    student, teacher, targets = make(10)
    top2, top1 = topk_with_tail(teacher, 2, temperature=2.0), topk_with_tail(teacher, 2, temperature=1.0)
    at2 = compute_loss(name, student, targets, MASK, top2, temperature=2.0, **params)
    at1 = compute_loss(name, student, targets, MASK, top1, temperature=1.0, **params)
    want = np_loss(name, student, teacher, targets, MASK, k=2, tau=2.0, beta=params.get("beta"))
    assert at2.item() == pytest.approx(want, rel=1e-10)
    assert abs(at2.item() - at1.item()) > 1e-3


def test_bad_temperature_raises():
    student, teacher, targets = make()
    with pytest.raises(ValueError, match="temperature"):
        compute_loss("self_target_nll", student, targets, MASK, None, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        topk_with_tail(teacher, 2, temperature=-1.0)


# --------------------------------------------------------------------------- top-k + tail


def full_kl_np(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL over the whole vocabulary, no buckets."""
    p, q = np_softmax(p_logits), np_softmax(q_logits)
    return float(sum(p[v] * (math.log(p[v]) - math.log(q[v])) for v in range(len(p))))


def test_full_vocab_topk_equals_full_kl():
    student, teacher, targets = make(11)
    top = topk_with_tail(teacher, V)
    s, t = student.detach().numpy(), teacher.numpy()
    pos = [(b, i) for b in range(B) for i in range(T) if MASK[b, i]]
    fwd = sum(full_kl_np(t[b, i], s[b, i]) for b, i in pos) / len(pos)
    rev = sum(full_kl_np(s[b, i], t[b, i]) for b, i in pos) / len(pos)
    assert forward_kl(student, targets, MASK, top).item() == pytest.approx(fwd, rel=1e-12)
    assert reverse_kl(student, targets, MASK, top).item() == pytest.approx(rev, rel=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_topk_buckets_match_numpy_and_bound_full_kl(k):
    student, teacher, targets = make(12)
    top = topk_with_tail(teacher, k)
    for name, ref in (("forward_kl", forward_kl), ("reverse_kl", reverse_kl)):
        got = ref(student, targets, MASK, top).item()
        assert got == pytest.approx(np_loss(name, student, teacher, targets, MASK, k=k), rel=1e-10)
        full = ref(student, targets, MASK, topk_with_tail(teacher, None)).item()
        assert got <= full + 1e-12  # merging tokens into one bucket never increases a KL


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("k", [None, 2])
@pytest.mark.parametrize("name,params", ALL_LOSSES)
def test_gradients_flow(name, params, k):
    student, teacher, targets = make(13)
    loss = compute_loss(name, student, targets, MASK, topk_with_tail(teacher, k), **params)
    loss.backward()
    assert torch.all(torch.isfinite(student.grad))
    assert torch.all(student.grad[MASK].abs().sum(-1) > 0)
    assert torch.all(student.grad[~MASK] == 0)


def test_gradcheck_jsd():
    student, teacher, targets = make(14)
    top = topk_with_tail(teacher, 2)
    assert torch.autograd.gradcheck(lambda s: jsd(s, targets, MASK, top, beta=0.3), (student,))


# --------------------------------------------------------------------------- registry / errors


def test_registry_contents():
    assert {"self_target_nll", "forward_kl", "reverse_kl", "jsd"} <= set(LOSSES)
    assert not LOSSES["self_target_nll"].needs_teacher
    assert all(LOSSES[n].needs_teacher for n in ("forward_kl", "reverse_kl", "jsd"))
    assert LOSSES["jsd"].params == ("beta", "temperature", "top_k")
    assert LOSSES["self_target_nll"].params == ("temperature",)
    assert LOSSES["forward_kl"].defaults() == {"temperature": 1.0, "top_k": None}
    assert LOSSES["forward_kl"].fn is forward_kl


def test_register_adds_a_loss_and_rejects_duplicates():
    @register("_test_zero", needs_teacher=False)
    def _zero(student_logits, target_ids, mask, teacher, extras=None, *, temperature: float = 1.0):
        return student_logits.sum() * 0

    try:
        student, _, targets = make()
        assert compute_loss("_test_zero", student, targets, MASK, None).item() == 0.0
        with pytest.raises(ValueError, match="already registered"):
            register("_test_zero", needs_teacher=False)(_zero)
    finally:
        del LOSSES["_test_zero"]


def test_unknown_loss_lists_known_ones():
    student, _, targets = make()
    with pytest.raises(ValueError, match="unknown loss 'nope'.*forward_kl"):
        compute_loss("nope", student, targets, MASK, None)


@pytest.mark.parametrize("name,params", ALL_LOSSES[1:])
def test_missing_teacher_raises(name, params):
    student, _, targets = make()
    with pytest.raises(ValueError, match="needs the teacher"):
        compute_loss(name, student, targets, MASK, None, **params)
    with pytest.raises(ValueError, match="needs the teacher"):
        LOSSES[name].fn(student, targets, MASK, None, **params)


def test_param_errors():
    student, teacher, targets = make()
    top = topk_with_tail(teacher, 2)
    default = compute_loss("jsd", student, targets, MASK, top)  # beta defaults to 0.5
    assert torch.allclose(default, compute_loss("jsd", student, targets, MASK, top, beta=0.5))
    with pytest.raises(ValueError, match=r"loss 'forward_kl': beta: unknown parameter \(known: temperature, top_k\)"):
        compute_loss("forward_kl", student, targets, MASK, top, beta=0.5)
    for beta in (-0.1, 1.1):
        with pytest.raises(ValueError, match="loss 'jsd': beta: Input should be"):
            compute_loss("jsd", student, targets, MASK, top, beta=beta)
    with pytest.raises(ValueError, match="top_k: Input should be greater than or equal to 1"):
        compute_loss("forward_kl", student, targets, MASK, top, top_k=0)
    with pytest.raises(ValueError, match="top_k=3, but the teacher distribution keeps 2 tokens"):
        compute_loss("forward_kl", student, targets, MASK, top, top_k=3)
    assert torch.equal(
        compute_loss("reverse_kl", student, targets, MASK, top, top_k=2), reverse_kl(student, targets, MASK, top)
    )


def test_shape_errors():
    student, teacher, targets = make()
    top = topk_with_tail(teacher, 2)
    with pytest.raises(ValueError, match="mask"):
        compute_loss("forward_kl", student, targets, MASK[:, :2], top)
    with pytest.raises(ValueError, match="target_ids"):
        compute_loss("self_target_nll", student, targets[:, :2], MASK, None)
    short = TeacherTopK(top.indices[:, :2], top.logprobs[:, :2], top.tail[:, :2])
    with pytest.raises(ValueError, match="teacher shapes"):
        compute_loss("forward_kl", student, targets, MASK, short)
