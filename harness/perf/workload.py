"""What the benchmark feeds the arms: chat prompts with |c| demonstrations, the teacher's work, train examples.

The task is the quickstart's (plural of an English noun); demonstrations are generated, so any |c| can be
asked for. Teacher prompts carry c (instruction + demonstrations), student prompts c' = empty.
"""

from __future__ import annotations

from typing import Any

from harness import generation, models, teacher
from harness.spec import Training
from harness.train import Example, TrainSettings

INSTRUCTION = "Reply with the plural form of the given English noun. Answer with the plural word only."
NOUNS = (
    "apple bird chair desk engine forest garden house island jacket kettle lamp mountain notebook orange pencil "
    "river spoon table umbrella village window yard zebra bottle candle dragon feather guitar helmet ladder mirror"
).split()
MAX_NEW_TOKENS = 8
STOP = ("\n",)


def _noun(i: int, word: int | None = None) -> str:
    """The i-th distinct noun: the list's words, then numbered copies of them."""
    return NOUNS[(i if word is None else word) % len(NOUNS)] + ("" if i < len(NOUNS) else str(i // len(NOUNS)))


def chat_prompt(tok: Any, n_demos: int, query: str, system: str | None = INSTRUCTION) -> list[int]:
    """Chat-templated prompt ids: system instruction, n demonstration turns, the query."""
    msgs: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for i in range(n_demos):
        msgs += [{"role": "user", "content": _noun(i)}, {"role": "assistant", "content": _noun(i) + "s"}]
    msgs.append({"role": "user", "content": query})
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


def queries(n: int) -> list[str]:
    """n distinct inputs z (suffixes of different lengths, so padding is exercised)."""
    return [_noun(i, word=i * 7) for i in range(n)]


def teacher_prompts(tok: Any, demos: int, qs: list[str]) -> list[list[int]]:
    return [chat_prompt(tok, demos, q) for q in qs]


def student_prompts(tok: Any, qs: list[str]) -> list[list[int]]:
    return [chat_prompt(tok, 0, q, system=None) for q in qs]


def targets(m: models.LoadedModel, prompts: list[list[int]], batch_size: int, *, reuse: bool = True) -> list[list[int]]:
    """The teacher's greedy targets, as a study computes them (`reuse`: the shared context's KV cache)."""
    outs = generation.generate(
        m.model,
        m.tokenizer,
        prompts,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=batch_size,
        stop_strings=STOP,
        reuse_prefix=reuse,
    )
    return [o[0] for o in outs]


def topk(
    m: models.LoadedModel,
    prompts: list[list[int]],
    tgts: list[list[int]],
    batch_size: int,
    k: int,
    *,
    reuse: bool = True,
) -> list[teacher.TopKSeq]:
    """The teacher's top-k along its targets (`reuse`: the shared context's KV cache)."""
    pad = m.tokenizer.pad_token_id
    return teacher.score_topk(
        m.model, prompts, tgts, k=k, temperature=1.0, batch_size=batch_size, pad_id=pad, reuse_prefix=reuse
    )


def teacher_work(
    m: models.LoadedModel, prompts: list[list[int]], batch_size: int, k: int
) -> tuple[list[list[int]], list[teacher.TopKSeq]]:
    """What a study computes once: greedy targets and the teacher's top-k along them."""
    tgts = targets(m, prompts, batch_size)
    return tgts, topk(m, prompts, tgts, batch_size, k)


def examples(
    tok: Any, qs: list[str], t_prompts: list[list[int]], tgts: list[list[int]], tops: list[teacher.TopKSeq]
) -> list[Example]:
    """Distillation examples: the student sees c' = empty, the teacher's targets and top-k came with c."""
    rows = zip(student_prompts(tok, qs), tgts, tops, t_prompts, strict=True)
    return [Example(p, t, top, tp) for p, t, top, tp in rows]


def train_examples(m: models.LoadedModel, n: int, demos: int, k: int, batch_size: int = 16) -> list[Example]:
    """n examples with their teacher work done (c = instruction + `demos` demonstrations)."""
    qs = queries(n)
    t_prompts = teacher_prompts(m.tokenizer, demos, qs)
    return examples(m.tokenizer, qs, t_prompts, *teacher_work(m, t_prompts, batch_size, k))


def settings(learning_rate: float, epochs: int, batch_size: int) -> TrainSettings:
    """The loop's settings: the suite defaults (`spec.Training`), a constant learning rate, no decay."""
    t = Training()
    return TrainSettings(
        learning_rate=learning_rate,
        epochs=epochs,
        batch_size=batch_size,
        warmup_ratio=0.0,
        weight_decay=0.0,
        grad_accum=t.grad_accum,
        scheduler="constant",
        max_grad_norm=t.max_grad_norm,
        eval_every=0,
        dtype=t.dtype,
        seed=0,
    )
