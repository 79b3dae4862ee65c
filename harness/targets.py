"""Target selection: how the teacher's ŷ ≈ argmax_y log Pr_t(y | c, z) is approximated (README: the axes).

Every strategy is one function registered here with `@register`; adding one touches only this file.
The training loop and the teacher cache look strategies up by name through `select_targets`, and key
cached targets on `cache_key_params` (the effective settings, defaults filled in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness import generation

# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class TargetSpec:
    """A named strategy: its function, whether it needs the student, its params and their defaults."""

    name: str
    fn: Callable
    uses_student: bool
    params: tuple[str, ...]
    defaults: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class TargetRequest:
    """What every strategy function receives besides its own params (the teacher and its prompts)."""

    model: Any
    tokenizer: Any
    prompts: list[list[int]]
    references: list[str] | None
    max_new_tokens: int
    batch_size: int
    seed: int
    stop_strings: tuple[str, ...]


TARGETS: dict[str, TargetSpec] = {}

# Checks for param values, shared by every strategy that takes a param of that name.
_PARAM_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_beams": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer ≥ 1"),
    "n": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer ≥ 1"),
    "temperature": (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0, "a number > 0"),
    "top_p": (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 1, "in (0, 1]"),
    "mix": (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1, "in [0, 1]"),
}


def register(name: str, *, uses_student: bool = False, **defaults: Any) -> Callable[[Callable], Callable]:
    """Decorator: register `fn(request, **params)` under `name`; keyword args are the params' defaults."""

    def wrap(fn: Callable) -> Callable:
        if name in TARGETS:
            raise ValueError(f"target strategy '{name}' registered twice")
        TARGETS[name] = TargetSpec(
            name=name,
            fn=fn,
            uses_student=uses_student,
            params=tuple(defaults),
            defaults=tuple(defaults.items()),
        )
        return fn

    return wrap


def get_spec(name: str) -> TargetSpec:
    """The registered strategy, or a ValueError that lists the known ones."""
    if name not in TARGETS:
        raise ValueError(f"unknown target strategy '{name}'; known strategies: {sorted(TARGETS)}")
    return TARGETS[name]


def cache_key_params(name: str, params: dict | None) -> dict:
    """Params with defaults filled in and validated: caches key on the effective settings, not the spelling."""
    spec = get_spec(name)
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ValueError(f"target strategy '{name}' got unknown params {unknown}; allowed params: {list(spec.params)}")
    effective = {**dict(spec.defaults), **params}
    for key, value in effective.items():
        check = _PARAM_CHECKS.get(key)
        if check is not None and not check[0](value):
            raise ValueError(f"target strategy '{name}': param '{key}' must be {check[1]}, got {value!r}")
    return effective


def select_targets(
    name: str,
    params: dict | None,
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    references: list[str] | None,
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    stop_strings: tuple[str, ...] = (),
) -> list[list[int]]:
    """One target token list per teacher prompt (`model` is the teacher, prompts hold c + z)."""
    effective = cache_key_params(name, params)
    request = TargetRequest(
        model=model,
        tokenizer=tokenizer,
        prompts=prompts,
        references=references,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        stop_strings=tuple(stop_strings),
    )
    targets = TARGETS[name].fn(request, **effective)
    if len(targets) != len(prompts):
        raise RuntimeError(f"target strategy '{name}' returned {len(targets)} targets for {len(prompts)} prompts")
    return targets


# ----------------------------------------------------------------------------- strategies


def _generate(req: TargetRequest, **kwargs: Any) -> list[list[list[int]]]:
    return generation.generate(
        req.model,
        req.tokenizer,
        req.prompts,
        max_new_tokens=req.max_new_tokens,
        batch_size=req.batch_size,
        seed=req.seed,
        stop_strings=req.stop_strings,
        progress=True,
        **kwargs,
    )


@register("greedy")
def greedy(req: TargetRequest) -> list[list[int]]:
    """Token-wise argmax: the cheapest approximation of the sequence argmax."""
    return [outs[0] for outs in _generate(req)]


@register("beam", n_beams=4)
def beam(req: TargetRequest, n_beams: int) -> list[list[int]]:
    """Top beam of a beam search: a wider search for the sequence argmax than greedy."""
    return [outs[0] for outs in _generate(req, num_beams=n_beams)]


@register("sample", temperature=1.0, top_p=0.95)
def sample(req: TargetRequest, temperature: float, top_p: float) -> list[list[int]]:
    """One nucleus sample: targets that cover the teacher's distribution rather than its mode."""
    return [outs[0] for outs in _generate(req, do_sample=True, temperature=temperature, top_p=top_p)]


@register("best_of", n=4, temperature=1.0, top_p=0.95)
def best_of(req: TargetRequest, n: int, temperature: float, top_p: float) -> list[list[int]]:
    """n samples re-ranked by the teacher's own sequence log-prob: a better argmax than one sample."""
    candidates = _generate(req, do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=n)
    flat_prompts = [p for p, outs in zip(req.prompts, candidates, strict=True) for _ in outs]
    flat = [c for outs in candidates for c in outs]
    scores = generation.sequence_logprobs(req.model, flat_prompts, flat, batch_size=req.batch_size)
    picked, k = [], 0
    for outs in candidates:
        own = scores[k : k + len(outs)]
        picked.append(outs[max(range(len(outs)), key=own.__getitem__)])  # first of equal maxima
        k += len(outs)
    return picked


@register("ground_truth")
def ground_truth(req: TargetRequest) -> list[list[int]]:
    """Dataset answers + eos: the control that tells whether teacher targets beat plain fine-tuning."""
    if req.references is None:
        raise ValueError("target strategy 'ground_truth' needs reference answers, got references=None")
    if len(req.references) != len(req.prompts):
        raise ValueError(f"ground_truth: {len(req.references)} references for {len(req.prompts)} prompts")
    eos = req.tokenizer.eos_token_id
    return [req.tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in req.references]


@register("on_policy", uses_student=True, mix=0.5)
def on_policy(req: TargetRequest, mix: float) -> list[list[int]]:
    """GKD-style: the training loop samples from the student for a `mix` fraction of batches; the rest
    use these teacher greedy targets, the only part that can be precomputed."""
    return greedy(req)
