"""Attention over a shared prefix's KV cache held once, with batch size 1, for every row of a batch.

The prefix reuse in `generation` used to copy the prefix's keys and values into every row of every batch
(`repeat`), and then HF's cache concatenated that whole copy again at each decoding step; on CPU, SDPA with a
padding mask also expands the grouped key/value heads to the query heads (`repeat_kv`). With a 4k-token
context that memory traffic, not arithmetic, was most of a batch's time. Here the cache keeps only each row's
own tokens; the attention function attends to the prefix (one batch-1 tensor per layer, the queries of every
row and head group stacked against it in one matmul, no copy) and to the row's own tokens separately, and
merges the two softmaxes by their log-sum-exp. The result is the same attention, up to float rounding.

Used only for models whose every layer is full attention under 'sdpa' or 'eager' (`supported`); any other
model keeps the copying path.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any, cast

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = ["NAME", "SharedPrefixCache", "attending", "supported"]

NAME = "harness_shared_prefix"
_CHUNK_ELEMENTS = 1 << 24  # prefix scores computed in chunks of at most this many floats (64 MB)
_ACTIVE: contextvars.ContextVar[SharedPrefixCache | None] = contextvars.ContextVar("shared_prefix", default=None)


class SharedPrefixLayer(DynamicLayer):
    """A layer's cache: the prefix's (key, value) with batch 1, and the rows' own tokens after it (grown as usual)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.prefix_keys, self.prefix_values = keys, values
        self.prefix_len = int(keys.shape[-2])

    def get_seq_length(self) -> int:
        """The prefix counts: positions and masks span [prefix | own tokens]."""
        return self.prefix_len + super().get_seq_length()


class SharedPrefixCache(DynamicCache):
    """A fresh per-batch cache over the same prefix tensors (nothing copied); `update` returns only own tokens."""

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        Cache.__init__(self, layers=[SharedPrefixLayer(k, v) for k, v in kv])


def supported(model: torch.nn.Module) -> bool:
    """Full attention in every layer, through 'sdpa' or 'eager' (what this function reproduces)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    text = config.get_text_config(decoder=True)
    types = getattr(text, "layer_types", None) or ["full_attention"]
    return all(t == "full_attention" for t in types) and not getattr(text, "sliding_window", None)


@contextlib.contextmanager
def attending(model: torch.nn.Module, cache: SharedPrefixCache) -> Iterator[None]:
    """Within the block the model's attention reads `cache`'s prefix; the implementation is restored afterwards."""
    config: Any = cast(Any, model).config
    before = config._attn_implementation
    token = _ACTIVE.set(cache)
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
        _ACTIVE.reset(token)


def _accumulation(query: torch.Tensor) -> torch.dtype:
    """Softmax dtype: fp32 for half-precision inputs, the input's own for fp32 / fp64 (an fp64 reference run stays
    fp64 end to end)."""
    return torch.promote_types(query.dtype, torch.float32)


def _prefix_part(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of every query to the batch-1 prefix: (output [B, H, q, d], log-sum-exp [B, H, q, 1])."""
    B, H, q, d = query.shape
    kvh, P = keys.shape[1], keys.shape[2]
    g = H // kvh
    acc = _accumulation(query)
    # [B, kvh, g, q, d] -> [kvh, B·g·q, d]: every row and head group against its key/value head, in one matmul
    qs = query.reshape(B, kvh, g, q, d).permute(1, 0, 2, 3, 4).reshape(kvh, B * g * q, d)
    k, v = keys[0], values[0]  # [kvh, P, d]
    rows = max(1, _CHUNK_ELEMENTS // max(1, kvh * P))
    outs, lses = [], []
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, keys, values)):
        # the in-place path below would overwrite tensors autograd saved (amax's input): out of place here
        for s in range(0, qs.shape[1], rows):
            scores = torch.matmul(qs[:, s : s + rows], k.transpose(-1, -2)).to(acc) * scale  # [kvh, r, P]
            lse = torch.logsumexp(scores, dim=-1, keepdim=True)
            outs.append(torch.matmul(torch.exp(scores - lse).to(v.dtype), v).to(acc))
            lses.append(lse)
    else:
        # Scoring (no grad): the [kvh, r, P] scores are the big tensor, so they are passed over as few times as
        # possible (results/perf/sdft_4k/profile/prefix_part_inplace.py: ~2x per layer call at a 4k prefix). The
        # scale is folded into the queries when they are already in the accumulation dtype (else the scores
        # are scaled after the cast, keeping the softmax in `acc`); one max, subtract and exp in place, and the
        # sum of the exponentials gives both the normaliser and the log-sum-exp.
        folded = query.dtype == acc
        qf = qs * scale if folded else qs
        for s in range(0, qs.shape[1], rows):
            scores = torch.matmul(qf[:, s : s + rows], k.transpose(-1, -2)).to(acc)  # [kvh, r, P], a fresh tensor
            if not folded:
                scores.mul_(scale)
            top = scores.amax(-1, keepdim=True)
            scores.sub_(top).exp_()
            total = scores.sum(-1, keepdim=True)
            outs.append(torch.matmul(scores.to(v.dtype), v).to(acc) / total)
            lses.append(top + total.log())
    out = torch.cat(outs, dim=1).reshape(kvh, B, g, q, d).permute(1, 0, 2, 3, 4).reshape(B, H, q, d)
    lse_all = torch.cat(lses, dim=1).reshape(kvh, B, g, q, 1).permute(1, 0, 2, 3, 4).reshape(B, H, q, 1)
    return out, lse_all


def _own_part(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of every query to its row's own tokens under `mask` ([B, 1, q, S] bool, True = attend; None =
    causal): (output, log-sum-exp); a query that may attend none of them gets output 0 and log-sum-exp −inf."""
    B, H, q, d = query.shape
    kvh, S = keys.shape[1], keys.shape[2]
    g = H // kvh
    acc = _accumulation(query)
    qs = query.reshape(B, kvh, g * q, d)
    scores = (torch.matmul(qs, keys.transpose(-1, -2)).to(acc) * scale).reshape(B, kvh, g, q, S)
    if mask is None:
        mask = torch.ones(q, S, dtype=torch.bool, device=query.device).tril(S - q)[None, None]
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    else:  # an additive float mask
        scores = scores + mask[:, :, None].to(acc)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    probs = torch.exp(scores - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)))
    out = torch.matmul(probs.reshape(B, kvh, g * q, S).to(values.dtype), values).to(acc)
    return out.reshape(B, H, q, d), lse.reshape(B, H, q, 1)


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """HF's attention-function signature; outside `attending` (or for a layer without a prefix) it is SDPA."""
    cache = _ACTIVE.get()
    idx = getattr(module, "layer_idx", None)
    layer = cache.layers[idx] if cache is not None and idx is not None and idx < len(cache.layers) else None
    if not isinstance(layer, SharedPrefixLayer):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    P = layer.prefix_len
    out_p, lse_p = _prefix_part(query, layer.prefix_keys, layer.prefix_values, scale)
    own_mask = None if attention_mask is None else attention_mask[..., P:]
    out_s, lse_s = _own_part(query, key, value, own_mask, scale)
    top = torch.maximum(lse_p, lse_s)  # the prefix part is always finite
    w_p, w_s = torch.exp(lse_p - top), torch.exp(lse_s - top)
    out = (w_p * out_p + w_s * out_s) / (w_p + w_s)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
