"""Batched generation and sequence scoring for the teacher cache and the training loop.

Teacher prompts share a long common prefix (instruction + demonstrations). Prefilling it once and
reusing its KV cache for every batch is the main speedup over naive batched generation (2.5× measured
with a 1.2k-token context on CPU), so `generate` and `sequence_logprobs` both do it by default; both
paths give the same tokens/scores.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from tqdm.auto import tqdm
from transformers import (
    DynamicCache,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from harness import shared_prefix, softprompt

MIN_SHARED_PREFIX = 32  # below this, a separate prefill costs more than it saves


# ----------------------------------------------------------------------------- helpers


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return n


def _usable_prefix(prompts: Sequence[Sequence[int]], reuse_prefix: bool) -> int:
    """Prefix to prefill once; every prompt keeps ≥ 1 own token so generate has something to feed."""
    if not reuse_prefix or not prompts:
        return 0
    p = min(common_prefix_length(prompts), min(len(x) for x in prompts) - 1)
    return p if p >= MIN_SHARED_PREFIX else 0


def _batches(order: list[int], batch_size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a rectangle: decoder-only models must end every row on a real token."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[r, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def _prefill(model: PreTrainedModel, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run the shared prefix once; keep its per-layer (key, value) tensors with batch size 1."""
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=model.device)
    out = model(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
    return [(k, v) for k, v, *_ in out.past_key_values]


@dataclass(frozen=True)
class Prefix:
    """A shared prompt prefix and its per-layer (key, value) cache (batch 1), computed once by `prefill` and
    handed to every `continuation_logits` call over prompts that start with it: on-policy training scores each
    step's samples with the same c, so c is prefilled once per trial instead of once per step. Valid only for
    the weights it was computed with (a frozen teacher)."""

    tokens: tuple[int, ...]
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def prefill(model: torch.nn.Module, prompts: Sequence[Sequence[int]]) -> Prefix | None:
    """The prefix every prompt shares (each keeping ≥ 1 own token), prefilled once; None where there is none
    worth reusing, or where a learned c' is active (its hooks shift positions)."""
    lm = _as_lm(model)
    n = _usable_prefix(prompts, not softprompt.active(model))
    return Prefix(tuple(prompts[0][:n]), _prefill(lm, prompts[0][:n])) if n else None


def _expand_cache(model: PreTrainedModel, kv: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> DynamicCache:
    """A fresh cache per batch: generation appends to (and beam search reorders) the cache it is given."""
    data = [(k.repeat(rows, 1, 1, 1), v.repeat(rows, 1, 1, 1)) for k, v in kv]
    return DynamicCache(data, config=model.config)


def _prefix_cache(model: PreTrainedModel, kv: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> DynamicCache:
    """The batch's cache over the shared prefix. Where `shared_prefix` supports the model, the prefix stays one
    batch-1 tensor per layer that every row attends to (no copy, nothing concatenated per decoding step: at a
    4k-token prefix the copies were most of a batch's time); otherwise it is copied into each of the `rows`.
    Use it under `_attending`."""
    if shared_prefix.supported(model):
        return shared_prefix.SharedPrefixCache(kv)
    return _expand_cache(model, kv, rows)


def _attending(model: PreTrainedModel, cache: DynamicCache | None) -> contextlib.AbstractContextManager:
    """The shared-prefix attention while `cache` is a `SharedPrefixCache`; nothing otherwise."""
    if isinstance(cache, shared_prefix.SharedPrefixCache):
        return shared_prefix.attending(model, cache)
    return contextlib.nullcontext()


def _batch_inputs(
    batch: list[list[int]], prefix_len: int, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """[prefix | left-padded suffix] ids and mask; with prefix_len 0 this is plain left padding.

    Padding sits between the prefix and the suffix with mask 0, so HF's position ids (mask cumsum − 1,
    `_prepare_position_ids_for_generation`) give every real token the position it has in its own prompt.
    """
    suffix_ids, suffix_mask = _left_pad([p[prefix_len:] for p in batch], pad_id, device)
    if prefix_len == 0:
        return suffix_ids, suffix_mask
    prefix = torch.tensor(batch[0][:prefix_len], dtype=torch.long, device=device).expand(len(batch), -1)
    ids = torch.cat([prefix, suffix_ids], dim=1)
    mask = torch.cat([torch.ones_like(prefix), suffix_mask], dim=1)
    return ids, mask


class _StopOnStrings(StoppingCriteria):
    """Stops a row once its generated text contains a stop string (the cut itself happens afterwards)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_strings: tuple[str, ...], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        done = [any(s in t for s in self.stop_strings) for t in texts]
        return cast(torch.BoolTensor, torch.tensor(done, dtype=torch.bool, device=input_ids.device))


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """One id list → its text, special tokens kept (transformers types `decode` as str or list of str)."""
    return cast(str, tokenizer.decode(ids, skip_special_tokens=False))


def _finish(
    tokens: list[int], tokenizer: PreTrainedTokenizerBase, eos_id: int, stop_strings: tuple[str, ...]
) -> list[int]:
    """Cut after the first eos (kept: the student must learn to stop); a stop string is replaced by eos.

    Tokens before the stop string are the model's own; only the piece of the token that straddles the
    stop string is re-tokenized.
    """
    if eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id) + 1]
    body = tokens[:-1] if tokens and tokens[-1] == eos_id else tokens
    if not stop_strings or not body:
        return tokens
    text = _decode(tokenizer, body)
    if not any(s in text for s in stop_strings):
        return tokens
    for i in range(len(body)):  # first token whose text completes a stop string
        upto = _decode(tokenizer, body[: i + 1])
        cuts = [upto.find(s) for s in stop_strings if s in upto]
        if cuts:
            break
    keep_text = upto[: min(cuts)]
    head = body[:i]
    head_text = _decode(tokenizer, head)
    if keep_text.startswith(head_text):
        extra = keep_text[len(head_text) :]
        tail = tokenizer(extra, add_special_tokens=False)["input_ids"] if extra else []
        return head + tail + [eos_id]
    return tokenizer(keep_text, add_special_tokens=False)["input_ids"] + [eos_id]


def _seed_for(seed: int, batch_index: int) -> int:
    """Independent, reproducible seed per batch, so a rerun reproduces every batch exactly."""
    return (seed * 1_000_003 + batch_index * 7919 + 1) % (2**63 - 1)


def _as_lm(model: torch.nn.Module) -> PreTrainedModel:
    """The model as transformers types it: a causal LM, or a peft wrapper of one (which forwards its attributes)."""
    return cast(PreTrainedModel, model)


def _progress(total: int, enabled: bool, desc: str) -> tqdm[Any]:
    """A bar only where someone watches: tqdm's disable=None turns it off when stderr is not a terminal."""
    return tqdm(total=total, disable=None if enabled else True, desc=desc, unit="prompt")


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_beams: int = 1,
    num_return_sequences: int = 1,
    length_penalty: float = 0.0,
    seed: int = 0,
    stop_strings: tuple[str, ...] = (),
    progress: bool = False,
    reuse_prefix: bool = True,
) -> list[list[list[int]]]:
    """Continuations of already-templated prompts: `num_return_sequences` token lists per prompt.

    Each continuation ends right after the first eos (kept) or at a stop string (replaced by eos), or
    runs to `max_new_tokens` without eos. Prompts are sorted by length into batches to cut padding and
    answers come back in the original order. Sampling is seeded per batch from `seed`. Beam search
    ranks beams by summed log-prob (`length_penalty` 0; HF's default 1.0 ranks by the mean).
    """
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) > num_beams ({num_beams})")
    lm = _as_lm(model)
    device = lm.device
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    gen_kwargs: dict[str, object] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
    )
    if num_beams > 1:
        gen_kwargs["length_penalty"] = length_penalty
    if do_sample:  # top_k=0: only temperature and top_p shape the distribution, as the suite says
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    config = GenerationConfig(**gen_kwargs)
    expand = num_beams if num_beams > 1 else num_return_sequences

    prefix_len = _usable_prefix(prompts, reuse_prefix and not softprompt.active(model))
    prefix_kv = _prefill(lm, prompts[0][:prefix_len]) if prefix_len else None

    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[list[int]] | None] = [None] * len(prompts)
    bar = _progress(len(prompts), progress, "generate")
    cuda_devices = [device] if device.type == "cuda" else []
    for b, idx in enumerate(_batches(order, batch_size)):
        batch = [prompts[i] for i in idx]
        ids, mask = _batch_inputs(batch, prefix_len, pad_id, device)
        extra: dict[str, object] = {}
        cache = _prefix_cache(lm, prefix_kv, len(batch) * expand) if prefix_kv is not None else None
        if cache is not None:
            extra["past_key_values"] = cache
        if stop_strings:
            extra["stopping_criteria"] = StoppingCriteriaList([_StopOnStrings(tokenizer, stop_strings, ids.shape[1])])
        with torch.random.fork_rng(devices=cuda_devices), _attending(lm, cache):
            torch.manual_seed(_seed_for(seed, b))
            generate = cast(Any, lm).generate  # its `self` is typed as a private transformers Protocol
            out = generate(input_ids=ids, attention_mask=mask, generation_config=config, **extra)
        new = out[:, ids.shape[1] :].tolist()
        per_row = num_return_sequences
        for r, i in enumerate(idx):
            rows = new[r * per_row : (r + 1) * per_row]
            results[i] = [_finish(t, tokenizer, eos_id, stop_strings) for t in rows]
        bar.update(len(idx))
    bar.close()
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------- scoring


def _accepts(model: torch.nn.Module, arg: str) -> bool:
    base = getattr(model, "get_base_model", lambda: model)()  # a peft wrapper's forward takes **kwargs
    return arg in inspect.signature(base.forward).parameters


@torch.no_grad()
def continuation_logits(
    model: torch.nn.Module,
    prompts: list[list[int]],
    continuations: list[list[int]],
    batch_size: int = 16,
    *,
    reuse_prefix: bool = True,
    prefix: Prefix | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(row indices, logits [B, C, V]) per batch: the model's logits predicting each continuation token.

    Continuations are right-aligned: row r's tokens sit in the last len(continuations[r]) of the C
    columns (the rest is junk). The shared prompt prefix is prefilled once and its KV cache reused for
    every batch, and only the C + 1 last positions reach the LM head (`logits_to_keep`), so neither
    the shared context nor the vocabulary projection is recomputed per row. Batches with no
    continuation token are skipped. `prefix` (from `prefill`, same weights) is used instead of prefilling:
    every prompt must start with its tokens and keep at least one of its own.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if not prompts:
        return
    lm = _as_lm(model)
    device = lm.device
    pad_id = 0
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None
    if prefix is not None and reuse_prefix and not softprompt.active(model):
        prefix_len, prefix_kv = len(prefix.tokens), prefix.kv
        if any(len(p) <= prefix_len or tuple(p[:prefix_len]) != prefix.tokens for p in prompts):
            raise ValueError(f"every prompt must start with the given {prefix_len}-token prefix and extend it")
    else:
        prefix_len = _usable_prefix(prompts, reuse_prefix and not softprompt.active(model))
        prefix_kv = _prefill(lm, prompts[0][:prefix_len]) if prefix_len else None
    keep_arg = _accepts(model, "logits_to_keep")

    full = [list(p) + list(c) for p, c in zip(prompts, continuations, strict=True)]
    order = sorted(range(len(full)), key=lambda i: -len(full[i]))
    for idx in _batches(order, batch_size):
        max_cont = max(len(continuations[i]) for i in idx)
        if max_cont == 0:
            continue
        ids, mask = _batch_inputs([full[i] for i in idx], prefix_len, pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs: dict[str, object] = {"attention_mask": mask, "use_cache": prefix_kv is not None}
        cache = _prefix_cache(lm, prefix_kv, len(idx)) if prefix_kv is not None else None
        if cache is not None:
            kwargs["past_key_values"] = cache
        if keep_arg:
            kwargs["logits_to_keep"] = max_cont + 1
        with _attending(lm, cache):
            logits = model(input_ids=ids[:, prefix_len:], position_ids=positions[:, prefix_len:], **kwargs).logits
        yield idx, logits[:, -(max_cont + 1) : -1]  # position t predicts token t + 1


@torch.no_grad()
def sequence_logprobs(
    model: torch.nn.Module,
    prompts: list[list[int]],
    continuations: list[list[int]],
    batch_size: int = 16,
    *,
    reuse_prefix: bool = True,
) -> list[float]:
    """Σ log Pr(continuation | prompt) per pair, batched; used to re-rank samples (best_of)."""
    scores = [0.0] * len(prompts)
    for idx, raw in continuation_logits(model, prompts, continuations, batch_size, reuse_prefix=reuse_prefix):
        logits = raw.float()
        max_cont = logits.shape[1]
        device = logits.device
        targets = torch.tensor(
            [[0] * (max_cont - len(continuations[i])) + list(continuations[i]) for i in idx], device=device
        )
        token_lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        lengths = torch.tensor([len(continuations[i]) for i in idx], device=device)
        cols = torch.arange(max_cont, device=device)
        valid = cols.unsqueeze(0) >= (max_cont - lengths).unsqueeze(1)
        sums = torch.where(valid, token_lp, torch.zeros_like(token_lp)).sum(-1).tolist()
        for i, s in zip(idx, sums, strict=True):
            scores[i] = float(s)
    return scores
