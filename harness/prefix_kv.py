"""A learned c' as a trained KV prefix (prefix tuning; Cartridges' "cartridge"): per layer, n key and value
vectors that every query attends to, on the frozen model.

Where a soft prompt learns n input embeddings that still run through every layer, a KV prefix learns what
those layers would have cached: [layers, kv_heads, n, head_dim] keys and values, initialised (as Cartridges
does) from the model's own cache of c's first n tokens, or of n random vocabulary tokens. It enters through
the model's own cache API: the hooks in `softprompt` (shared with the soft prompt: same mask, position and
cache-position shift) fill an empty `DynamicCache` with the prefix at the call that starts a sequence, so
training, `generate`, held-out KL and lm-eval's HFLM all call the plain transformers model. peft's
PREFIX_TUNING was not used: it reparametrises the prefix through an MLP by default, builds its cache outside
the model's forward (lm-eval's HFLM and `generate` would each need peft's wrapper), and, like its prompt
tuning, ignores the caller's position ids on left-padded rows.

Memory per query: the prefix occupies n cache positions, the same as n tokens of text c' or a soft prompt
of n tokens, and `kv_bytes_per_token` says how many bytes that is.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache


class PrefixKV(torch.nn.Module):
    """n trained cache positions per layer: `keys`/`values` [layers, kv_heads, n, head_dim], float32 masters
    (cast to the model's dtype on use)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        if keys.dim() != 4 or keys.shape != values.shape or keys.shape[2] < 1:
            raise ValueError(f"a KV prefix is [layers, kv_heads, n, head_dim] twice, got {tuple(keys.shape)}")
        self.keys = torch.nn.Parameter(keys.detach().float().clone())
        self.values = torch.nn.Parameter(values.detach().float().clone())
        self.meta = dict(meta or {})

    @property
    def n_tokens(self) -> int:
        return int(self.keys.shape[2])

    def fill(self, cache: DynamicCache, rows: int, dtype: torch.dtype) -> DynamicCache:
        """Put the prefix into an empty cache for `rows` sequences (gradients flow into the masters)."""
        for layer in range(self.keys.shape[0]):
            k = self.keys[layer].to(dtype).unsqueeze(0).expand(rows, -1, -1, -1)
            v = self.values[layer].to(dtype).unsqueeze(0).expand(rows, -1, -1, -1)
            cache.update(k, v, layer)
        return cache


@torch.no_grad()
def initial(
    model: torch.nn.Module, n_tokens: int, text_ids: list[int] | None = None, seed: int = 0, **meta: Any
) -> PrefixKV:
    """The untrained prefix: the model's own cache of the first n tokens of `text_ids` (repeated when shorter),
    or of n vocabulary tokens drawn with `seed`, at positions 0..n-1."""
    lm: Any = model
    device = lm.get_input_embeddings().weight.device
    if text_ids:
        ids = (list(text_ids) * -(-n_tokens // len(text_ids)))[:n_tokens]
        index = torch.tensor([ids], dtype=torch.long, device=device)
        source = "text"
    else:
        g = torch.Generator().manual_seed(seed)
        index = torch.randint(lm.get_input_embeddings().weight.shape[0], (1, n_tokens), generator=g).to(device)
        source = "random"
    out = lm(input_ids=index, past_key_values=DynamicCache(config=lm.config), use_cache=True)
    layers = [(k[0], v[0]) for k, v, *_ in out.past_key_values]
    keys = torch.stack([k for k, _ in layers])
    values = torch.stack([v for _, v in layers])
    return PrefixKV(keys, values, {"init": source, "kind": "kv", **meta}).to(device)


def kv_bytes_per_token(model: torch.nn.Module) -> int:
    """Cache bytes one position of context costs a query on this model (keys and values, every layer)."""
    cfg: Any = getattr(model, "config", None)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    itemsize = next(model.parameters()).element_size()
    return int(2 * cfg.num_hidden_layers * kv_heads * head_dim * itemsize)
