"""Teacher work, done once: targets ŷ and the teacher's top-k log-probs along them.

Nothing here depends on the student, so every trial that shares (teacher, c,
inputs, strategy, settings) reads the same cache entries; full-vocabulary
logits are never stored, only top-k plus one tail bucket per position. Hidden-state
losses add the teacher's hidden states at the chosen layers, target positions only
(float16); on-policy batches score the student's samples here too (not cached).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from harness import console, generation, softprompt
from harness import targets as target_registry
from harness.batching import chunks, make_batch, target_logits, target_logits_and_hidden
from harness.cache import Store
from harness.losses import TeacherTopK, topk_with_tail
from harness.models import LoadedModel


@dataclass
class TopKSeq:
    """Teacher top-k log-probs for one target sequence (length T)."""

    indices: torch.Tensor  # [T, k] int32
    logprobs: torch.Tensor  # [T, k] float32
    tail: torch.Tensor  # [T] float32


def targets(
    store: Store,
    teacher: LoadedModel,
    prompts: list[list[int]],
    references: list[str] | None,
    strategy: str,
    params: dict[str, Any],
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    stop_strings: tuple[str, ...],
) -> list[list[int]]:
    """ŷ for each teacher prompt, from the cache when the same request was made before.

    The seed is part of the request only for a sampling strategy (`TargetSpec.seeded`): the other
    strategies ignore it, so every training seed of a configuration reads the same entry.
    """
    effective = target_registry.cache_key_params(strategy, params)
    used_seed = target_registry.target_seed(strategy, seed)
    parts = {
        "teacher": teacher.fingerprint,
        "prompts": prompts,
        "strategy": strategy,
        "params": effective,
        "max_new_tokens": max_new_tokens,
        "stop": list(stop_strings),
        "seed": used_seed,
        "references": references if strategy == "ground_truth" else None,
    }

    def compute() -> list[list[int]]:
        with console.phase(f"teacher targets ({strategy}) for {len(prompts)} prompts"):
            return select()

    def select() -> list[list[int]]:
        return target_registry.select_targets(
            strategy,
            params,
            teacher.model,
            teacher.tokenizer,
            prompts,
            references,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=0 if used_seed is None else used_seed,
            stop_strings=stop_strings,
        )

    return store.get_or_compute("targets", parts, compute)


@torch.no_grad()
def score_topk(
    model: torch.nn.Module,
    prompts: list[list[int]],
    target_seqs: list[list[int]],
    *,
    k: int | None,
    temperature: float,
    batch_size: int,
    pad_id: int,
    progress: bool = False,
    reuse_prefix: bool = True,
    prefix: generation.Prefix | None = None,
) -> list[TopKSeq]:
    """The teacher's top-k (+ tail) log-probs at every target position, computed in batches.

    Teacher prompts share the context c: with `reuse_prefix` its KV cache is computed once and reused
    for every batch (`generation.continuation_logits`), as generation does; without it, each row
    runs its whole prompt (the path training uses for the student, `batching.target_logits`). `prefix`: a cache
    of the shared prefix computed before (`generation.prefill`), reused instead of prefilling again.
    """
    if len(prompts) != len(target_seqs):
        raise ValueError(f"{len(prompts)} prompts but {len(target_seqs)} targets")
    if not reuse_prefix:
        return _score_topk_plain(model, prompts, target_seqs, k, temperature, batch_size, pad_id, progress)
    out: list[TopKSeq | None] = [None] * len(prompts)
    kk = _k(model, k)
    bar = tqdm(total=len(prompts), desc="teacher top-k", disable=None if progress else True, leave=False)
    for idx, logits in generation.continuation_logits(model, prompts, target_seqs, batch_size, prefix=prefix):
        top = topk_with_tail(logits.float(), k, temperature)
        kk, width = top.indices.shape[-1], logits.shape[1]
        for j, i in enumerate(idx):
            s = width - len(target_seqs[i])  # targets are right-aligned
            out[i] = _seq(top, j, slice(s, width))
        bar.update(len(idx))
    bar.close()
    empty = TopKSeq(torch.zeros((0, kk), dtype=torch.int32), torch.zeros((0, kk)), torch.zeros((0,)))
    return [o if o is not None else empty for o in out]  # rows with an empty target


def _k(model: torch.nn.Module, k: int | None) -> int:
    vocab = int(generation._as_lm(model).config.vocab_size)
    return vocab if k is None else min(k, vocab)


def _seq(top: TeacherTopK, row: int, cols: slice) -> TopKSeq:
    return TopKSeq(
        top.indices[row, cols].to(torch.int32).cpu(), top.logprobs[row, cols].cpu(), top.tail[row, cols].cpu()
    )


def _score_topk_plain(
    model: torch.nn.Module,
    prompts: list[list[int]],
    target_seqs: list[list[int]],
    k: int | None,
    temperature: float,
    batch_size: int,
    pad_id: int,
    progress: bool,
) -> list[TopKSeq]:
    """Every row runs its whole prompt: right-padded batches through `target_logits`."""
    out: list[TopKSeq] = []
    device = next(model.parameters()).device
    ranges = chunks(len(prompts), batch_size)
    for r in tqdm(ranges, desc="teacher top-k", disable=None if progress else True, leave=False):
        batch = make_batch([prompts[i] for i in r], [target_seqs[i] for i in r], pad_id).to(device)
        top = topk_with_tail(target_logits(model, batch).float(), k, temperature)
        out += [_seq(top, j, slice(0, len(target_seqs[i]))) for j, i in enumerate(r)]
    return out


def topk(
    store: Store,
    teacher: LoadedModel,
    prompts: list[list[int]],
    target_seqs: list[list[int]],
    *,
    k: int,
    temperature: float,
    batch_size: int,
) -> list[TopKSeq]:
    """Cached `score_topk`: keyed by the teacher, the exact prompt/target ids, k and τ."""
    parts = {
        "teacher": teacher.fingerprint,
        "prompts": prompts,
        "targets": target_seqs,
        "k": k,
        "temperature": temperature,
    }

    def compute() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        with console.phase(f"teacher top-{k} log-probs for {len(prompts)} targets"):
            scored = score_topk(
                teacher.model,
                prompts,
                target_seqs,
                k=k,
                temperature=temperature,
                batch_size=batch_size,
                pad_id=teacher.tokenizer.pad_token_id,
                progress=True,
            )
        return [(s.indices, s.logprobs, s.tail) for s in scored]

    raw = store.get_or_compute("topk", parts, compute)
    return [TopKSeq(*t) for t in raw]


def prefix(store: Store, teacher: LoadedModel, prompts: list[list[int]]) -> generation.Prefix | None:
    """Cached `generation.prefill`: c's KV cache for scoring on-policy samples, keyed by the frozen teacher and
    c's tokens, so a study prefills c once, not once per trial (at a 4k-token c that prefill was about half of
    an on-policy trial on CPU). None where `prefill` would give none (no shared prefix worth it, a learned c')."""
    n = generation._usable_prefix(prompts, not softprompt.active(teacher.model))
    if not n:
        return None
    tokens = list(prompts[0][:n])
    device = generation._as_lm(teacher.model).device
    parts = {"teacher": teacher.fingerprint, "prefix": tokens, "dtype": str(next(teacher.model.parameters()).dtype)}

    def compute() -> list[tuple[torch.Tensor, torch.Tensor]]:
        with console.phase(f"teacher KV cache of the {n}-token shared context"):
            kv = generation._prefill(generation._as_lm(teacher.model), tokens)
        return [(k.cpu(), v.cpu()) for k, v in kv]

    kv = store.get_or_compute("prefix", parts, compute)
    return generation.Prefix(tuple(tokens), [(k.to(device), v.to(device)) for k, v in kv])


def stack(seqs: list[TopKSeq], T: int) -> TeacherTopK:
    """Pad a batch of per-sequence top-k tensors to [B, T, k] for the loss functions."""
    k = seqs[0].indices.shape[-1]
    B = len(seqs)
    idx = torch.zeros((B, T, k), dtype=torch.long)
    logp = torch.full((B, T, k), -1e4)
    logp[..., 0] = 0.0  # padding rows: a valid one-hot distribution; masked out by the loss anyway
    tail = torch.full((B, T), float("-inf"))
    for i, s in enumerate(seqs):
        n = s.indices.shape[0]
        idx[i, :n] = s.indices.long()
        logp[i, :n] = s.logprobs
        tail[i, :n] = s.tail
    return TeacherTopK(indices=idx, logprobs=logp, tail=tail)


def _compact(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """float16 on disk (half of float32) unless a value is beyond its range; then bfloat16 (float32's range)."""
    fits = all(bool(r.abs().max() <= torch.finfo(torch.float16).max) for r in rows if r.numel())
    return [r.to(torch.float16 if fits else torch.bfloat16) for r in rows]


@torch.no_grad()
def score_hidden(
    model: torch.nn.Module,
    prompts: list[list[int]],
    target_seqs: list[list[int]],
    *,
    layers: tuple[int, ...],
    batch_size: int,
    pad_id: int,
    progress: bool = False,
) -> list[torch.Tensor]:
    """The teacher's hidden states at the chosen layers, at the positions predicting each target token: one
    [T, len(layers), H] tensor per sequence, on the CPU, compact (float16)."""
    out: list[torch.Tensor] = []
    device = next(model.parameters()).device
    for r in tqdm(chunks(len(prompts), batch_size), desc="teacher hidden", disable=None if progress else True):
        batch = make_batch([prompts[i] for i in r], [target_seqs[i] for i in r], pad_id).to(device)
        _, hidden = target_logits_and_hidden(model, batch, layers)
        out += [hidden[j, : len(target_seqs[i])].float().cpu() for j, i in enumerate(r)]
    return _compact(out)


def hidden(
    store: Store,
    teacher: LoadedModel,
    prompts: list[list[int]],
    target_seqs: list[list[int]],
    *,
    layers: tuple[int, ...],
    batch_size: int,
) -> list[torch.Tensor]:
    """Cached `score_hidden`: keyed by the teacher, the exact prompt/target ids and the layers (as absolute
    indices, so -1 and the last layer's number share an entry)."""
    parts = {
        "teacher": teacher.fingerprint,
        "prompts": prompts,
        "targets": target_seqs,
        "layers": list(layers),
        "dtype": "float16",
    }
    return store.get_or_compute(
        "hidden",
        parts,
        lambda: score_hidden(
            teacher.model,
            prompts,
            target_seqs,
            layers=layers,
            batch_size=batch_size,
            pad_id=teacher.tokenizer.pad_token_id,
            progress=True,
        ),
    )


@torch.no_grad()
def score_token_logprobs(
    model: torch.nn.Module,
    prompts: list[list[int]],
    target_seqs: list[list[int]],
    *,
    batch_size: int,
    pad_id: int,
) -> list[torch.Tensor]:
    """log Pr_t(y_t | c, z, y_<t) (τ = 1) of each target token: one [T] tensor per sequence, all `sampled_kl`
    keeps of the teacher (no top-k)."""
    out: list[torch.Tensor] = []
    device = next(model.parameters()).device
    for r in chunks(len(prompts), batch_size):
        batch = make_batch([prompts[i] for i in r], [target_seqs[i] for i in r], pad_id).to(device)
        logp = torch.log_softmax(target_logits(model, batch).float(), dim=-1)
        token = logp.gather(-1, batch.target_ids.unsqueeze(-1)).squeeze(-1).cpu()
        out += [token[j, : len(target_seqs[i])] for j, i in enumerate(r)]
    return out


def stack_rows(rows: list[torch.Tensor], T: int) -> torch.Tensor:
    """Pad per-sequence tensors [T_i, ...] with zeros to [B, T, ...] (padding positions are masked out)."""
    dtype = functools.reduce(torch.promote_types, [r.dtype for r in rows])
    padded = torch.zeros((len(rows), T, *rows[0].shape[1:]), dtype=dtype)
    for i, row in enumerate(rows):
        padded[i, : row.shape[0]] = row
    return padded
