"""Target selection: how the teacher's ŷ ≈ argmax_y log Pr_t(y | c, z) is approximated (README: the axes).

Every strategy is one function registered here with `@register`; adding one touches only this file.
The training loop and the teacher cache look strategies up by name through `select_targets`, and key
cached targets on `cache_key_params` (the effective settings, defaults filled in). A trial trains on the
`phases` of its target value: one for a plain strategy, two for a `schedule` (off-policy, then on-policy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from harness.registry import Entry, PositiveInt, Probability, Registry, UnitInterval, lazy_import, nested
from harness.registry import Positive as Temperature

if TYPE_CHECKING:
    from harness import generation
else:
    generation = lazy_import("harness.generation")  # torch + transformers: not needed to validate a suite

# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class TargetSpec(Entry):
    """A named strategy: its function, its parameter model, whether it needs the student, and whether
    the seed changes its targets (sampling): the teacher cache keys only those on the seed, so the
    seeds of a configuration share one set of greedy, beam or ground-truth targets."""

    uses_student: bool = False
    seeded: bool = False
    phases: Callable[[dict[str, Any]], list[Phase]] | None = None  # effective params → phases (schedule)


@dataclass(frozen=True)
class Phase:
    """A stretch of training on one strategy's targets: `name` with its effective `params`, until the fraction
    `until` of the optimizer updates is done (the last phase runs to the end)."""

    name: str
    params: dict[str, Any]
    until: float = 1.0


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


TARGETS: Registry[TargetSpec] = Registry("target strategy", TargetSpec)
register = TARGETS.register  # @register("name", uses_student=..., seeded=...); params: the keyword-only arguments


def target_seed(name: str, seed: int) -> int | None:
    """The seed a strategy's targets depend on: `seed` for a sampling strategy, None for a deterministic one."""
    return seed if TARGETS[name].seeded else None


def cache_key_params(name: str, params: dict | None) -> dict:
    """Params with defaults filled in and validated: caches key on the effective settings, not the spelling.
    on_policy's teacher kind is left out: it scores the student's samples during training and changes nothing
    precomputed, so `teacher: base` and `ema` share one entry (and entries made before it existed still hit)."""
    effective = TARGETS.resolve(name, params)[1]
    if name == "on_policy":
        effective = {k: v for k, v in effective.items() if k not in TEACHER_PARAMS}
    return effective


def phases(name: str, params: dict | None) -> list[Phase]:
    """The phases a trial trains through: the strategy itself, or a schedule's off-policy and on-policy parts."""
    spec, effective = TARGETS.resolve(name, params)
    return spec.phases(effective) if spec.phases is not None else [Phase(name, effective)]


def trains_on_precomputed(name: str, params: dict | None) -> bool:
    """Whether a phase trains on any precomputed target. An on-policy phase with mix 1 samples every batch from
    the student (the loop draws u < mix with u in [0, 1)), so its teacher greedy targets, and their top-k or
    hidden states, would be computed (or read from the cache) and never used: a trial skips that work."""
    spec, effective = TARGETS.resolve(name, params)
    return not (spec.uses_student and spec.phases is None and float(effective.get("mix", 0.5)) >= 1.0)


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


@register("beam")
def beam(req: TargetRequest, *, n_beams: PositiveInt = 4) -> list[list[int]]:
    """The most likely of the beams: a wider search for the sequence argmax than greedy.

    Every beam comes back and the teacher's summed log-prob picks one: HF ranks beams by a length-
    normalised score, and a stop string cuts beams after that ranking, so its top beam need not be the
    most likely finished sequence.
    """
    return _most_likely(req, _generate(req, num_beams=n_beams, num_return_sequences=n_beams))


@register("sample", seeded=True)
def sample(req: TargetRequest, *, temperature: Temperature = 1.0, top_p: Probability = 0.95) -> list[list[int]]:
    """One nucleus sample: targets that cover the teacher's distribution rather than its mode."""
    return [outs[0] for outs in _generate(req, do_sample=True, temperature=temperature, top_p=top_p)]


@register("best_of", seeded=True)
def best_of(
    req: TargetRequest, *, n: PositiveInt = 4, temperature: Temperature = 1.0, top_p: Probability = 0.95
) -> list[list[int]]:
    """n samples re-ranked by the teacher's own sequence log-prob: a better argmax than one sample."""
    candidates = _generate(req, do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=n)
    return _most_likely(req, candidates)


def _most_likely(req: TargetRequest, candidates: list[list[list[int]]]) -> list[list[int]]:
    """Per prompt, the candidate with the highest summed log-prob under the teacher (first of equal maxima)."""
    flat_prompts = [p for p, outs in zip(req.prompts, candidates, strict=True) for _ in outs]
    flat = [c for outs in candidates for c in outs]
    scores = generation.sequence_logprobs(req.model, flat_prompts, flat, batch_size=req.batch_size)
    picked, k = [], 0
    for outs in candidates:
        own = scores[k : k + len(outs)]
        picked.append(outs[max(range(len(outs)), key=own.__getitem__)])
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


TeacherKind = Literal["base", "ema"]
TEACHER_PARAMS = ("teacher", "update_rate", "sync_steps")  # on_policy's: who scores the student's samples


@register("on_policy", uses_student=True)
def on_policy(
    req: TargetRequest,
    *,
    mix: UnitInterval = 0.5,
    teacher: TeacherKind = "base",
    update_rate: Probability = 0.05,
    sync_steps: PositiveInt = 1,
) -> list[list[int]]:
    """GKD-style: the training loop samples from the student for a `mix` fraction of batches; the rest
    use these teacher greedy targets, the only part that can be precomputed (so not seeded here: the
    student's draws are seeded by the training loop).

    `teacher` scores the student's samples (with c): `base`, the frozen teacher; `ema`, SDFT's (TRL's
    `teacher_model_kind="ema"`): weights that every `sync_steps` optimizer updates move to
    (1 − update_rate) · teacher + update_rate · student, from the student's initial weights (TRL's defaults
    0.05 and 1). The precomputed targets here are the frozen teacher's either way."""
    return greedy(req)


# ----------------------------------------------------------------------------- schedules


def _off_policy(entry: TargetSpec) -> str | None:
    if entry.phases is not None:
        return f"'{entry.name}' cannot be a phase of a schedule"
    if entry.uses_student:
        return f"'{entry.name}' samples from the student; `first` is the off-policy phase (greedy, sample, ...)"
    return None


def _on_policy(entry: TargetSpec) -> str | None:
    if entry.phases is not None:
        return f"'{entry.name}' cannot be a phase of a schedule"
    if not entry.uses_student:
        return f"'{entry.name}' does not sample from the student; `then` is the on-policy phase (on_policy)"
    return None


if TYPE_CHECKING:  # what the parameters hold; pydantic builds the checking types below at run time
    OffPolicyTarget = dict[str, Any] | str  # a name when called directly; a normalised mapping after validation
    OnPolicyTarget = dict[str, Any] | str
else:
    OffPolicyTarget, OnPolicyTarget = nested(TARGETS, _off_policy), nested(TARGETS, _on_policy)


def _parts(value: dict[str, Any] | str) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        return value, {}
    return value["name"], {k: v for k, v in value.items() if k != "name"}


def _schedule_phases(p: dict[str, Any]) -> list[Phase]:
    (first, first_params), (then, then_params) = _parts(p["first"]), _parts(p["then"])
    return [Phase(first, first_params, float(p["switch"])), Phase(then, then_params)]


# seeded: conservatively, since `first` may sample; a trial caches each phase under its own strategy and seed rule.
@register("schedule", uses_student=True, seeded=True, phases=_schedule_phases)
def schedule(
    req: TargetRequest,
    *,
    first: OffPolicyTarget = "greedy",
    then: OnPolicyTarget = "on_policy",
    switch: UnitInterval = 0.5,
) -> list[list[int]]:
    """Off-policy first, then on-policy: the first ⌊switch · N⌋ of the N optimizer updates train on `first`'s
    teacher targets, the rest on `then` (the student samples, the teacher scores). The comparison the
    on-policy distillation write-ups make against either alone; a target value, so it sweeps on the same axis.

    Returns `first`'s targets; a trial asks each phase for its own (`phases`), so each is cached as if alone.
    """
    name, params = _parts(first)
    return TARGETS[name].fn(req, **cache_key_params(name, params))
