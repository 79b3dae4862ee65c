"""Intrinsic metrics on held-out inputs: how close is the student (c') to the teacher (c)?

Both use the teacher's cached greedy targets on the held-out inputs: the token
KL is measured along them, and greedy agreement compares the student's own
greedy answer with them.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from harness import generation
from harness.batching import chunks, make_batch, target_logits
from harness.losses import compute_loss
from harness.teacher import TopKSeq, stack


@torch.no_grad()
def heldout_kl(
    model: torch.nn.Module,
    prompts: list[list[int]],
    targets: list[list[int]],
    teacher: list[TopKSeq],
    *,
    pad_id: int,
    batch_size: int,
) -> float:
    """Mean token KL(teacher with c ‖ student with c') over the teacher's held-out targets (top-k + tail)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for r in chunks(len(prompts), batch_size):
        batch = make_batch([prompts[i] for i in r], [targets[i] for i in r], pad_id)
        dist = stack([teacher[i] for i in r], batch.target_ids.shape[1])
        batch = batch.to(device)
        dist = type(dist)(*(t.to(device) for t in (dist.indices, dist.logprobs, dist.tail)))
        logits = target_logits(model, batch).float()
        n = int(batch.mask.sum())
        total += float(compute_loss("forward_kl", logits, batch.target_ids, batch.mask, dist)) * n
        count += n
    return total / max(count, 1)


def greedy_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_strings: tuple[str, ...],
) -> list[list[int]]:
    """The model's greedy continuation of each prompt."""
    outs = generation.generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, stop_strings=stop_strings
    )
    return [o[0] for o in outs]


def agreement(a: list[list[int]], b: list[list[int]], tokenizer: object) -> float:
    """Fraction of items whose decoded answers are identical (whitespace-stripped, specials dropped)."""
    if not a:
        return 0.0

    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True).strip()  # type: ignore[attr-defined]

    return sum(text(x) == text(y) for x, y in zip(a, b, strict=True)) / len(a)
