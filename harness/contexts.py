"""Context modifications c → c': named, deterministic functions in one registry.

A context is up to three texts (an instruction, a system prompt, a document: what a suite reads from
its own fields and files) plus the first `n_demos` demonstrations of the task's demo split. The texts
join into one system message, so c is exactly the pair (system_instruction, num_fewshot) lm-eval takes,
and the string a student trains on and the string lm-eval scores are built by the same code (`tasks.py`).
Modifications keep, drop or replace the parts by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from harness.registry import Entry, NonNegativeInt, Positive, PositiveInt, Registry

PARTS = ("instruction", "system_prompt", "document")  # the text parts of c, in the order they are joined


@dataclass(frozen=True)
class Context:
    """What the model sees before the query: up to three texts in one system message, and k demonstrations.

    `instruction` is the suite's short task instruction, `system_prompt` a long prompt (persona, rule sheet)
    and `document` a text whose knowledge c carries; either may be None. A modification that writes new text
    (truncate, tag) puts it in `instruction`."""

    instruction: str | None
    n_demos: int = 0
    system_prompt: str | None = None
    document: str | None = None

    @property
    def system(self) -> str | None:
        """The system message: the text parts joined by blank lines (None when c has no text)."""
        texts = [t for t in (self.instruction, self.system_prompt, self.document) if t]
        return "\n\n".join(texts) if texts else None

    def only(self, *parts: str, n_demos: int = 0) -> Context:
        """c with just the named text parts kept, and `n_demos` demonstrations."""
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown context part(s) {sorted(unknown)} (known: {', '.join(PARTS)})")
        return Context(n_demos=n_demos, **{p: getattr(self, p) if p in parts else None for p in PARTS})


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass(frozen=True)
class ContextEnv:
    """What some modifications need beyond c itself: demo texts (truncate) and the task name (tag)."""

    demos: tuple[tuple[str, str], ...]
    task_name: str
    tokenizer: Tokenizer | None = None


@dataclass(frozen=True)
class Modification(Entry):
    """A named c → c' function `fn(c, env, **params)`; its keyword-only arguments are its parameters.

    `learned`: c' also holds trainable virtual tokens (`soft_prompt`); `fn` returns only its text part, and the
    trial builds the tokens (`n_tokens`, `init`) and trains them on the frozen model."""

    learned: bool = False
    kind: Literal["embeddings", "kv"] = "embeddings"  # a learned c': virtual input tokens, or a KV prefix


MODIFICATIONS: Registry[Modification] = Registry("context modification", Modification)
register = MODIFICATIONS.register  # the suite validator and the sweep read the registry


@register("full")
def full(c: Context, env: ContextEnv) -> Context:
    """c' = c: the teacher's own context (a control: distillation should change nothing)."""
    return c


@register("empty")
def empty(c: Context, env: ContextEnv) -> Context:
    """c' = nothing: the whole context must move into the weights."""
    return Context(None, 0)


@register("instruction_only")
def instruction_only(c: Context, env: ContextEnv) -> Context:
    """Keep the instruction, drop the demonstrations, the system prompt and the document: distil what they teach."""
    return c.only("instruction")


@register("demos_only")
def demos_only(c: Context, env: ContextEnv) -> Context:
    """Keep the demonstrations, drop every text part."""
    return c.only(n_demos=c.n_demos)


@register("fewer_demos")
def fewer_demos(c: Context, env: ContextEnv, *, k: NonNegativeInt = 1) -> Context:
    """Keep the text parts and the first k demonstrations."""
    if k < 0:
        raise ValueError(f"fewer_demos: k must be ≥ 0, got {k}")
    return c.only(*PARTS, n_demos=min(int(k), c.n_demos))


Part = Literal["instruction", "system_prompt", "document", "demos"]


@register("without")
def without(c: Context, env: ContextEnv, *, part: Part = "document") -> Context:
    """Drop one part of c and keep the rest: `without(part=document)` asks whether the weights can hold a
    document's facts while the instruction stays in the prompt, `without(part=system_prompt)` a persona's rules."""
    if part == "demos":
        return c.only(*PARTS)
    return c.only(*(p for p in PARTS if p != part), n_demos=c.n_demos)


def flatten(c: Context, env: ContextEnv) -> str:
    """c as plain text (instruction, then each demonstration as input/answer lines)."""
    parts = [c.system] if c.system else []
    parts += [f"{q}\n{a}" for q, a in env.demos[: c.n_demos]]
    return "\n\n".join(parts)


@register("truncate")
def truncate(c: Context, env: ContextEnv, *, n: PositiveInt = 32) -> Context:
    """Keep the first n tokens of c (flattened to text) as the instruction; a budget cut, not a summary."""
    if env.tokenizer is None:
        raise ValueError("truncate needs the tokenizer")
    if n < 1:
        raise ValueError(f"truncate: n must be ≥ 1, got {n}")
    ids = env.tokenizer.encode(flatten(c, env), add_special_tokens=False)[: int(n)]
    text = env.tokenizer.decode(ids, skip_special_tokens=True).strip()
    return Context(text or None, 0)


@register("tag")
def tag(c: Context, env: ContextEnv, *, text: str | None = None) -> Context:
    """A short task tag replaces the context: the student learns to expand the tag into the skill."""
    return Context(text if text is not None else f"Task: {env.task_name}", 0)


@register("soft_prompt", learned=True)
def soft_prompt(
    c: Context,
    env: ContextEnv,
    *,
    n_tokens: PositiveInt = 16,
    init: Literal["text", "random"] = "text",
    lr_scale: Positive = 100.0,
) -> Context:
    """c' = n trainable virtual tokens and no text: the context moves into n input embeddings while the model's
    weights stay frozen (prompt tuning, the gisting idea). `init: text` starts from the embeddings of c's first
    n tokens (flattened as `truncate` does, repeated when c is shorter); `random` from n vocabulary tokens drawn
    with the training seed. The virtual tokens train at `lr_scale` × the suite's learning_rate: prompt tuning
    wants a far larger step than weights do (1e-2 to 3e-1 against 1e-5 to 1e-3), and a scale keeps one
    learning-rate search meaningful for soft prompts and weights in the same grid."""
    return Context(None, 0)


@register("prefix_tuning", learned=True, kind="kv")
def prefix_tuning(
    c: Context,
    env: ContextEnv,
    *,
    n_tokens: PositiveInt = 16,
    init: Literal["text", "random"] = "text",
    lr_scale: Positive = 100.0,
) -> Context:
    """c' = a trained KV prefix of n positions per layer and no text (prefix tuning; Cartridges' cartridge): the
    context moves into keys and values every query attends to, on frozen weights. `init: text` starts from the
    model's own cache of c's first n tokens (as Cartridges does), `random` from that of n random vocabulary
    tokens; it trains at `lr_scale` × learning_rate, as `soft_prompt`."""
    return Context(None, 0)


def init_ids(c: Context, env: ContextEnv, n_tokens: int) -> list[int]:
    """The token ids a text-initialised soft prompt starts from: c flattened, its first `n_tokens` tokens."""
    if env.tokenizer is None:
        raise ValueError("soft_prompt needs the tokenizer")
    ids = env.tokenizer.encode(flatten(c, env), add_special_tokens=False)[:n_tokens]
    if not ids:
        raise ValueError("soft_prompt: init 'text' needs a non-empty context c; use init: random")
    return ids


def learned(name: str) -> bool:
    """Whether the modification's c' holds trainable virtual tokens."""
    return MODIFICATIONS.lookup(name).learned


def modify(name: str, c: Context, env: ContextEnv, params: dict[str, Any] | None = None) -> Context:
    """Apply a registered modification by name (parameters checked, defaults filled in)."""
    spec, effective = MODIFICATIONS.resolve(name, params)
    return spec.fn(c, env, **effective)
