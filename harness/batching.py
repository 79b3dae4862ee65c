"""Prompt + target batches and the logits that predict the target tokens.

Teacher scoring, student training and held-out KL all need the same thing: the
model's logits at exactly the positions that predict the target tokens. Only
those positions go through the LM head (the vocabulary projection dominates the
cost for short targets after a long context).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] right-padded prompt + target
    attention_mask: torch.Tensor  # [B, L]
    positions: torch.Tensor  # [B, T] index of the position predicting each target token
    target_ids: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T] True on real target tokens

    def to(self, device: torch.device) -> Batch:
        """On CUDA the CPU-built tensors go through pinned memory with non_blocking copies: the host queues the
        step's kernels instead of waiting for each copy."""
        return Batch(
            *(
                to_device(t, device)
                for t in (self.input_ids, self.attention_mask, self.positions, self.target_ids, self.mask)
            )
        )

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor onto `device`: pinned + non_blocking when that is CUDA, a plain copy (or none) otherwise."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def make_batch(prompts: list[list[int]], targets: list[list[int]], pad_id: int) -> Batch:
    """Right-pad prompt+target pairs and record where each target token is predicted from."""
    if len(prompts) != len(targets):
        raise ValueError("prompts and targets differ in number")
    seqs = [p + t for p, t in zip(prompts, targets, strict=True)]
    L = max(len(s) for s in seqs)
    T = max(1, max(len(t) for t in targets))
    B = len(seqs)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    positions = torch.zeros((B, T), dtype=torch.long)
    target_ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.bool)
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        s = p + t
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
        n = len(t)
        if n:
            positions[i, :n] = torch.arange(len(p) - 1, len(p) - 1 + n)
            target_ids[i, :n] = torch.tensor(t, dtype=torch.long)
            mask[i, :n] = True
    return Batch(input_ids, attn, positions, target_ids, mask)


def target_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits [B, T, V] at the positions predicting each target token (padding rows are junk, masked later).

    The model's own forward computes them, so every family's final step after the LM head (Gemma-2's
    soft-cap, Granite's logits_scaling, Cohere's logit_scale) applies exactly as in generation and lm-eval.
    `logits_to_keep` as a [B, T] position tensor keeps the LM head on the target positions only.
    """
    return _target_forward(model, batch, ())[0]


def target_logits_and_hidden(
    model: torch.nn.Module, batch: Batch, layers: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, T, V] and hidden states [B, T, len(layers), H] at the positions predicting each target
    token, from one forward. `layers` index the model's hidden states (0 = embeddings, -1 = the last)."""
    logits, hidden = _target_forward(model, batch, tuple(layers))
    assert hidden is not None
    return logits, hidden


def _target_forward(
    model: torch.nn.Module, batch: Batch, layers: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    if layers:
        kwargs["output_hidden_states"] = True
    if _accepts_logits_to_keep(model):
        out = model(**kwargs, logits_to_keep=batch.positions)
        logits = out.logits
        if logits.shape[:2] != batch.positions.shape:
            log.warning("%s ignores per-row logits_to_keep; computing full logits", type(model).__name__)
            logits = None
    else:
        logits = None
    if logits is None:
        out = model(**kwargs)  # full [B, L, V]: slower, still the model's own logits
        idx = batch.positions.unsqueeze(-1).expand(-1, -1, out.logits.size(-1))
        logits = torch.gather(out.logits, 1, idx)
    if not layers:
        return logits, None
    states = out.hidden_states
    idx = batch.positions.unsqueeze(-1).expand(-1, -1, states[0].size(-1))
    return logits, torch.stack([torch.gather(states[i], 1, idx) for i in layers], dim=2)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (possibly PEFT-wrapped) model's forward takes `logits_to_keep`."""
    get_base = getattr(model, "get_base_model", None)  # a peft wrapper's own forward takes **kwargs
    base = get_base() if callable(get_base) else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def chunks(n: int, size: int) -> list[range]:
    """Index ranges of at most `size` items."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]
