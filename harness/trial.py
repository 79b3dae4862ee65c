"""One trial: a concrete configuration and one training seed → teacher cache → trained student → metrics.

Knows nothing of Optuna or MLflow: the sweep hands it a configuration, a seed and an
optional reporter (for intermediate values and pruning) and gets metrics back.
State that does not depend on the trial (teacher model, task, its validation and test
items, caches, teacher and baseline scores) lives in `Workbench`, built once per study.
The student is scored on both splits; everything that chooses (held-out KL for the
pruner, the objective) reads validation only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from peft import PeftModel

from harness import aggregate, intrinsic, ledger, models, prefix_kv, scoring, softprompt, stores
from harness import teacher as teacher_work
from harness.cache import Store
from harness.config import TrialConfig, train_settings
from harness.contexts import MODIFICATIONS, Context, init_ids, modify
from harness.ema import EmaTeacher
from harness.inputs import Query, draw
from harness.losses import TeacherNeeds, teacher_needs
from harness.metrics import HELDOUT_KL, TrialMetrics
from harness.results import Arms, ContextGap, TrainingInput, TrialResult
from harness.spec import AxisValue, Suite, SuiteError
from harness.targets import TARGETS, Phase, phases, trains_on_precomputed
from harness.tasks import SPLITS, Split, TaskBundle, encode_prompt, load_task, task_manager
from harness.teacher_inputs import TeacherInputs
from harness.train import Example, OnPolicy, Switch, student_of, train

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Receives intermediate metrics; `report` may raise to stop a hopeless trial early."""

    def report(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_step(self, step: int, metrics: dict[str, float]) -> None: ...


class InvalidCombination(ValueError):
    """An axis combination that cannot be run (e.g. on_policy targets with a token-only loss)."""


@dataclass(frozen=True)
class HeldOut:
    """The held-out inputs behind the intrinsic metrics, with the teacher's greedy targets and top-k on them."""

    docs: list[dict[str, Any]]
    prompts: list[list[int]]  # (c, z), the teacher's prompts
    targets: list[list[int]]
    topk: list[teacher_work.TopKSeq]


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory on CUDA; peak resident memory of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class Workbench:
    """Study-wide state shared by every trial: models, task, cache, the full context c."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.store = Store(stores.cache_root(suite))
        log.info("loading teacher %s", suite.models.teacher)
        self.teacher = models.load(suite.models.teacher, suite.models.device, frozen_bf16=True)
        self.device = next(self.teacher.model.parameters()).device
        self.student_base: models.LoadedModel | None = None
        if suite.models.student != "same":
            self.student_base = models.load(suite.models.student, suite.models.device, frozen_bf16=True)
            models.check_same_tokenizer(self.teacher.tokenizer, self.student_base.tokenizer)
        for i, loss in enumerate(suite.axes.losses):  # hidden-state losses: comparable states, checked up front
            if layers := teacher_needs(loss.name, loss.params).hidden_layers:
                self.hidden_layers(layers, f"axes.losses.{i} '{loss.label}'")
        self.tok = self.teacher.tokenizer
        self.pad_id = self.tok.pad_token_id
        self.task: TaskBundle = load_task(suite.task.name, suite.task_dir(), allow_code=suite.task.allow_code)
        self.splits: dict[str, Split] = {
            "validation": self.task.split("validation", suite.task.validation_limit, suite.seed),
            "test": self.task.split("test", suite.task.eval_limit, suite.seed),
        }
        stops = suite.training.stop_strings
        self.stop = self.task.stop_strings() if stops is None else tuple(stops)
        self.context = self._full_context()
        self.memo: dict[Any, Any] = {}
        self._heldout: HeldOut | None = None
        self.metric = scoring.main_metric(self.task.config, self.task.task, suite.task.metric)
        self.control: TaskBundle | None = None
        if suite.task.control:
            self.control = load_task(suite.task.control.name, suite.control_dir(), allow_code=suite.task.allow_code)
            self.control_metric = scoring.main_metric(self.control.config, self.control.task, suite.task.control.metric)
            self.control_split = self.control.scored_split(suite.task.control.eval_limit)

    def _full_context(self) -> Context:
        """c from the suite: its instruction, system prompt and document (read from their files; the document
        cut to `max_tokens`), and its demonstrations. A c that cannot fit the teacher's window fails here, before
        any trial, naming the field."""
        c, texts = self.suite.context, self.suite.context_texts()
        document = texts.get("document")
        if document is not None and c.document is not None and c.document.max_tokens is not None:
            ids = self.tok.encode(document, add_special_tokens=False)
            if len(ids) > c.document.max_tokens:
                document = str(self.tok.decode(ids[: c.document.max_tokens], skip_special_tokens=True)).strip()
        ctx = Context(c.instruction, c.demos, texts.get("system_prompt"), document)
        window = getattr(self.teacher.model.config, "max_position_embeddings", None)
        if window and ctx.system:
            needed = len(self.tok.encode(ctx.system, add_special_tokens=False)) + self.suite.training.max_new_tokens
            if needed > window:
                field = "context.document" if document else "context.system_prompt"
                raise SuiteError(
                    f"{self.suite.source}: {field}: c is {needed - self.suite.training.max_new_tokens} tokens, with "
                    f"the answer more than the teacher's window of {window}; set context.document.max_tokens "
                    "or shorten the text"
                )
        return ctx

    def inputs(self, source: AxisValue, n: int) -> list[Query]:
        """The trial's inputs z from its source (`axes.inputs`): made once per study and source with the
        suite's seed, so every configuration and seed drawing from it trains on the same inputs."""
        key = ("inputs", source.label, n)
        if key not in self.memo:
            env = TeacherInputs(
                self.task,
                self.teacher,
                self.store,
                self.context,
                list(self.splits.values()),
                self.suite.training.generation_batch_size,
            )
            self.memo[key] = draw(source.name, source.params, env, n, self.suite.seed)
        return self.memo[key]

    def encode_queries(self, queries: list[Query], ctx: Context) -> list[list[int]]:
        """Prompt ids of each input under ctx: a task item through lm-eval's own prompt, a generated one as the
        same prompt with its text in place of the item's (`TaskBundle.render_text`)."""
        return [
            self.encode([q.doc], ctx)[0]
            if q.doc is not None
            else encode_prompt(self.tok, self.task.render_text(q.text, ctx, self.tok))
            for q in queries
        ]

    # --- prompts -----------------------------------------------------------------------------------
    def student_context(self, mod: AxisValue) -> Context:
        return modify(mod.name, self.context, self.task.env(self.context, self.tok), mod.params)

    def soft_prompt(self, mod: AxisValue, seed: int) -> softprompt.Learned | None:
        """The untrained virtual tokens or KV prefix of a learned c' (None for a text-only one), on the student's
        device."""
        entry, params = MODIFICATIONS.resolve(mod.name, mod.params)
        if not entry.learned:
            return None
        n = int(params["n_tokens"])
        ids = init_ids(self.context, self.task.env(self.context, self.tok), n) if params["init"] == "text" else None
        make = prefix_kv.initial if entry.kind == "kv" else softprompt.initial
        return make(self.base_model(), n, ids, seed, context=mod.label, lr_scale=params["lr_scale"])

    def encode(self, docs: list[dict[str, Any]], ctx: Context) -> list[list[int]]:
        """Prompt ids of (ctx, doc), the ids lm-eval feeds the model for the same item (BOS included)."""
        return [encode_prompt(self.tok, self.task.render(d, ctx, self.tok)) for d in docs]

    def base_model(self) -> torch.nn.Module:
        """The student's starting weights: the teacher itself for self-distillation."""
        return (self.student_base or self.teacher).model

    def hidden_layers(self, layers: tuple[int, ...], where: str = "loss") -> tuple[int, ...]:
        """The teacher's absolute hidden-state indices (a ModelError when the two models' states differ in size)."""
        return models.hidden_layers(self.teacher.model, (self.student_base or self.teacher).model, layers, where)

    def examples(
        self,
        phase: Phase,
        t_prompts: list[list[int]],
        s_prompts: list[list[int]],
        refs: list[str],
        seed: int,
        needs: TeacherNeeds,
    ) -> list[Example]:
        """One phase's training examples: its targets ŷ and what the loss reads of the teacher along them, all
        from the teacher cache (top-k keyed by k and τ, hidden states by their layers). A phase that never trains
        on them (on_policy with mix 1) gets none: empty targets, the teacher prompts for on-policy scoring."""
        s = self.suite
        if not trains_on_precomputed(phase.name, phase.params):  # on_policy, mix 1: every batch is sampled
            return [Example(p, [], None, tp, None) for p, tp in zip(s_prompts, t_prompts, strict=True)]
        tgts = teacher_work.targets(
            self.store,
            self.teacher,
            t_prompts,
            refs,
            phase.name,
            phase.params,
            max_new_tokens=s.training.max_new_tokens,
            batch_size=s.training.generation_batch_size,
            seed=seed,
            stop_strings=self.stop,
        )
        tops: list[Any] = [None] * len(tgts)
        hidden: list[Any] = [None] * len(tgts)
        if needs.topk is not None:
            k, tau = needs.topk[0] or s.training.top_k, needs.topk[1]
            tops = teacher_work.topk(
                self.store, self.teacher, t_prompts, tgts, k=k, temperature=tau, batch_size=s.evaluation.batch_size
            )
        if needs.hidden_layers:
            layers = self.hidden_layers(needs.hidden_layers)
            hidden = teacher_work.hidden(
                self.store, self.teacher, t_prompts, tgts, layers=layers, batch_size=s.evaluation.batch_size
            )
        return [
            Example(p, t, top, tp, h) for p, t, top, tp, h in zip(s_prompts, tgts, tops, t_prompts, hidden, strict=True)
        ]

    def greedy_targets(self, prompts: list[list[int]]) -> list[list[int]]:
        """The teacher's greedy answers to prompts under the suite's generation settings, through the cache:
        the held-out references and what a report shows the student is taught."""
        s = self.suite
        return teacher_work.targets(
            self.store,
            self.teacher,
            prompts,
            None,
            "greedy",
            {},
            max_new_tokens=s.training.max_new_tokens,
            batch_size=s.training.generation_batch_size,
            seed=s.seed,
            stop_strings=self.stop,
        )

    # --- held-out references, computed once per study ----------------------------------------------
    def heldout(self) -> HeldOut:
        """The intrinsic metrics' inputs: the first `heldout_inputs` validation items (they feed the pruner)."""
        if self._heldout is None:
            s = self.suite
            docs = list(self.splits["validation"].docs[: s.evaluation.heldout_inputs])
            prompts = self.encode(docs, self.context)
            tgts = self.greedy_targets(prompts)
            top = teacher_work.topk(
                self.store,
                self.teacher,
                prompts,
                tgts,
                k=s.training.top_k,
                temperature=1.0,
                batch_size=s.evaluation.batch_size,
            )
            self._heldout = HeldOut(docs, prompts, tgts, top)
        return self._heldout

    def intrinsic(self, model: torch.nn.Module, ctx: Context) -> dict[str, float]:
        """Held-out KL and greedy agreement of `model` seeing c' against the teacher seeing c."""
        h = self.heldout()
        s = self.suite
        prompts = self.encode(h.docs, ctx)
        kl = intrinsic.heldout_kl(
            model, prompts, h.targets, h.topk, pad_id=self.pad_id, batch_size=s.evaluation.batch_size
        )
        answers = intrinsic.greedy_answers(
            model,
            self.tok,
            prompts,
            max_new_tokens=s.training.max_new_tokens,
            batch_size=s.training.generation_batch_size,
            stop_strings=self.stop,
        )
        return {"heldout_kl": kl, "greedy_agreement": intrinsic.agreement(answers, h.targets, self.tok)}

    def baseline_intrinsic(self, ctx: Context) -> dict[str, float]:
        """The untrained student's intrinsic metrics with c': the bar a trained student must clear."""
        key = ("baseline_intrinsic", ctx)
        if key not in self.memo:
            parts = {
                "model": (self.student_base or self.teacher).fingerprint,
                "teacher": self.teacher.fingerprint,
                "context": [ctx.system, ctx.n_demos],
                "heldout": self.heldout().prompts,
                "max_new_tokens": self.suite.training.max_new_tokens,
                "stop": list(self.stop),
                "top_k": self.suite.training.top_k,
            }
            self.memo[key] = self.store.get_or_compute(
                "baseline_intrinsic", parts, lambda: self.intrinsic(self.base_model(), ctx)
            )
        return self.memo[key]

    # --- lm-eval arms ------------------------------------------------------------------------------
    def arm(
        self,
        arm: str,
        model: torch.nn.Module,
        fingerprint: str | None,
        ctx: Context,
        split: str = "test",
        control: bool = False,
    ) -> scoring.ArmScore:
        """Score a model under a context on one split of the task (or on the control task); fixed models
        (fingerprint given) are scored once per study, split and rerun. Scoring always uses the suite's seed:
        a training seed changes the student, not how it is scored."""
        s = self.suite
        task = self.control if control else self.task
        if task is None:
            raise ValueError(f"arm '{arm}' scores the control task, but the suite names no task.control")
        metric = self.control_metric if control else self.metric
        items = self.control_split if control else self.splits[split]
        args = (arm, model, self.tok, task.lm_eval_task(items), task.name, ctx)
        kwargs = {
            "metric": metric,
            "limit": items.limit if items.indices is None else None,
            "samples": None if items.indices is None else list(items.indices),
            "batch_size": s.evaluation.batch_size,
            "seed": s.seed,
            "task_manager": task_manager(task.folder),
        }
        if fingerprint is None:
            return scoring.evaluate_arm(*args, **kwargs)
        key = ("arm", fingerprint, ctx, task.name, items.name)
        if key not in self.memo:
            self.memo[key] = scoring.cached_arm(
                self.store, fingerprint, *args, data=items.fingerprint, split=items.key(), **kwargs
            )
        return self.memo[key]

    def control_context(self) -> Context:
        c = self.suite.task.control
        if c is None:
            raise ValueError("the suite names no task.control")
        return Context(c.instruction, c.demos)

    def teacher_arm(self, split: str = "test") -> scoring.ArmScore:
        return self.arm("teacher", self.teacher.model, self.teacher.fingerprint, self.context, split)

    def baseline_arm(self, ctx: Context, split: str = "test") -> scoring.ArmScore:
        base = self.student_base or self.teacher
        return self.arm("baseline", base.model, base.fingerprint, ctx, split)

    def split_notes(self) -> dict[str, str]:
        """How each split's items were chosen (a carved validation slice says so), for the report."""
        return {name: split.note for name, split in self.splits.items()}


def check_combination(cfg: TrialConfig) -> None:
    """Raise InvalidCombination for a configuration that cannot run (before any teacher or training work)."""
    if MODIFICATIONS.lookup(cfg.context.name).learned and cfg.hp.lora_rank > 0:
        raise InvalidCombination(
            f"context '{cfg.context.label}' learns virtual tokens on frozen weights; it needs lora_rank 0, "
            f"not {cfg.hp.lora_rank}"
        )
    if TARGETS[cfg.target.name].uses_student and not teacher_needs(cfg.loss.name, cfg.loss.params).any:
        raise InvalidCombination(
            f"target '{cfg.target.label}' samples from the student and needs a distribution loss "
            f"(forward_kl, reverse_kl, jsd), not '{cfg.loss.label}'"
        )
    ema = [p for p in phases(cfg.target.name, cfg.target.params) if p.params.get("teacher") == "ema"]
    if ema and MODIFICATIONS.lookup(cfg.context.name).learned:
        raise InvalidCombination(
            f"target '{cfg.target.label}' has teacher: ema, an average of the student's weights; context "
            f"'{cfg.context.label}' trains virtual tokens on frozen weights, so that teacher is the base: "
            "use teacher: base"
        )


def run_trial(
    bench: Workbench,
    cfg: TrialConfig,
    seed: int,
    reporter: Reporter | None = None,
    on_trained: Callable[[torch.nn.Module], None] | None = None,
) -> TrialResult:
    """Train one student with one seed and measure it on both splits. Raises on failure; the caller records why.

    The seed changes the data order, the LoRA init, sampled teacher targets and on-policy draws, nothing else.
    `on_trained` receives the trained student before anything else (a LoRA student still as its adapter), for
    whoever keeps it; the trial itself discards it once scored.
    """
    check_combination(cfg)
    with contextlib.ExitStack() as stack:  # a LoRA student's adapters leave the base model when the trial ends
        return _run_trial(bench, cfg, seed, reporter, on_trained, stack)


def _run_trial(
    bench: Workbench,
    cfg: TrialConfig,
    seed: int,
    reporter: Reporter | None,
    on_trained: Callable[[torch.nn.Module], None] | None,
    stack: contextlib.ExitStack,
) -> TrialResult:
    s = bench.suite
    start = time.perf_counter()
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)
    c_student = bench.student_context(cfg.context)
    queries = bench.inputs(cfg.inputs, cfg.hp.train_inputs)
    t_prompts = bench.encode_queries(queries, bench.context)
    s_prompts = bench.encode_queries(queries, c_student)
    refs = [q.reference or "" for q in queries]

    t0 = time.perf_counter()
    loss_params = cfg.loss.params
    needs = teacher_needs(cfg.loss.name, loss_params)
    plan = phases(cfg.target.name, cfg.target.params)  # one phase, or a schedule's two
    phase_examples = [bench.examples(p, t_prompts, s_prompts, refs, seed, needs) for p in plan]
    teacher_s = time.perf_counter() - t0
    examples = phase_examples[0]
    tgts = [e.target for e in examples]

    before = bench.baseline_intrinsic(c_student)
    if reporter:
        reporter.log_step(0, {HELDOUT_KL.name: before["heldout_kl"]})
    # The fixed models' scores first: a LoRA student's adapters go into the base model itself (no copy).
    eval_start = time.perf_counter()
    fixed = {name: (bench.teacher_arm(name), bench.baseline_arm(c_student, name)) for name in SPLITS}
    control_base = control_base_arm(bench) if bench.control is not None else None
    eval_s = time.perf_counter() - eval_start
    if cfg.hp.lora_rank > 0:
        torch.manual_seed(seed)  # adapter init must not depend on what ran before (cached arms, lm-eval)
    prompt = bench.soft_prompt(cfg.context, seed)
    student, as_teacher = stack.enter_context(student_of(bench.base_model(), cfg.hp.lora_rank, soft_prompt=prompt))

    emas: list[EmaTeacher] = []  # teacher: ema, one average however many phases use it

    def on_policy_of(phase: Phase) -> OnPolicy | None:
        if not TARGETS[phase.name].uses_student:
            return None
        if phase.params.get("teacher") == "ema":  # SDFT's: the student itself, holding its averaged weights
            if not emas:
                emas.append(EmaTeacher(student, float(phase.params["update_rate"]), int(phase.params["sync_steps"])))
            kind: dict[str, Any] = {"teacher": student, "teacher_mode": emas[0].as_teacher, "ema": emas[0]}
        else:
            prefill = functools.partial(teacher_work.prefix, bench.store, bench.teacher)  # c once per study
            kind = {"teacher": bench.teacher.model, "teacher_mode": as_teacher, "prefill": prefill}
        return OnPolicy(
            mix=float(phase.params.get("mix", 0.5)),
            max_new_tokens=s.training.max_new_tokens,
            stop_strings=bench.stop,
            tokenizer=bench.tok,
            top_k=int((needs.topk[0] if needs.topk else None) or s.training.top_k),
            temperature=needs.topk[1] if needs.topk else 1.0,
            **kind,
        )

    on_policy = on_policy_of(plan[0])
    then = Switch(plan[0].until, phase_examples[1], on_policy_of(plan[1])) if len(plan) > 1 else None

    def on_eval(step: int) -> None:
        h = bench.heldout()
        kl = intrinsic.heldout_kl(
            student,
            bench.encode(h.docs, c_student),
            h.targets,
            h.topk,
            pad_id=bench.pad_id,
            batch_size=s.evaluation.batch_size,
        )
        if reporter:
            reporter.report(step, {HELDOUT_KL.name: kl})

    settings = train_settings(cfg.hp, s.training, seed)
    if prompt is not None:  # virtual tokens take a larger step than weights (soft_prompt's lr_scale)
        settings = dataclasses.replace(settings, learning_rate=settings.learning_rate * float(prompt.meta["lr_scale"]))
    result = train(
        student,
        examples,
        cfg.loss.name,
        loss_params,
        settings,
        pad_id=bench.pad_id,
        on_policy=on_policy,
        then=then,
        on_eval=on_eval if reporter else None,
        on_step=reporter.log_step if reporter else None,
    )
    if on_trained is not None:
        on_trained(student)
    if cfg.hp.lora_rank > 0:
        # the transformers model, adapters active (not merged into the base, which is the teacher)
        student = cast(PeftModel, student).get_base_model()
    after = bench.intrinsic(student, c_student)
    if reporter:
        reporter.log_step(result.steps, {HELDOUT_KL.name: after["heldout_kl"]})
    h = bench.heldout()
    virtual = prompt.n_tokens if prompt is not None else 0  # |c| − n: the virtual tokens are context too
    saved = [len(a) - len(b) - virtual for a, b in zip(h.prompts, bench.encode(h.docs, c_student), strict=True)]
    eval_start = time.perf_counter()
    split_arms = {
        name: Arms(t_arm, b_arm, bench.arm("student", student, None, c_student, name))
        for name, (t_arm, b_arm) in fixed.items()
    }
    if control_base is not None:
        # a learned c' leaves the weights untouched: off its own task the student is the base without its tokens
        c_student_arm = (
            dataclasses.replace(control_base, arm="control_student")
            if prompt is not None
            else bench.arm("control_student", student, None, bench.control_context(), control=True)
        )
        split_arms["test"] = dataclasses.replace(
            split_arms["test"], control_base=control_base, control_student=c_student_arm
        )
    eval_s += time.perf_counter() - eval_start
    scores = aggregate.score_metrics(
        [split_arms["validation"]], [split_arms["test"]], n_boot=s.evaluation.bootstrap, seed=s.seed
    )
    inputs = [
        TrainingInput(q.text, r, str(bench.tok.decode(t, skip_special_tokens=True)))
        for q, r, t in zip(queries, refs, tgts, strict=True)
    ]
    metrics = TrialMetrics(
        **scores,
        heldout_kl=after["heldout_kl"],
        untrained_heldout_kl=before["heldout_kl"],
        greedy_agreement=after["greedy_agreement"],
        untrained_greedy_agreement=before["greedy_agreement"],
        context_tokens_saved=sum(saved) / len(saved),
        train_tokens=float(result.train_tokens),
        target_tokens=float(result.target_tokens),
        train_steps=float(result.steps),
        final_train_loss=result.losses[-1],
        train_time_s=result.wall_time_s,
        teacher_time_s=teacher_s,
        eval_time_s=eval_s,
        wall_time_s=time.perf_counter() - start,
        peak_memory_mb=peak_memory_mb(bench.device),
        train_tokens_per_s=result.train_tokens / max(result.wall_time_s, 1e-9),
    )
    costs = ledger.trial_ledger(
        bench.teacher.model,
        bench.base_model(),
        phase_examples,
        train_tokens=result.train_tokens,
        teacher_s=teacher_s,
        train_s=result.wall_time_s,
        scoring_s=eval_s,
        wall_s=metrics.wall_time_s,
        peak_memory_mb=metrics.peak_memory_mb,
        onpolicy=result,
        ema=emas[0] if emas else None,
    )
    return TrialResult(metrics, split_arms["validation"], split_arms["test"], c_student, inputs, seed, costs)


def control_base_arm(bench: Workbench) -> scoring.ArmScore:
    """The control task for the untrained model (cached): scored before a LoRA student's adapters enter it."""
    base = bench.student_base or bench.teacher
    return bench.arm("control_base", base.model, base.fingerprint, bench.control_context(), control=True)


def context_gaps(bench: Workbench, split: str = "validation") -> list[ContextGap]:
    """Teacher (c) against the untrained model under each c' of the suite: does the task measure distillation?

    On the validation split by default: deciding whether a task and its contexts are worth a study is a
    choice, and choices never read test. Uses the same cached arms as the trials, so checking a task first
    makes the sweep's first trial cheaper.
    """
    t_arm = bench.teacher_arm(split)
    rows = []
    for mod in bench.suite.axes.contexts:
        ctx = bench.student_context(mod)
        b_arm = bench.baseline_arm(ctx, split)
        gap, se, n = scoring.paired_difference(t_arm, b_arm)
        rows.append(
            ContextGap(mod.label, bench.metric, n, t_arm.score, t_arm.stderr, b_arm.score, b_arm.stderr, gap, se)
        )
    return rows


def per_item_table(result: TrialResult) -> list[dict[str, Any]]:
    """Teacher, baseline and student answers side by side with the reference, one row per scored item and split."""
    rows = []
    for split in SPLITS:
        arms: Arms = getattr(result, split)
        t, b, s = arms.teacher, arms.baseline, arms.student
        for i in sorted(s.per_item):
            rows.append(
                {
                    "split": split,
                    "doc_id": i,
                    "reference": s.references.get(i, ""),
                    "teacher": t.answers.get(i, ""),
                    "baseline": b.answers.get(i, ""),
                    "student": s.answers.get(i, ""),
                    "teacher_score": t.per_item.get(i),
                    "baseline_score": b.per_item.get(i),
                    "student_score": s.per_item.get(i),
                }
            )
    return rows
