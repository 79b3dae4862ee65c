"""The teacher's side of `axes.inputs`: what an input source draws on, for one study.

The sources themselves (`inputs.py`) only say which instructions to sample and what to keep; this gives them
the task's train items, the held-out inputs they must never reproduce, and the teacher's sampling, through
the cached `teacher.targets` (sampling strategy, the suite's seed), so a generated input set is made once
per study and every trial and seed reads the same one, with c's shared prefix run once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness import teacher as teacher_work
from harness.cache import Store
from harness.contexts import Context
from harness.inputs import Query, normal
from harness.models import LoadedModel
from harness.tasks import Split, TaskBundle, encode_prompt


class TeacherInputs:
    """An `inputs.InputEnv` over a study's task, teacher, full context c and held-out splits."""

    def __init__(
        self,
        task: TaskBundle,
        teacher: LoadedModel,
        store: Store,
        context: Context,
        heldout: Sequence[Split],
        batch_size: int,
    ) -> None:
        self.task, self.teacher, self.store, self.context = task, teacher, store, context
        self.heldout = heldout
        self.batch_size = batch_size

    def train_queries(self, n: int) -> list[Query]:
        docs = self.task.train_docs(n)
        return [Query(str(self.task.task.doc_to_text(d)), d, self.task.reference(d)) for d in docs]

    def heldout_texts(self) -> set[str]:
        """Every validation and test input, normalised: a generated input equal to one is dropped."""
        return {normal(str(self.task.task.doc_to_text(d))) for split in self.heldout for d in split.docs}

    def demo_inputs(self) -> list[str]:
        """The inputs of c's demonstrations as the task writes them: what `self_study(seed_prompt=demos)` lists."""
        return [text for text, _ in self.task.demo_pairs(self.context.n_demos)]

    def prompt_ids(self, text: str, ctx: Context) -> list[int]:
        return encode_prompt(self.teacher.tokenizer, self.task.render_text(text, ctx, self.teacher.tokenizer))

    def sample_texts(
        self, instructions: Sequence[str], with_context: bool, *, temperature: float, max_new_tokens: int, seed: int
    ) -> list[str]:
        """One sampled reply per instruction, from the teacher seeing c (or nothing), decoded."""
        ctx = self.context if with_context else Context(None, 0)
        return self._sample([self.prompt_ids(text, ctx) for text in instructions], temperature, max_new_tokens, seed)

    def continue_texts(
        self, prefixes: Sequence[str], *, temperature: float, max_new_tokens: int, seed: int
    ) -> list[str]:
        """One sampled continuation of each plain text (no chat template, no c): a list the teacher goes on with."""
        tok: Any = self.teacher.tokenizer
        return self._sample(
            [list(tok.encode(p, add_special_tokens=False)) for p in prefixes], temperature, max_new_tokens, seed
        )

    def _sample(self, prompts: list[list[int]], temperature: float, max_new_tokens: int, seed: int) -> list[str]:
        """The teacher's sampled replies to prompt ids, through the cached `teacher.targets`, decoded."""
        ids = teacher_work.targets(
            self.store,
            self.teacher,
            prompts,
            None,
            "sample",
            {"temperature": temperature, "top_p": 0.95},
            max_new_tokens=max_new_tokens,
            batch_size=self.batch_size,
            seed=seed,
            stop_strings=(),
        )
        tok: Any = self.teacher.tokenizer
        return [str(tok.decode(t, skip_special_tokens=True)) for t in ids]
