"""Distillation losses: pure functions on tensors, one registry, hand-checked formulas.

Every loss takes the student's logits at the positions that *predict* target tokens
(position t predicts ``target_ids[:, t]``), a mask that keeps only target positions
(padding and context positions are False), and, for the divergences, the teacher's
top-k distribution plus one tail bucket (`TeacherTopK`, aligned the same way).

Conventions shared by every loss:

- The result is the mean over masked positions (one mean over all target tokens of the
  batch); a batch with no masked token gives 0, still attached to the graph, never NaN.
- Only masked positions are computed on, so whatever sits at padding/context positions
  (even NaN) cannot change the loss or its gradients.
- The temperature tau applies to both sides: the student uses log_softmax(logits / tau);
  the teacher's log-probs must already be taken at tau (``topk_with_tail(..., temperature=tau)``).
- No tau**2 factor: the loss is the plain divergence at tau, so its scale is comparable across
  tau values; fold any rescaling into the learning rate.
- Arithmetic runs in at least float32 (bf16/fp16 logits are upcast), float64 stays float64.

Adding a loss touches only this file: write the function and decorate it with `register`; its
keyword-only parameters (typed and range-checked, e.g. `beta: UnitInterval = 0.5`) are what a suite
may set, and `harness validate` checks them. Every loss takes `temperature`; the divergences also
take `top_k`, the teacher support the cache keeps for them (None = the suite's `training.top_k`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.registry import Entry, PositiveInt, Registry, UnitInterval, lazy_import
from harness.registry import Positive as Temperature

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")  # the registry is read by `harness validate`, which must not wait for torch

__all__ = [
    "LOSSES",
    "LossSpec",
    "TeacherTopK",
    "compute_loss",
    "forward_kl",
    "jsd",
    "register",
    "reverse_kl",
    "self_target_nll",
    "topk_with_tail",
]


# --------------------------------------------------------------------------- teacher top-k


@dataclass(frozen=True)
class TeacherTopK:
    """The teacher's distribution as the cache stores it: top-k log-probs plus one tail bucket.

    indices:  [B, T, k] long, token ids of the teacher's top-k at each position.
    logprobs: [B, T, k] float, teacher log-probs of those tokens at temperature tau.
    tail:     [B, T] float, log of the remaining probability mass (-inf when k == vocab).
    """

    indices: Tensor
    logprobs: Tensor
    tail: Tensor


def _safe_logsumexp(x: Tensor, dim: int = -1) -> Tensor:
    """logsumexp that returns -inf (with zero gradient, not NaN) where every entry is -inf."""
    m = x.detach().amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(x - m).sum(dim=dim)
    positive = s > 0
    out = torch.log(torch.where(positive, s, torch.ones_like(s))) + m.squeeze(dim)
    return torch.where(positive, out, torch.full_like(out, -math.inf))


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    """At least float32: bf16/fp16 log-softmax is too coarse for small divergences."""
    return torch.promote_types(x.dtype, torch.float32)


def _tail_logmass(logprobs: Tensor, indices: Tensor) -> Tensor:
    """log of the probability mass outside `indices`, via logsumexp over the other entries."""
    rest = logprobs.scatter(-1, indices, -math.inf)
    return _safe_logsumexp(rest, dim=-1)


def topk_with_tail(logits: Tensor, k: int | None, temperature: float = 1.0) -> TeacherTopK:
    """Teacher top-k log-probs at temperature tau plus the log tail mass, for the teacher cache.

    log p = log_softmax(logits / tau); k None or k >= V keeps the whole vocabulary (tail = -inf).
    The tail is a logsumexp over the non-top-k entries, so it stays accurate when it is tiny.
    """
    _check_temperature(temperature)
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    vocab = logits.shape[-1]
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 or None, got {k}")
    kk = vocab if k is None else min(k, vocab)
    logp = torch.log_softmax(logits.to(_compute_dtype(logits)) / temperature, dim=-1)
    top_lp, top_idx = torch.topk(logp, kk, dim=-1)
    if kk == vocab:
        tail = torch.full(logp.shape[:-1], -math.inf, dtype=logp.dtype, device=logp.device)
    else:
        tail = _tail_logmass(logp, top_idx)
    return TeacherTopK(indices=top_idx, logprobs=top_lp, tail=tail)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class LossSpec(Entry):
    """One registered loss: its function, its parameter model, and whether it needs the teacher."""

    needs_teacher: bool = False


LOSSES: Registry[LossSpec] = Registry("loss", LossSpec)
register = LOSSES.register  # @register("name", needs_teacher=...)


def compute_loss(
    name: str,
    student_logits: Tensor,
    target_ids: Tensor,
    mask: Tensor,
    teacher: TeacherTopK | None,
    **params: object,
) -> Tensor:
    """Look up loss `name` and compute it (scalar); clear errors for unknown names/params/teacher."""
    spec, effective = LOSSES.resolve(name, params)
    if spec.needs_teacher and teacher is None:
        raise ValueError(f"loss {name!r} needs the teacher's top-k distribution, but teacher is None")
    return spec.fn(student_logits, target_ids, mask, teacher, **effective)


# --------------------------------------------------------------------------- shared plumbing


def _positions(student_logits: Tensor, mask: Tensor, target_ids: Tensor | None = None) -> Tensor:
    """Validate the [B, T] shapes and return the boolean mask of positions that count."""
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be [B, T, V], got shape {tuple(student_logits.shape)}")
    bt = tuple(student_logits.shape[:2])
    if tuple(mask.shape) != bt or (target_ids is not None and tuple(target_ids.shape) != bt):
        got = f"mask {tuple(mask.shape)}"
        if target_ids is not None:
            got += f", target_ids {tuple(target_ids.shape)}"
        raise ValueError(f"{got} must be {bt} to match student_logits [B, T, V]")
    return mask.to(device=student_logits.device).bool()


def _student_logp(student_logits: Tensor, m: Tensor, temperature: float) -> Tensor:
    """Student log_softmax(logits / tau) at the masked positions only: [N, V]."""
    _check_temperature(temperature)
    logits = student_logits[m].to(_compute_dtype(student_logits))
    return torch.log_softmax(logits / temperature, dim=-1)


def _masked_mean(per_token: Tensor) -> Tensor:
    """Mean over the selected tokens; 0 (attached to the graph) when there are none."""
    return per_token.sum() / max(per_token.numel(), 1)


def _require_teacher(teacher: TeacherTopK | None, name: str) -> TeacherTopK:
    if teacher is None:
        raise ValueError(f"loss {name!r} needs the teacher's top-k distribution, but teacher is None")
    return teacher


def _buckets(
    student_logits: Tensor, mask: Tensor, teacher: TeacherTopK, temperature: float, top_k: int | None
) -> tuple[Tensor, Tensor]:
    """Teacher and student log-probs on the k+1 buckets (top-k tokens + tail), each [N, k+1].

    The student's tail is the logsumexp of its log-probs over every token outside the teacher's
    top-k, so with k == V both tails are -inf and the k+1-bucket divergence is the full one.
    `top_k`, when given, is the support the caller asked for: a teacher cached with another k is an error.
    """
    m = _positions(student_logits, mask)
    idx, t_lp, t_tail = teacher.indices, teacher.logprobs, teacher.tail
    bt = tuple(student_logits.shape[:2])
    if tuple(idx.shape[:2]) != bt or idx.shape != t_lp.shape or tuple(t_tail.shape) != bt:
        raise ValueError(
            f"teacher shapes indices {tuple(idx.shape)}, logprobs {tuple(t_lp.shape)}, tail "
            f"{tuple(t_tail.shape)} must be [B, T, k], [B, T, k], [B, T] with [B, T] = {bt}"
        )
    if top_k is not None and idx.shape[-1] != min(top_k, student_logits.shape[-1]):
        raise ValueError(f"top_k={top_k}, but the teacher distribution keeps {idx.shape[-1]} tokens per position")
    s_all = _student_logp(student_logits, m, temperature)
    device = s_all.device
    idx = idx.to(device)[m]
    lt = torch.cat([t_lp.to(device)[m], t_tail.to(device)[m].unsqueeze(-1)], dim=-1).to(s_all.dtype)
    ls = torch.cat([s_all.gather(-1, idx), _tail_logmass(s_all, idx).unsqueeze(-1)], dim=-1)
    return lt, ls


def _kl(la: Tensor, lb: Tensor) -> Tensor:
    """Per-token KL(a‖b) = Σ_buckets p_a (log p_a − log p_b); empty buckets of a add exactly 0.

    Double `where` keeps gradients finite for empty buckets (0 · log 0 terms).
    """
    a_ok = torch.isfinite(la)
    la0 = torch.where(a_ok, la, torch.zeros_like(la))
    lb0 = torch.where(a_ok, lb, torch.zeros_like(lb))
    terms = torch.where(a_ok, torch.exp(la0) * (la0 - lb0), torch.zeros_like(la))
    return terms.sum(-1)


# --------------------------------------------------------------------------- the losses


@register("self_target_nll", needs_teacher=False)
def self_target_nll(
    student_logits: Tensor,
    target_ids: Tensor,
    mask: Tensor,
    teacher: TeacherTopK | None = None,
    *,
    temperature: Temperature = 1.0,
) -> Tensor:
    """Self-target NLL: mean over target tokens of −log Pr_s(ŷ_t | c', z, ŷ_<t).

    log Pr_s = log_softmax(logits / tau); ŷ is the teacher-chosen target, so no teacher logits needed.
    """
    m = _positions(student_logits, mask, target_ids)
    logp = _student_logp(student_logits, m, temperature)
    targets = target_ids.to(logp.device)[m]
    return _masked_mean(-logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1))


@register("forward_kl", needs_teacher=True)
def forward_kl(
    student_logits: Tensor,
    target_ids: Tensor,
    mask: Tensor,
    teacher: TeacherTopK | None,
    *,
    temperature: Temperature = 1.0,
    top_k: PositiveInt | None = None,
) -> Tensor:
    """Forward KL(t‖s) = Σ_v p_t(v) (log p_t(v) − log p_s(v)), mean over target tokens.

    Sum over the teacher's top-k tokens plus one tail bucket (teacher tail mass vs the student's
    mass on all other tokens); exact when k == V, a lower bound on the full KL otherwise.
    Mode-covering: the student is pushed to cover everything the teacher finds likely.
    """
    lt, ls = _buckets(student_logits, mask, _require_teacher(teacher, "forward_kl"), temperature, top_k)
    return _masked_mean(_kl(lt, ls))


@register("reverse_kl", needs_teacher=True)
def reverse_kl(
    student_logits: Tensor,
    target_ids: Tensor,
    mask: Tensor,
    teacher: TeacherTopK | None,
    *,
    temperature: Temperature = 1.0,
    top_k: PositiveInt | None = None,
) -> Tensor:
    """Reverse KL(s‖t) = Σ_v p_s(v) (log p_s(v) − log p_t(v)) on the same k+1 buckets, mean over tokens.

    Mode-seeking: the student is penalised for mass where the teacher has little.
    """
    lt, ls = _buckets(student_logits, mask, _require_teacher(teacher, "reverse_kl"), temperature, top_k)
    return _masked_mean(_kl(ls, lt))


@register("jsd", needs_teacher=True)
def jsd(
    student_logits: Tensor,
    target_ids: Tensor,
    mask: Tensor,
    teacher: TeacherTopK | None,
    *,
    beta: UnitInterval = 0.5,
    temperature: Temperature = 1.0,
    top_k: PositiveInt | None = None,
) -> Tensor:
    """Generalised JSD, normalised so it is continuous in beta, on the k+1 buckets.

    M = β·p_t + (1−β)·p_s;  JSD_β = [β·KL(t‖M) + (1−β)·KL(s‖M)] / (β(1−β))  for 0 < β < 1,
    and exactly forward_kl at β = 0 and reverse_kl at β = 1 (the limits of the formula).
    GKD/TRL drop the 1/(β(1−β)) and so jump to 0 at both ends; we do not.
    The log-ratios log(M/p_s), log(M/p_t) are computed as logaddexp of two terms, which keeps
    the 1/β and 1/(1−β) divisions accurate near the ends even in float32.
    """
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, target_ids, mask, teacher, temperature=temperature, top_k=top_k)
    if beta == 1.0:
        return reverse_kl(student_logits, target_ids, mask, teacher, temperature=temperature, top_k=top_k)
    lt, ls = _buckets(student_logits, mask, _require_teacher(teacher, "jsd"), temperature, top_k)
    log_b, log_1mb = math.log(beta), math.log1p(-beta)
    t_ok, s_ok = torch.isfinite(lt), torch.isfinite(ls)
    zero = torch.zeros_like(lt)
    lt0, ls0 = torch.where(t_ok, lt, zero), torch.where(s_ok, ls, zero)
    # log(M / p_t) = logaddexp(log β, log(1−β) + log p_s − log p_t); = log β where p_s = 0.
    m_over_t = torch.where(s_ok, torch.logaddexp(zero + log_b, log_1mb + ls0 - lt0), zero + log_b)
    # log(M / p_s) = logaddexp(log(1−β), log β + log p_t − log p_s); = log(1−β) where p_t = 0.
    m_over_s = torch.where(t_ok, torch.logaddexp(zero + log_1mb, log_b + lt0 - ls0), zero + log_1mb)
    kl_t_m = torch.where(t_ok, -torch.exp(lt0) * m_over_t, zero).sum(-1)
    kl_s_m = torch.where(s_ok, -torch.exp(ls0) * m_over_s, zero).sum(-1)
    return _masked_mean(kl_t_m / (1.0 - beta) + kl_s_m / beta)
