"""Part `sdft`: TRL's SDFTTrainer, context distillation itself, against a harness trial doing the same job.

`trl.experimental.sdft.SDFTTrainer` is what a user of this field would run instead of the harness: the student
sees a prompt, the teacher the same prompt with a `privileged_context` (c), the student samples on-policy and
the teacher scores every sample each step (here `teacher_model_kind="base"`: a frozen copy of the initial
student, loaded from the model's folder). The job both arms run (`Job`):

- the quickstart's instruction and first train inputs z (what `train_split` draws), c = the instruction plus
  n demonstrations as chat turns (`workload`'s nouns, so any |c| can be asked), c' = empty (the user turn);
  the token ids are the same in both arms: SDFT's `teacher_prompt_template="{privileged_context}{prompt}"`
  joins the two texts, so its teacher prompt is the harness's (c, z) exactly;
- on-policy targets: the student samples every batch (temperature 1, top_p 1, no top-k filter, at most
  `max_new_tokens`, ending at eos), the teacher scores them with c; harness `on_policy` with mix = 1;
- the loss: forward KL on the top-k + one tail bucket, the same k (SDFT: topk_logits, alpha 0, add_tail);
- fp32, no gradient checkpointing (TRL's defaults are bf16 autocast and checkpointing, both slower on CPU),
  AdamW at a constant learning rate, no weight decay, gradient norm clipped at 1, the same steps and batch.

What still differs is stated in sdft.md (`DIFFERENCES`). A trial's wall time is its teacher work plus its
training (SDFT has no teacher work outside its training loop); evaluation is left out of both.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from harness import models
from harness import teacher as teacher_work
from harness.cache import Store
from harness.perf import workload
from harness.spec import Suite, Training
from harness.targets import trains_on_precomputed
from harness.train import Example, OnPolicy, student_of, train

DIFFERENCES = (
    "Top-k support: SDFT keeps the *student's* top-k tokens and gathers the teacher there; the harness keeps"
    " the *teacher's* top-k (what its cache stores). Both add one tail bucket; the divergence is the same"
    " function (tests/test_trl_parity.py matches it to 1e-5 on a shared support).",
    "Reduction: SDFT averages each sequence over its tokens, then the sequences; the harness averages over all"
    " target tokens of the batch (equal when the samples have the same length).",
    "Prefix reuse: the harness scores each step's samples with c's KV cache, the frozen teacher's, computed once"
    " and kept in the teacher cache (`teacher.prefix`), so a cold trial computes it and a warm one reads it (an"
    " EMA teacher's would be per step); SDFT runs the teacher over (c, z, sample) for every row. This is the"
    " harness's design, not a setting SDFT has.",
    "Sampling: the two arms draw with different random streams, so their samples (and their lengths, at most"
    " the same max_new_tokens) differ; the tokens each arm generated are in the table.",
    "Teacher work outside training: on-policy, only c's KV cache (`on_policy` with mix = 1 trains on no"
    " precomputed target, so a trial asks the teacher cache for neither its greedy targets nor their top-k);"
    " it is computed or read inside the training loop, in its time. The off-policy arm's targets and top-k"
    " are computed or read through the cache and counted in its trial time.",
    "Optimizer: SDFT's default AdamW (`adamw_torch_fused`) and the harness's fused AdamW; the learning-rate"
    " schedule is constant in both.",
)


@dataclass(frozen=True)
class Job:
    """What both arms train: the student's texts (c' = empty), c as text, and the training settings."""

    queries: list[str]
    context_text: str  # c: system instruction + demonstrations as chat turns, SDFT's privileged_context
    student_texts: list[str]  # (c', z): the user turn and the assistant header
    steps: int
    batch_size: int
    top_k: int
    learning_rate: float
    max_new_tokens: int
    demos: int

    def teacher_ids(self, tok: Any) -> list[list[int]]:
        return [list(ids) for ids in tok([self.context_text + s for s in self.student_texts])["input_ids"]]

    def student_ids(self, tok: Any) -> list[list[int]]:
        return [list(ids) for ids in tok(self.student_texts)["input_ids"]]

    @property
    def epochs(self) -> int:
        return self.steps * self.batch_size // len(self.queries)


def quickstart_inputs(suite: Suite, n: int) -> list[str]:
    """The first n questions of the suite task's train split: what its `train_split` inputs are."""
    folder = suite.task_dir()
    if folder is None:
        raise ValueError(f"{suite.source}: task.path: the sdft part reads a local task's train.jsonl")
    path = folder / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(rows) < n:
        raise ValueError(f"{path}: {len(rows)} train items, the job needs {n}")
    return [str(r["question"]) for r in rows[:n]]


def _fixed(suite: Suite) -> tuple[int, int, float] | None:
    """The suite's batch size, train inputs and learning rate, when none of them is searched."""
    hp = suite.hyperparameters
    b, n, lr = hp.batch_size, hp.train_inputs, hp.learning_rate
    if isinstance(b, int) and isinstance(n, int) and isinstance(lr, int | float):
        return b, n, float(lr)
    return None


def sdft_problem(suite: Suite, steps: int) -> str | None:
    """Why `steps` cannot be this suite's job (one line naming the flag), or None."""
    fixed = _fixed(suite)
    if fixed is None:
        return f"--suite {suite.source}: the sdft part needs a fixed batch_size, train_inputs and learning_rate"
    b, n, _ = fixed
    if steps < 1 or (steps * b) % n:
        return (
            f"--sdft-steps: {steps} steps of batch {b} are not whole epochs of the suite's {n} train inputs"
            f" (use a multiple of {n // math.gcd(n, b)})"
        )
    return None


def make_job(tok: Any, suite: Suite, *, demos: int, steps: int) -> Job:
    """The quickstart's job with `demos` demonstrations in c and `steps` optimizer steps."""
    fixed = _fixed(suite)
    problem = sdft_problem(suite, steps)
    if fixed is None or problem:
        raise ValueError(problem)
    batch, n, lr = fixed
    tr = suite.training
    qs = quickstart_inputs(suite, n)
    instruction = suite.context.instruction or workload.INSTRUCTION
    msgs: list[dict[str, str]] = [{"role": "system", "content": instruction}]
    for i in range(demos):
        noun = workload._noun(i)
        msgs += [{"role": "user", "content": noun}, {"role": "assistant", "content": noun + "s"}]
    context = tok.apply_chat_template(msgs, tokenize=False)
    student = []
    for q in qs:
        full = tok.apply_chat_template(
            [*msgs, {"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        if not full.startswith(context):
            raise ValueError("the chat template does not render c as a prefix of (c, z)")
        student.append(full[len(context) :])
    return Job(qs, context, student, steps, batch, tr.top_k, lr, tr.max_new_tokens, demos)


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """TRL warns that SDFT is experimental once per import; the benchmark knows."""
    old = os.environ.get("TRL_EXPERIMENTAL_SILENCE")
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRL_EXPERIMENTAL_SILENCE", None)
        else:
            os.environ["TRL_EXPERIMENTAL_SILENCE"] = old


@dataclass
class TrialTime:
    """One trial's seconds: its training loop, and the whole trial (setup + teacher work + training)."""

    train_s: float
    total_s: float
    generated_tokens: int  # tokens the student sampled over the trial
    losses: list[float]


class SDFTArm:
    """One SDFTTrainer trial: build the trainer (its base teacher loaded from the model's folder), `train()`."""

    def __init__(self, m: models.LoadedModel, job: Job, out_dir: str) -> None:
        self.m, self.job, self.out_dir = m, job, out_dir

    def config(self, seed: int, learning_rate: float | None = None) -> Any:
        from trl.experimental.sdft import SDFTConfig

        j = self.job
        return SDFTConfig(
            output_dir=self.out_dir,
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            gradient_checkpointing=False,
            per_device_train_batch_size=j.batch_size,
            gradient_accumulation_steps=1,
            max_steps=j.steps,
            learning_rate=j.learning_rate if learning_rate is None else learning_rate,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=Training().max_grad_norm,
            logging_steps=j.steps,
            save_strategy="no",
            disable_tqdm=True,
            seed=seed,
            num_generations=1,
            max_prompt_length=None,  # SDFT's default 512 would cut c from the left
            max_completion_length=j.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            distillation_mode="topk_logits",
            distillation_topk=j.top_k,
            distillation_add_tail=True,
            distillation_alpha=0.0,  # forward KL(teacher || student)
            distillation_is_clip=None,
            teacher_model_kind="base",
            teacher_prompt_template="{privileged_context}{prompt}",
        )

    def build(self, seed: int, learning_rate: float | None = None) -> Any:
        from datasets import Dataset
        from trl.experimental.sdft import SDFTTrainer

        rows = [{"prompt": s, "privileged_context": self.job.context_text} for s in self.job.student_texts]
        with _silenced():
            return SDFTTrainer(
                model=copy.deepcopy(self.m.model),
                args=self.config(seed, learning_rate),
                train_dataset=Dataset.from_list(rows),
                processing_class=self.m.tokenizer,
            )

    def trial(self, seed: int = 0, learning_rate: float | None = None) -> TrialTime:
        t0 = time.perf_counter()
        trainer = self.build(seed, learning_rate)
        lengths: list[float] = []
        losses: list[float] = []
        original = trainer._record_completion_metrics

        def record(mode: str, batch: dict[str, Any]) -> None:  # the tokens it sampled, per generation batch
            lengths.append(float(batch["raw_completion_lengths"].sum()))
            original(mode, batch)

        trainer._record_completion_metrics = record
        t1 = time.perf_counter()
        out = trainer.train()
        t2 = time.perf_counter()
        losses.append(float(out.training_loss))
        _close(trainer)
        return TrialTime(t2 - t1, t2 - t0, int(sum(lengths)), losses)


def _close(trainer: Any) -> None:
    """accelerate keeps references to what it prepared: let the model copies go."""
    trainer.accelerator.free_memory()
    trainer.model = trainer.model_wrapped = trainer.teacher_model = trainer.optimizer = None
    gc.collect()


class HarnessArm:
    """One harness trial's teacher work (through the teacher cache, as `Workbench.examples` does) and training
    (the real `train` loop), on-policy (mix = 1) or off-policy (`strategy`'s targets read from the cache)."""

    def __init__(self, m: models.LoadedModel, job: Job, *, on_policy: bool, teacher_batch: int = 16) -> None:
        self.m, self.job, self.on_policy = m, job, on_policy
        self.t_ids, self.s_ids = job.teacher_ids(m.tokenizer), job.student_ids(m.tokenizer)
        self.teacher_batch = teacher_batch
        self.strategy, self.params = ("on_policy", {"mix": 1.0}) if on_policy else ("greedy", {})

    def examples(self, store: Store, seed: int = 0) -> list[Example]:
        """The trial's teacher work; the seed enters the cache key only for a sampling strategy (not these)."""
        m, j = self.m, self.job
        if not trains_on_precomputed(self.strategy, self.params):  # mix 1: as Workbench.examples, no teacher work
            return [Example(p, [], None, tp) for p, tp in zip(self.s_ids, self.t_ids, strict=True)]
        tgts = teacher_work.targets(
            store,
            m,
            self.t_ids,
            None,
            self.strategy,
            self.params,
            max_new_tokens=j.max_new_tokens,
            batch_size=Training().generation_batch_size,
            seed=seed,
            stop_strings=(),
        )
        tops = teacher_work.topk(store, m, self.t_ids, tgts, k=j.top_k, temperature=1.0, batch_size=self.teacher_batch)
        return [Example(p, t, top, tp) for p, t, top, tp in zip(self.s_ids, tgts, tops, self.t_ids, strict=True)]

    def warm(self, store: Store) -> None:
        """What a study's first trial leaves in the cache for the others: the teacher's targets and top-k
        (off-policy), or c's KV cache (on-policy, `teacher.prefix`)."""
        self.examples(store)
        if self.on_policy:
            teacher_work.prefix(store, self.m, self.t_ids)

    def trial(self, store: Store, seed: int = 0, learning_rate: float | None = None) -> TrialTime:
        m, j = self.m, self.job
        t0 = time.perf_counter()
        examples = self.examples(store, seed)
        settings = replace(
            workload.settings(j.learning_rate if learning_rate is None else learning_rate, j.epochs, j.batch_size),
            seed=seed,
        )
        generated = [0]
        with student_of(m.model, 0) as (student, as_teacher):
            op = None
            if self.on_policy:
                op = OnPolicy(
                    mix=1.0,
                    teacher=m.model,
                    max_new_tokens=j.max_new_tokens,
                    stop_strings=(),
                    tokenizer=m.tokenizer,
                    top_k=j.top_k,
                    teacher_mode=as_teacher,
                    prefill=functools.partial(teacher_work.prefix, store, m),  # as a harness trial: c once per study
                )
            result = train(student, examples, "forward_kl", {}, settings, pad_id=m.tokenizer.pad_token_id, on_policy=op)
            if self.on_policy:
                generated[0] = result.target_tokens
            del student
        gc.collect()
        total = time.perf_counter() - t0
        return TrialTime(result.wall_time_s, total, generated[0], result.losses)


def fresh_store() -> tuple[Store, Callable[[], None]]:
    """A teacher cache in a new temporary folder (a cold trial), and its clean-up."""
    tmp = tempfile.TemporaryDirectory(prefix="harness-perf-sdft-")
    return Store(tmp.name), tmp.cleanup
