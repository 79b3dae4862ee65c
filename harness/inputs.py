"""Where the distillation inputs z come from: the fourth axis (`axes.inputs`), one registry.

`train_split` takes the task's labelled train items (the only source before this axis). The others need
no labels, so a task with only validation and test splits can be distilled, as Snell et al. (2022) and
Cartridges do it: the teacher writes the inputs.

- `self_study`: the teacher writes inputs from c; seeded, deduplicated and filtered (too short or long, equal
  to a validation or test input, a copy of its seed). Two `seed_prompt`s: `instructions` (the chat teacher, prompted
  with c and one of a few seed instructions: a question, a task, a request to apply c, ...; Cartridges' seed
  prompts in spirit) and `demos` (the teacher continues a plain list of the inputs of c's demonstrations,
  shuffled per sample, and its next line is the new input: Snell et al. 2022's inputs sampled from the
  prompt). `instructions` needs a teacher that follows them: the 135M embedded model answers them with chat
  ("Who should I marry?") where the task sends a bare noun, so its inputs do not teach the task's behaviour;
  `demos` keeps the task's input format, one line at most twice as long as the longest demonstration input.
- `paraphrase`: the teacher rewrites each train input, without c, so the student sees new wordings of the
  same requests.
- `mixed`: a share of self-study queries, the rest from the train split.

Generated inputs are teacher work: cached like targets (the same `targets` entry point, prefix of c reused),
made once per study with the suite's seed (a training seed changes the student, not its inputs), logged with
each trial's training inputs. A generated input has no reference answer, so `ground_truth` targets refuse it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from harness.registry import Entry, Positive, PositiveInt, Registry
from harness.registry import Probability as Share


@dataclass(frozen=True)
class Query:
    """One input z: its text as the user would type it, the task item it came from (train split), and the
    dataset's answer where there is one (the `ground_truth` target)."""

    text: str
    doc: dict[str, Any] | None = None
    reference: str | None = None


class InputEnv(Protocol):
    """What a source draws on (the Workbench provides it): train items, the teacher, the held-out texts."""

    def train_queries(self, n: int) -> list[Query]: ...

    def sample_texts(
        self, instructions: Sequence[str], with_context: bool, *, temperature: float, max_new_tokens: int, seed: int
    ) -> list[str]: ...

    def heldout_texts(self) -> set[str]: ...

    def demo_inputs(self) -> list[str]: ...

    def continue_texts(
        self, prefixes: Sequence[str], *, temperature: float, max_new_tokens: int, seed: int
    ) -> list[str]: ...


@dataclass(frozen=True)
class InputSource(Entry):
    """A named source `fn(env, n, seed, **params) -> list[Query]`; `generated`: its queries have no reference
    (and cost teacher generation); `needs_train`: it reads the task's train split."""

    generated: bool = False
    needs_train: bool = True


INPUTS: Registry[InputSource] = Registry("input source", InputSource)
register = INPUTS.register


class InputError(ValueError):
    """The source cannot make the inputs asked for (too few distinct ones): the trial fails with this line."""


@register("train_split", generated=False, needs_train=True)
def train_split(env: InputEnv, n: int, seed: int) -> list[Query]:
    """The first n items of the task's train split, with their references."""
    return env.train_queries(n)


# Seed instructions: each asks the teacher, which sees c, for one query a user of c would send.
SEEDS = (
    "Write one question that a user could ask you, given everything above. Reply with the question only.",
    "Write one short request a user might send you, that the text above tells you how to answer. "
    "Reply with the request only.",
    "Write one question that tests whether someone knows a specific fact or rule from the text above. "
    "Reply with the question only.",
    "Write one message a user might send that would make you apply the instructions above. "
    "Reply with the message only.",
    "Write one task a user could give you that is like the examples above but new. Reply with the task only.",
)
PARAPHRASE = (
    "Rewrite the following request in different words, keeping exactly its meaning and any format it asks for. "
    "Reply with the rewritten request only.\n\n{text}"
)


def normal(text: str) -> str:
    """The text deduplication and the leak filter compare: lower case, words only, single spaces."""
    return " ".join(re.findall(r"\w+", text.lower()))


def clean(text: str) -> str:
    """A generated query as the user would send it: its first paragraph, without quotes or a label."""
    first = text.strip().split("\n\n")[0].strip().strip('"“”').strip()
    first = re.sub(r"^(question|request|task|message|query)\s*\d*\s*:\s*", "", first, flags=re.IGNORECASE)
    return first.strip().strip('"“”').strip()


def first_line(text: str) -> str:
    """A continued list's next item: the first non-empty line of the continuation."""
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


def _keep(
    texts: Sequence[str],
    taken: set[str],
    banned: set[str],
    min_chars: int,
    max_chars: int,
    seeds: Sequence[str] = SEEDS,
    cut: Callable[[str], str] = clean,
) -> tuple[list[str], dict[str, int]]:
    """The new distinct, acceptable queries among `texts` (each cut by `cut`), and how many each filter
    dropped; a copy of one of `seeds` (the seed instructions, or the demonstration inputs) is dropped."""
    out, dropped = [], {"length": 0, "duplicate": 0, "held-out item": 0, "seed copy": 0}
    seed_keys = {normal(s) for s in seeds}
    for raw in texts:
        q = cut(raw)
        key = normal(q)
        if not (min_chars <= len(q) <= max_chars) or not key:
            dropped["length"] += 1
        elif key in banned:
            dropped["held-out item"] += 1
        elif key in seed_keys:
            dropped["seed copy"] += 1
        elif key in taken:
            dropped["duplicate"] += 1
        else:
            taken.add(key)
            out.append(q)
    return out, dropped


def generate_distinct(
    env: InputEnv,
    n: int,
    seed: int,
    sample: Callable[[int, int], list[str]],
    *,
    rounds: int,
    min_chars: int,
    max_chars: int,
    what: str,
    seeds: Sequence[str] = SEEDS,
    cut: Callable[[str], str] = clean,
) -> list[str]:
    """Up to `rounds` rounds of `sample(round, still_needed)` → the teacher's raw texts; n distinct filtered
    queries, or an InputError saying how far it got and what to change."""
    banned, taken, kept = env.heldout_texts(), set(), []  # type: ignore[var-annotated]
    totals: dict[str, int] = {}
    for r in range(rounds):
        need = n - len(kept)
        if need <= 0:
            break
        new, dropped = _keep(sample(r, need), taken, banned, min_chars, max_chars, seeds, cut)
        kept += new
        for k, v in dropped.items():
            totals[k] = totals.get(k, 0) + v
    if len(kept) < n:
        why = ", ".join(f"{v} {k}" for k, v in totals.items() if v) or "none dropped"
        raise InputError(
            f"{what}: made {len(kept)} distinct inputs of the {n} asked in {rounds} rounds (dropped: {why}); "
            "lower hyperparameters.train_inputs or raise the source's rounds"
        )
    return kept[:n]


SelfStudySeed = Literal["instructions", "demos"]


def demo_list(inputs: Sequence[str], rng: random.Random) -> str:
    """One `demos` prompt: the demonstration inputs in a shuffled order, one a line, ready for the next line."""
    order = list(inputs)
    rng.shuffle(order)
    return "\n".join(order) + "\n"


@register("self_study", generated=True, needs_train=False)
def self_study(
    env: InputEnv,
    n: int,
    seed: int,
    *,
    seed_prompt: SelfStudySeed = "instructions",
    temperature: Positive = 1.0,
    rounds: PositiveInt = 4,
    max_chars: PositiveInt = 240,
) -> list[Query]:
    """n inputs written by the teacher from c; each round samples what is still missing, over-drawn, and keeps
    the distinct ones that are never a held-out input. `seed_prompt`: `instructions` (the chat teacher sees c
    and a seed instruction, cycling through SEEDS, 1.5× over) or `demos` (the teacher continues a shuffled
    list of c's demonstration inputs, 2× over; kept: one line, at most 2× the longest demonstration input and
    `max_chars`, not a copy of a demonstration)."""
    if seed_prompt == "demos":
        demos = env.demo_inputs()
        if not demos:
            raise InputError("self_study: seed_prompt 'demos' continues a list of c's demonstration inputs; c has none")
        limit = min(max_chars, max(2 * max(len(d) for d in demos), 8))

        def sample_demos(r: int, need: int) -> list[str]:
            rng = random.Random(seed * 1000 + r)
            prefixes = [demo_list(demos, rng) for _ in range(max(2 * need, 8))]
            return env.continue_texts(prefixes, temperature=temperature, max_new_tokens=limit // 2 + 4, seed=seed + r)

        texts = generate_distinct(
            env,
            n,
            seed,
            sample_demos,
            rounds=rounds,
            min_chars=1,
            max_chars=limit,
            what="self_study (seed_prompt demos)",
            seeds=demos,
            cut=first_line,
        )
        return [Query(t) for t in texts]

    def sample_instructions(r: int, need: int) -> list[str]:
        count = max(need + need // 2, 4)
        instructions = [SEEDS[(r + i) % len(SEEDS)] for i in range(count)]
        return env.sample_texts(
            instructions, True, temperature=temperature, max_new_tokens=max_chars // 3, seed=seed + r
        )

    texts = generate_distinct(
        env, n, seed, sample_instructions, rounds=rounds, min_chars=8, max_chars=max_chars, what="self_study"
    )
    return [Query(t) for t in texts]


@register("paraphrase", generated=True, needs_train=True)
def paraphrase(
    env: InputEnv, n: int, seed: int, *, temperature: Positive = 0.7, rounds: PositiveInt = 3
) -> list[Query]:
    """The first n train inputs, each rewritten by the teacher (without c); a round retries the ones whose
    rewrite was dropped (a copy of the input counts as a duplicate)."""
    originals = env.train_queries(n)
    taken = {normal(q.text) for q in originals}
    banned = env.heldout_texts()
    out: dict[int, str] = {}
    for r in range(rounds):
        todo = [i for i in range(n) if i not in out]
        if not todo:
            break
        prompts = [PARAPHRASE.format(text=originals[i].text) for i in todo]
        texts = env.sample_texts(prompts, False, temperature=temperature, max_new_tokens=96, seed=seed + r)
        for i, raw in zip(todo, texts, strict=True):
            new, _ = _keep([raw], taken, banned, 2, 600)
            if new:
                out[i] = new[0]
    if len(out) < n:
        raise InputError(
            f"paraphrase: {n - len(out)} of {n} train inputs got no distinct rewrite in {rounds} rounds; "
            "raise rounds or temperature"
        )
    return [Query(out[i]) for i in range(n)]


@register("mixed", generated=True, needs_train=True)
def mixed(
    env: InputEnv,
    n: int,
    seed: int,
    *,
    share: Share = 0.5,
    temperature: Positive = 1.0,
    seed_prompt: SelfStudySeed = "instructions",
) -> list[Query]:
    """A `share` of the n inputs from self_study (with its `seed_prompt`), the rest the first train items,
    interleaved."""
    k = min(n - 1, max(1, round(share * n))) if n > 1 else 1
    generated = self_study(env, k, seed, temperature=temperature, seed_prompt=seed_prompt)
    train = env.train_queries(n - k) if n - k > 0 else []
    out: list[Query] = []
    for i in range(max(len(generated), len(train))):
        out += [q[i] for q in (train, generated) if i < len(q)]
    return out


def draw(name: str, params: dict[str, Any] | None, env: InputEnv, n: int, seed: int) -> list[Query]:
    """The inputs of one axis value (parameters checked, defaults filled in)."""
    entry, effective = INPUTS.resolve(name, params)
    return list(entry.fn(env, n, seed, **effective))
