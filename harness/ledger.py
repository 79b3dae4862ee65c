"""A trial's cost ledger and the fidelity of its teacher top-k: what a result cost, beside how good it is.

Logged to MLflow with the trial's metrics (seed runs; the configuration run holds the mean over seeds), as
`cost/*` and `topk/*`, so the report can put quality against compute.

How FLOPs are estimated (Kaplan et al. 2020): N = non-embedding parameters (every parameter except the input
embedding matrix and an untied LM head), 2·N FLOPs per token for a forward pass, 6·N per token trained
(forward + backward). Attention's context-dependent term and the LM head's 2·d·V per token are left out, so
the estimate is a lower bound that ranks runs of one model size, not an exact count. The figures are the work
the trial's outputs require, cached or not: a teacher cache hit makes `cost/teacher_s` near 0, not the FLOPs.

- teacher: generating ŷ (prefill of (c, z) plus one forward per generated token: 2·N·(|c, z| + |ŷ|)) and, when
  the loss reads the teacher's top-k, scoring (c, z, ŷ) once more (2·N·(|c, z| + |ŷ|)). No prefix reuse is
  credited, so this is what a trainer without the harness's cache would spend.
- student: 6·N·train_tokens (prompt + target tokens through the student in training). A LoRA student still
  runs the full forward and backward through the frozen weights; 6·N overstates it by about N per token
  (no weight gradients), which is stated, not corrected.
- on-policy batches (`on_policy` targets, a schedule's second phase) add work no cache holds: the student samples
  ŷ (2·N_s·(|c', z| + |ŷ|), in the student's FLOPs) and the teacher scores (c, z, ŷ) once per thing the loss reads
  (2·N·tokens, in the teacher's FLOPs; `cost/onpolicy_teacher_tokens`). With `teacher: ema` that teacher is the
  student's weights averaged (N = N_s), and each EMA update costs 3 FLOPs per averaged value (a lerp:
  `cost/ema_update_flops`, in the total), with `cost/ema_updates` updates and `cost/ema_bytes` of memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from harness.cache import encode

if TYPE_CHECKING:
    import torch

    from harness.ema import EmaTeacher
    from harness.teacher import TopKSeq
    from harness.train import Example, TrainResult

__all__ = ["combine", "cost_metrics", "non_embedding_params", "topk_fidelity", "trial_ledger"]

PREFIXES = ("cost/", "topk/")
LOW_COVERAGE = 0.9  # mean kept teacher mass below this for the chosen k: the report warns


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters less the input embeddings and an untied output head (Kaplan's N); shared tensors counted once."""
    skip: set[int] = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            skip.add(module.weight.data_ptr())
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        ptr = p.data_ptr()
        if ptr in seen or ptr in skip:
            continue
        seen.add(ptr)
        n += p.numel()
    return n


def topk_fidelity(tops: Sequence[TopKSeq | None]) -> dict[str, float]:
    """How much of the teacher's probability the kept top-k covers, over every target position.

    coverage = 1 − tail mass at a position (the tail is stored as a log-mass); mean and 5th percentile over
    positions, the mean tail mass, and k. Empty when the loss read no top-k.
    """
    import torch

    tails = [t.tail.reshape(-1).double() for t in tops if t is not None and t.tail.numel()]
    if not tails:
        return {}
    k = next(t.indices.shape[-1] for t in tops if t is not None and t.tail.numel())
    tail = torch.exp(torch.cat(tails))  # -inf (k == V) gives exactly 0
    cover = 1.0 - tail
    return {
        "topk/k": float(k),
        "topk/coverage_mean": float(cover.mean()),
        "topk/coverage_p05": float(torch.quantile(cover, 0.05)),
        "topk/tail_mass_mean": float(tail.mean()),
        "topk/positions": float(cover.numel()),
    }


def cache_bytes_per_token(tops: Sequence[TopKSeq | None]) -> float | None:
    """Bytes the teacher cache's top-k entry takes per target token, measured on the entry's own encoding."""
    rows = [(t.indices, t.logprobs, t.tail) for t in tops if t is not None]
    tokens = sum(int(t.tail.numel()) for t in tops if t is not None)
    if not rows or tokens == 0:
        return None
    return len(encode(rows)) / tokens


def cost_metrics(
    *,
    n_teacher: int,
    n_student: int,
    teacher_prompt_tokens: int,
    generated_tokens: int,
    scored_tokens: int,
    train_tokens: int,
    teacher_s: float,
    train_s: float,
    scoring_s: float,
    wall_s: float,
    peak_memory_mb: float,
    cache_bytes_per_token: float | None = None,
    onpolicy_teacher_tokens: int = 0,
    onpolicy_student_tokens: int = 0,
    onpolicy_teacher_params: int | None = None,
    ema_updates: int = 0,
    ema_elements: int = 0,
    ema_bytes: int = 0,
) -> dict[str, float]:
    """The `cost/` metrics from token counts and timers (FLOPs as the module docstring says)."""
    n_scorer = n_teacher if onpolicy_teacher_params is None else onpolicy_teacher_params
    onpolicy_flops = 2.0 * n_scorer * onpolicy_teacher_tokens
    teacher_flops = 2.0 * n_teacher * (teacher_prompt_tokens + generated_tokens + scored_tokens) + onpolicy_flops
    student_flops = 6.0 * n_student * train_tokens + 2.0 * n_student * onpolicy_student_tokens
    ema_flops = 3.0 * ema_elements * ema_updates
    out = {
        "cost/teacher_flops": teacher_flops,
        "cost/student_flops": student_flops,
        "cost/total_flops": teacher_flops + student_flops + ema_flops,
        "cost/teacher_params": float(n_teacher),
        "cost/student_params": float(n_student),
        "cost/tokens_generated": float(generated_tokens),
        "cost/tokens_scored": float(scored_tokens),
        "cost/train_tokens": float(train_tokens),
        "cost/teacher_s": teacher_s,
        "cost/train_s": train_s,
        "cost/scoring_s": scoring_s,
        "cost/other_s": max(wall_s - teacher_s - train_s - scoring_s, 0.0),
        "cost/wall_s": wall_s,
        "cost/peak_memory_mb": peak_memory_mb,
    }
    if cache_bytes_per_token is not None:
        out["cost/cache_bytes_per_token"] = cache_bytes_per_token
    if onpolicy_teacher_tokens or onpolicy_student_tokens:
        out["cost/onpolicy_teacher_tokens"] = float(onpolicy_teacher_tokens)
        out["cost/onpolicy_teacher_flops"] = onpolicy_flops
    if ema_elements:
        out.update({"cost/ema_updates": float(ema_updates), "cost/ema_update_flops": ema_flops})
        out["cost/ema_bytes"] = float(ema_bytes)
    return out


def trial_ledger(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    phase_examples: Sequence[Sequence[Example]],
    *,
    train_tokens: int,
    teacher_s: float,
    train_s: float,
    scoring_s: float,
    wall_s: float,
    peak_memory_mb: float,
    onpolicy: TrainResult | None = None,
    ema: EmaTeacher | None = None,
) -> dict[str, float]:
    """A trial's `cost/` and `topk/` metrics from its examples (every phase), its timers, the training loop's
    on-policy counts and the EMA teacher, if any."""
    examples = [e for phase in phase_examples for e in phase]
    prompts = sum(len(e.teacher_prompt or e.prompt) for e in examples)
    generated = sum(len(e.target) for e in examples)
    tops = [e.teacher for e in examples]
    scored = sum(len(e.teacher_prompt or e.prompt) + len(e.target) for e in examples if e.teacher is not None)
    out = cost_metrics(
        n_teacher=non_embedding_params(teacher),
        n_student=non_embedding_params(student),
        teacher_prompt_tokens=prompts,
        generated_tokens=generated,
        scored_tokens=scored,
        train_tokens=train_tokens,
        teacher_s=teacher_s,
        train_s=train_s,
        scoring_s=scoring_s,
        wall_s=wall_s,
        peak_memory_mb=peak_memory_mb,
        cache_bytes_per_token=cache_bytes_per_token(tops),
        onpolicy_teacher_tokens=onpolicy.onpolicy_teacher_tokens if onpolicy else 0,
        onpolicy_student_tokens=(
            onpolicy.onpolicy_student_prompt_tokens + onpolicy.onpolicy_generated_tokens if onpolicy else 0
        ),
        onpolicy_teacher_params=non_embedding_params(student) if ema is not None else None,
        ema_updates=ema.updates if ema is not None else 0,
        ema_elements=ema.elements if ema is not None else 0,
        ema_bytes=ema.nbytes if ema is not None else 0,
    )
    out.update(topk_fidelity(tops))
    return out


def combine(ledgers: Sequence[dict[str, Any]]) -> dict[str, float]:
    """A configuration's ledger: the mean over its seeds of each value they all report (finite ones)."""
    keys = set.intersection(*(set(d) for d in ledgers)) if ledgers else set()
    out: dict[str, float] = {}
    for k in sorted(keys):
        vals = [float(d[k]) for d in ledgers if math.isfinite(float(d[k]))]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out
