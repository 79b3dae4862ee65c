"""A learned context c': n trainable virtual tokens in front of every input, on a frozen model (prompt tuning).

The virtual tokens are input embeddings, not token ids, so they enter through forward hooks on the model
itself rather than through a wrapper class: every caller (the training loop, held-out KL, `generate`,
lm-eval's HFLM) keeps calling the plain transformers model in its own coordinates, and the hooks

- prepend the n embeddings on a call that starts a sequence (no cache yet), with n ones in front of the
  attention mask and positions 0..n-1 in front of the caller's positions shifted by n, so a left-padded row
  sees the virtual tokens exactly as it would see the same text right before its own first token;
- on a call that continues a cache (generation steps), only put n ones in front of the mask and shift the
  positions: the cache already holds the virtual tokens;
- shift `logits_to_keep` positions by n and drop the n virtual positions from full logits and hidden states,
  so every caller gets logits aligned with its own input ids.

peft's prompt tuning was not used: it drops `position_ids` (a left-padded row then sees the virtual tokens
across its padding, so scores depend on the batch) and returns the virtual positions' logits. Prefix KV
reuse (`generation`, `harness.lm`) cannot be used while a soft prompt is active (a cache longer than its
caller's ids), so both check `active(model)`.

The same hooks carry the other learned c', a trained KV prefix (`prefix_kv.PrefixKV`, prefix tuning): the
mask, positions and cache positions shift by n just the same, but instead of embeddings the starting call
gets a cache already holding the prefix, so there are no virtual positions in the output to drop. Both are
saved in the same file (`FILE`), told apart by its tensors.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import DynamicCache

from harness.prefix_kv import PrefixKV

ATTRIBUTE = "harness_soft_prompt"  # the submodule name while attached: `model.parameters()` then includes it
FILE = "soft_prompt.safetensors"


class SoftPrompt(torch.nn.Module):
    """n virtual tokens: an [n, hidden] float32 parameter (fp32 master copy; cast to the model's dtype on use)."""

    def __init__(self, embeddings: torch.Tensor, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        if embeddings.dim() != 2 or embeddings.shape[0] < 1:
            raise ValueError(f"a soft prompt is [n_tokens, hidden], got {tuple(embeddings.shape)}")
        self.embeddings = torch.nn.Parameter(embeddings.detach().float().clone())
        self.meta = dict(meta or {})

    @property
    def n_tokens(self) -> int:
        return int(self.embeddings.shape[0])


def _embedding(model: torch.nn.Module) -> torch.nn.Embedding:
    """The model's input embedding layer (transformers' `get_input_embeddings`)."""
    return cast(torch.nn.Embedding, cast(Any, model).get_input_embeddings())


def initial(
    model: torch.nn.Module, n_tokens: int, text_ids: list[int] | None = None, seed: int = 0, **meta: Any
) -> SoftPrompt:
    """The untrained virtual tokens: the embeddings of the first n tokens of `text_ids` (repeated when shorter,
    as peft's TEXT init), or, with no text, of n vocabulary tokens drawn with `seed` (peft's SAMPLE_VOCAB)."""
    embed = _embedding(model)
    device = embed.weight.device
    if text_ids:
        ids = (list(text_ids) * math.ceil(n_tokens / len(text_ids)))[:n_tokens]
        index = torch.tensor(ids, dtype=torch.long, device=device)
        source = "text"
    else:
        g = torch.Generator().manual_seed(seed)
        index = torch.randint(embed.weight.shape[0], (n_tokens,), generator=g).to(device)
        source = "random"
    with torch.no_grad():
        vectors = embed(index.unsqueeze(0))[0]  # the module's own forward: a scaled embedding scales here too
    prompt = SoftPrompt(vectors, {"init": source, **meta})
    return prompt.to(device)


Learned = SoftPrompt | PrefixKV  # a learned c': virtual tokens or a KV prefix


def attached(model: torch.nn.Module) -> Learned | None:
    """The soft prompt or KV prefix attached to `model`, if any."""
    found = getattr(model, ATTRIBUTE, None)
    return found if isinstance(found, SoftPrompt | PrefixKV) else None


def active(model: torch.nn.Module) -> bool:
    """Whether `model`'s calls currently see virtual tokens (attached, and not in teacher mode)."""
    hooks = getattr(model, "_harness_soft_prompt_hooks", None)
    return isinstance(hooks, _Hooks) and hooks.enabled


class _Hooks:
    """The pre- and post-forward hooks that put the virtual tokens in front of every sequence."""

    def __init__(self, prompt: Learned) -> None:
        self.prompt = prompt
        self.enabled = True
        self.prepended = False

    def before(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if not self.enabled:
            self.prepended = False
            return args, kwargs
        kwargs = dict(kwargs)
        if len(args) > 2:
            raise TypeError("a soft-prompted model takes input_ids and attention_mask positionally, the rest by name")
        for name, value in zip(("input_ids", "attention_mask"), args, strict=False):
            kwargs[name] = value
        n = self.prompt.n_tokens
        if isinstance(self.prompt, PrefixKV):
            return self._prefix(module, kwargs, n)
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        if embeds is None:
            if ids is None:
                raise ValueError("a soft-prompted model needs input_ids or inputs_embeds")
            embeds = _embedding(module)(ids)
        rows, device = embeds.shape[0], embeds.device
        mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
        if mask is not None:
            kwargs["attention_mask"] = torch.cat([mask.new_ones((mask.shape[0], n)), mask], dim=1)
        past = kwargs.get("past_key_values")
        if past is not None and past.get_seq_length() > 0:  # the cache already holds the virtual tokens
            if positions is not None:
                kwargs["position_ids"] = positions + n
            self.prepended = False
            return (), kwargs
        virtual = self.prompt.embeddings.to(embeds.dtype).unsqueeze(0).expand(rows, -1, -1)
        kwargs["inputs_embeds"] = torch.cat([virtual, embeds], dim=1)
        kwargs["input_ids"] = None
        if positions is not None:
            head = torch.arange(n, device=device, dtype=positions.dtype).expand(positions.shape[0], -1)
            kwargs["position_ids"] = torch.cat([head, positions + n], dim=1)
        keep = kwargs.get("logits_to_keep")
        if isinstance(keep, torch.Tensor):
            kwargs["logits_to_keep"] = keep + n
        self.prepended = True
        return (), kwargs

    def _prefix(self, module: torch.nn.Module, kwargs: dict[str, Any], n: int) -> tuple[tuple, dict[str, Any]]:
        """A KV prefix: n ones in front of the mask, positions and cache positions shifted by n, and at the call
        that starts a sequence a cache holding the prefix (no extra positions in the output to drop)."""
        assert isinstance(self.prompt, PrefixKV)
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        source = ids if ids is not None else embeds
        if source is None:
            raise ValueError("a prefix-tuned model needs input_ids or inputs_embeds")
        mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
        if mask is not None:
            kwargs["attention_mask"] = torch.cat([mask.new_ones((mask.shape[0], n)), mask], dim=1)
        if positions is not None:
            kwargs["position_ids"] = positions + n
        if isinstance(kwargs.get("cache_position"), torch.Tensor):
            kwargs["cache_position"] = kwargs["cache_position"] + n
        past = kwargs.get("past_key_values")
        if past is None or past.get_seq_length() == 0:
            cache = past if past is not None else DynamicCache(config=cast(Any, module).config)
            dtype = embeds.dtype if embeds is not None else _embedding(module).weight.dtype
            kwargs["past_key_values"] = self.prompt.fill(cache, source.shape[0], dtype)
        self.prepended = False
        return (), kwargs

    def after(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if not self.prepended:
            return output
        self.prepended = False
        n, width = self.prompt.n_tokens, kwargs["inputs_embeds"].shape[1]
        logits = getattr(output, "logits", None)
        if logits is not None and logits.shape[1] == width:
            output.logits = logits[:, n:]
        states = getattr(output, "hidden_states", None)
        if states is not None:
            output.hidden_states = tuple(h[:, n:] for h in states)
        return output

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """The plain model again (the teacher, when the student shares its weights)."""
        before, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = before


@contextlib.contextmanager
def attach(model: torch.nn.Module, prompt: Learned) -> Iterator[Callable[[], contextlib.AbstractContextManager]]:
    """Make `model` the soft-prompted student for the block: its weights frozen (flags restored after), the
    prompt its only trainable parameter. Yields a context manager under which `model` is the plain model."""
    if attached(model) is not None:
        raise ValueError("the model already carries a soft prompt")
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    prompt.to(_embedding(model).weight.device)
    hooks = _Hooks(prompt)
    handles = [
        model.register_forward_pre_hook(hooks.before, with_kwargs=True),
        model.register_forward_hook(hooks.after, with_kwargs=True),
    ]
    model.add_module(ATTRIBUTE, prompt)
    model._harness_soft_prompt_hooks = hooks  # type: ignore[assignment]  # read by `active`
    try:
        yield hooks.disabled
    finally:
        for h in handles:
            h.remove()
        del model._modules[ATTRIBUTE]
        del model._harness_soft_prompt_hooks
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def bind(model: torch.nn.Module, prompt: Learned) -> torch.nn.Module:
    """Attach for good: a loaded student is its base model with its virtual tokens (`harness.load_student`)."""
    binding = attach(model, prompt)
    binding.__enter__()
    model._harness_soft_prompt_binding = binding  # type: ignore[assignment]  # kept alive with the model
    return model


def save(prompt: Learned, path: str | Path) -> Path:
    """The learned c' as safetensors, float32: `embeddings` [n, hidden] (soft prompt) or `keys` and `values`
    [layers, kv_heads, n, head_dim] (KV prefix); what it was built from as metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"n_tokens": str(prompt.n_tokens), "meta": json.dumps(prompt.meta, sort_keys=True)}
    if isinstance(prompt, PrefixKV):
        tensors = {"keys": prompt.keys, "values": prompt.values}
    else:
        tensors = {"embeddings": prompt.embeddings}
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def load(path: str | Path) -> Learned:
    """A saved soft prompt or KV prefix, on the CPU."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    tensors = load_file(str(path))
    if "keys" in tensors:
        return PrefixKV(tensors["keys"], tensors["values"], meta)
    return SoftPrompt(tensors["embeddings"], meta)
