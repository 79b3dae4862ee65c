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
may set, and `harness validate` checks them. The token losses take `temperature`; the divergences also
take `top_k`, the teacher support the cache keeps for them (None = the suite's `training.top_k`).

Beyond the token losses: `mix` (a weighted sum of two losses), `hidden_mse` / `hidden_cosine` (a token
loss plus hidden-state matching) and `sampled_kl` (on-policy KL estimated from two log-probs). What the
teacher must supply for a loss value (top-k, sampled-token log-probs, hidden states) is `teacher_needs`,
so the cache and the training loop compute exactly that; what they supply besides the top-k travels in
`Extras`, the fifth argument every loss accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field

from harness.registry import Entry, Integer, NonNegative, PositiveInt, Registry, UnitInterval, lazy_import, nested
from harness.registry import Positive as Temperature

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")  # the registry is read by `harness validate`, which must not wait for torch

__all__ = [
    "LOSSES",
    "Extras",
    "LossSpec",
    "TeacherNeeds",
    "TeacherTopK",
    "compute_loss",
    "forward_kl",
    "hidden_cosine",
    "hidden_mse",
    "jsd",
    "mix",
    "register",
    "reverse_kl",
    "sampled_kl",
    "self_target_nll",
    "teacher_needs",
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


@dataclass(frozen=True)
class Extras:
    """What a batch carries besides the logits and the teacher's top-k, aligned with [B, T] like them.

    sampled: the target tokens were sampled from the student (an on-policy batch), not chosen by the teacher.
    teacher_token_logprobs: [B, T] the teacher's log-prob (τ = 1, with c) of each target token; sampled batches.
    student_hidden, teacher_hidden: [B, T, n_layers, H] hidden states at the positions predicting each target
    token, the student's with c' and the teacher's with c, in the loss's `layers` order.
    """

    sampled: bool = False
    teacher_token_logprobs: Tensor | None = None
    student_hidden: Tensor | None = None
    teacher_hidden: Tensor | None = None


@dataclass(frozen=True)
class TeacherNeeds:
    """What a loss value reads from the teacher, so the cache and the training loop compute exactly that.

    topk: (top_k, temperature) of the top-k distribution along the targets (top_k None = the suite's), or None.
    sampled_logprobs: the teacher's log-prob of each student-sampled token (on-policy batches only).
    hidden_layers: hidden-state indices (0 = embeddings, -1 = last) read at the target positions.
    """

    topk: tuple[int | None, float] | None = None
    sampled_logprobs: bool = False
    hidden_layers: tuple[int, ...] = ()

    @property
    def any(self) -> bool:
        return self.topk is not None or self.sampled_logprobs or bool(self.hidden_layers)

    def __or__(self, other: TeacherNeeds) -> TeacherNeeds:
        """Both parts' needs; one top-k distribution and one layer list per loss, so they must agree."""
        if self.topk is not None and other.topk is not None and self.topk != other.topk:
            raise ValueError(
                "the parts read the teacher's top-k at different settings "
                f"(top_k, temperature = {self.topk} and {other.topk}); give them the same top_k and temperature"
            )
        if self.hidden_layers and other.hidden_layers and self.hidden_layers != other.hidden_layers:
            raise ValueError(f"the parts read different hidden layers ({self.hidden_layers}, {other.hidden_layers})")
        return TeacherNeeds(
            self.topk or other.topk,
            self.sampled_logprobs or other.sampled_logprobs,
            self.hidden_layers or other.hidden_layers,
        )


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class LossSpec(Entry):
    """One registered loss: its function, its parameter model, and what it reads from the teacher.

    needs_teacher: reads the teacher's top-k distribution (at its own `top_k` and `temperature`).
    needs: for losses whose needs depend on their parameters, effective params → TeacherNeeds.
    composite: contains other losses (mix, hidden_*), so it cannot be a part of another one.
    """

    needs_teacher: bool = False
    needs: Callable[[dict[str, Any]], TeacherNeeds] | None = None
    composite: bool = False


LOSSES: Registry[LossSpec] = Registry("loss", LossSpec)
register = LOSSES.register  # @register("name", needs_teacher=..., needs=..., composite=...)


def _spec_needs(spec: LossSpec, effective: dict[str, Any]) -> TeacherNeeds:
    if spec.needs is not None:
        return spec.needs(effective)
    if spec.needs_teacher:
        return TeacherNeeds(topk=(effective.get("top_k"), float(effective.get("temperature", 1.0))))
    return TeacherNeeds()


def teacher_needs(name: str, params: dict[str, Any] | None) -> TeacherNeeds:
    """What loss `name` with `params` reads from the teacher (a RegistryError for bad names or parameters)."""
    spec, effective = LOSSES.resolve(name, params)
    return _spec_needs(spec, effective)


def _split(part: dict[str, Any] | str) -> tuple[str, dict[str, Any]]:
    """A part's name and parameters: `{name, **params}` as validation leaves it (`registry.nested`), or a name."""
    if isinstance(part, str):
        return part, {}
    return part["name"], {k: v for k, v in part.items() if k != "name"}


def _part_needs(part: dict[str, Any] | str) -> TeacherNeeds:
    name, params = _split(part)
    return teacher_needs(name, params)


def compute_loss(
    name: str,
    student_logits: Tensor,
    target_ids: Tensor,
    mask: Tensor,
    teacher: TeacherTopK | None,
    extras: Extras | None = None,
    **params: object,
) -> Tensor:
    """Look up loss `name` and compute it (scalar); clear errors for unknown names/params/teacher."""
    spec, effective = LOSSES.resolve(name, params)
    if spec.needs_teacher and teacher is None:
        raise ValueError(f"loss {name!r} needs the teacher's top-k distribution, but teacher is None")
    return spec.fn(student_logits, target_ids, mask, teacher, extras, **effective)


def _call_part(
    part: dict[str, Any] | str,
    student_logits: Tensor,
    target_ids: Tensor,
    mask: Tensor,
    teacher: TeacherTopK | None,
    extras: Extras | None,
) -> Tensor:
    """One part's loss, as if it were the suite's loss."""
    name, params = _split(part)
    return compute_loss(name, student_logits, target_ids, mask, teacher, extras, **params)


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
    extras: Extras | None = None,
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
    extras: Extras | None = None,
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
    extras: Extras | None = None,
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
    extras: Extras | None = None,
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


# --------------------------------------------------------------------------- losses built from losses


def _single(entry: LossSpec) -> str | None:
    """A part of `mix` (or `sampled_kl`'s fallback) is one loss: combining combinations has two spellings."""
    if entry.name == "mix":
        return "'mix' cannot be a part of another loss; write the weights out in one mix"
    if entry.composite:
        return f"'{entry.name}' cannot be a part of another loss; give the mix as {entry.name}'s `token` instead"
    return None


def _token_part(entry: LossSpec) -> str | None:
    """The token loss beside a hidden-state term: any loss, a mix included, but not another hidden-state loss."""
    if entry.composite and entry.name != "mix":
        return f"'{entry.name}' cannot be the token loss of a hidden-state loss; give one hidden-state loss"
    return None


def _off_policy_part(entry: LossSpec) -> str | None:
    """sampled_kl's loss for batches the student did not sample: a token loss on the teacher's targets (a mix too)."""
    if entry.name == "sampled_kl":
        return "'sampled_kl' cannot be its own off-policy loss; name a loss on the teacher's targets"
    if entry.composite and entry.name != "mix":
        return f"'{entry.name}' cannot be sampled_kl's off-policy loss; give sampled_kl as {entry.name}'s `token`"
    return None


def _distinct(layers: tuple[int, ...]) -> tuple[int, ...]:
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers repeat: {list(layers)}")
    return layers


if TYPE_CHECKING:  # what the parameters hold; pydantic builds the checking types below at run time
    Part = dict[str, Any] | str  # a name when called directly; a normalised mapping after validation
    TokenPart = dict[str, Any] | str
    OffPolicyPart = dict[str, Any] | str
else:
    Part, TokenPart = nested(LOSSES, _single), nested(LOSSES, _token_part)
    OffPolicyPart = nested(LOSSES, _off_policy_part)
# Hidden-state indices as transformers numbers them: 0 = the embeddings, 1..L = after each decoder layer, -1 = last.
Layers = Annotated[tuple[Integer, ...], Field(min_length=1), AfterValidator(_distinct)]


def _mix_needs(p: dict[str, Any]) -> TeacherNeeds:
    return _part_needs(p["a"]) | _part_needs(p["b"])


@register("mix", composite=True, needs=_mix_needs, check=_mix_needs)
def mix(
    student_logits: Tensor,
    target_ids: Tensor,
    mask: Tensor,
    teacher: TeacherTopK | None,
    extras: Extras | None = None,
    *,
    a: Part = "self_target_nll",
    b: Part = "forward_kl",
    weight: UnitInterval = 0.5,
) -> Tensor:
    """weight·a + (1 − weight)·b: the composite recipes (α·NLL(ŷ) + (1 − α)·KL) as one axis value.

    `a` and `b` are any two single losses, each with its own parameters; the teacher supplies what either
    reads (so the two must agree on the top-k distribution they read: one top_k and one temperature).
    """
    la = _call_part(a, student_logits, target_ids, mask, teacher, extras)
    lb = _call_part(b, student_logits, target_ids, mask, teacher, extras)
    return weight * la + (1.0 - weight) * lb


def _hidden_pair(student_logits: Tensor, mask: Tensor, extras: Extras | None, name: str, n_layers: int) -> tuple:
    """Student and teacher hidden states at the masked positions: [N, n_layers, H] each, at least float32."""
    m = _positions(student_logits, mask)
    if extras is None or extras.student_hidden is None or extras.teacher_hidden is None:
        raise ValueError(f"loss {name!r} needs the student's and the teacher's hidden states, but extras has none")
    hs, ht = extras.student_hidden, extras.teacher_hidden
    bt = tuple(student_logits.shape[:2])
    if hs.dim() != 4 or hs.shape != ht.shape or tuple(hs.shape[:2]) != bt or hs.shape[2] != n_layers:
        raise ValueError(
            f"hidden states student {tuple(hs.shape)}, teacher {tuple(ht.shape)} must both be "
            f"[B, T, n_layers, H] with [B, T] = {bt} and n_layers = {n_layers}"
        )
    dtype = torch.promote_types(hs.dtype, torch.float32)
    return hs[m].to(dtype), ht.to(hs.device)[m].to(dtype)


def _hidden_needs(p: dict[str, Any]) -> TeacherNeeds:
    return TeacherNeeds(hidden_layers=tuple(p["layers"])) | _part_needs(p["token"])


@register("hidden_mse", composite=True, needs=_hidden_needs)
def hidden_mse(
    student_logits: Tensor,
    target_ids: Tensor,
    mask: Tensor,
    teacher: TeacherTopK | None,
    extras: Extras | None = None,
    *,
    layers: Layers = (-1,),
    weight: NonNegative = 1.0,
    token: TokenPart = "forward_kl",
) -> Tensor:
    """token + weight · mean over target tokens and layers of mean_d (h_s[d] − h_t[d])².

    h_s: the student's hidden state (with c') at the position predicting ŷ_t, h_t: the teacher's (with c) at
    the same target token; the layers are the model's hidden-state indices (0 = embeddings, -1 = last).
    Student and teacher must have the same hidden size (the workbench checks at model load).
    """
    hs, ht = _hidden_pair(student_logits, mask, extras, "hidden_mse", len(layers))
    term = _masked_mean((hs - ht).pow(2).mean(dim=(-2, -1)))
    return _call_part(token, student_logits, target_ids, mask, teacher, extras) + weight * term


@register("hidden_cosine", composite=True, needs=_hidden_needs)
def hidden_cosine(
    student_logits: Tensor,
    target_ids: Tensor,
    mask: Tensor,
    teacher: TeacherTopK | None,
    extras: Extras | None = None,
    *,
    layers: Layers = (-1,),
    weight: NonNegative = 1.0,
    token: TokenPart = "forward_kl",
) -> Tensor:
    """token + weight · mean over target tokens and layers of (1 − cos(h_s, h_t)): direction, not scale.

    The same hidden states as `hidden_mse`; cosine ignores their norms, so one weight suits every model size.
    """
    hs, ht = _hidden_pair(student_logits, mask, extras, "hidden_cosine", len(layers))
    cos = torch.nn.functional.cosine_similarity(hs, ht, dim=-1)  # [N, n_layers]
    term = _masked_mean((1.0 - cos).mean(-1))
    return _call_part(token, student_logits, target_ids, mask, teacher, extras) + weight * term


def _sampled_needs(p: dict[str, Any]) -> TeacherNeeds:
    return TeacherNeeds(sampled_logprobs=True) | _part_needs(p["off_policy"])


@register("sampled_kl", needs=_sampled_needs)
def sampled_kl(
    student_logits: Tensor,
    target_ids: Tensor,
    mask: Tensor,
    teacher: TeacherTopK | None,
    extras: Extras | None = None,
    *,
    estimator: Literal["k1", "k3"] = "k3",
    direction: Literal["reverse", "forward"] = "reverse",
    off_policy: OffPolicyPart = "self_target_nll",
) -> Tensor:
    """Per-token KL estimated from the student's and the teacher's log-prob of each student-sampled token.

    With y ~ q (the student, τ = 1, with c'), p the teacher (with c) and r = p(y)/q(y) (Schulman's estimators):
      reverse KL(q‖p): k1 = −log r = log q − log p;   k3 = (r − 1) − log r  (≥ 0, lower variance)
      forward KL(p‖q): k1 = r log r;                  k3 = r log r − (r − 1)
    all unbiased under y ~ q. No top-k and no vocabulary-wide teacher output is stored: one log-prob a token.

    The value is the estimate; its gradient is the estimate's own plus the score-function term
    sg(estimate)·∇log q(y), so in expectation over y ~ q it is the gradient of the named KL at that position,
    whichever estimator (differentiating k3 alone would give the forward KL's gradient, k1 alone zero).
    Batches whose targets the student did not sample (on_policy's other batches, a schedule's first phase)
    have no estimate: they train on `off_policy`, a loss on the teacher's targets.
    """
    if extras is None or not extras.sampled:
        return _call_part(off_policy, student_logits, target_ids, mask, teacher, extras)
    if extras.teacher_token_logprobs is None:
        raise ValueError("loss 'sampled_kl' needs the teacher's log-probs of the sampled tokens, but extras has none")
    m = _positions(student_logits, mask, target_ids)
    t_lp = extras.teacher_token_logprobs
    if tuple(t_lp.shape) != tuple(m.shape):
        raise ValueError(f"teacher_token_logprobs {tuple(t_lp.shape)} must be [B, T] = {tuple(m.shape)}")
    logp_all = _student_logp(student_logits, m, 1.0)
    log_q = logp_all.gather(-1, target_ids.to(logp_all.device)[m].unsqueeze(-1)).squeeze(-1)
    log_r = t_lp.to(device=log_q.device, dtype=log_q.dtype)[m] - log_q
    if direction == "reverse":
        est = -log_r if estimator == "k1" else torch.expm1(log_r) - log_r
    else:
        r_log_r = torch.exp(log_r) * log_r
        est = r_log_r if estimator == "k1" else r_log_r - torch.expm1(log_r)
    surrogate = est + est.detach() * (log_q - log_q.detach())
    return _masked_mean(surrogate)
