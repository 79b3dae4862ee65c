"""The training loop: student on (c', z) → teacher targets, with any registered loss.

Plain torch rather than the HF Trainer: the teacher's work is precomputed and
cached, so a step is one student forward over short prompts, and the loop stays
small enough to read in one sitting.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_scheduler

from harness import console, generation, softprompt
from harness.batching import make_batch, target_logits, target_logits_and_hidden, to_device
from harness.ema import EmaTeacher
from harness.losses import Extras, TeacherNeeds, compute_loss, teacher_needs
from harness.metrics import TRAIN_LOSS, TRAIN_LR
from harness.teacher import TopKSeq, score_hidden, score_token_logprobs, score_topk, stack, stack_rows

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial is failed with this reason."""


@dataclass(frozen=True)
class TrainSettings:
    """What the loop needs, no defaults: they live in the suite spec (the trial builds this from it)."""

    learning_rate: float
    epochs: int
    batch_size: int
    warmup_ratio: float
    weight_decay: float
    grad_accum: int
    scheduler: str
    max_grad_norm: float
    eval_every: int
    dtype: str
    seed: int


@dataclass
class Example:
    """One distillation input: the student's prompt ids (c', z), the target ŷ, the teacher's top-k on ŷ."""

    prompt: list[int]
    target: list[int]
    teacher: TopKSeq | None = None
    teacher_prompt: list[int] | None = None  # (c, z), for on-policy scoring
    hidden: torch.Tensor | None = None  # [T, n_layers, H] teacher hidden states on ŷ, for hidden-state losses


@dataclass(frozen=True)
class OnPolicy:
    """GKD-style: for a `mix` fraction of batches the student samples ŷ and the teacher scores it."""

    mix: float
    teacher: torch.nn.Module
    max_new_tokens: int
    stop_strings: tuple[str, ...]
    tokenizer: PreTrainedTokenizerBase
    top_k: int
    temperature: float = 1.0
    teacher_mode: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # LoRA: adapters off
    ema: EmaTeacher | None = None  # teacher: ema: stepped after every optimizer update (teacher_mode swaps it in)
    # c's KV cache for the frozen teacher (`teacher.prefix`: through the teacher cache, once per study); None: prefill
    # it here, once per trial
    prefill: Callable[[list[list[int]]], generation.Prefix | None] | None = None


@dataclass(frozen=True)
class Switch:
    """A schedule's second phase: from optimizer update ⌊at · N⌋ of the N on, batches come from `examples`
    (the same inputs as the first phase's, in the same order) and, with `on_policy`, from the student."""

    at: float
    examples: list[Example]
    on_policy: OnPolicy | None = None


@dataclass
class TrainResult:
    steps: int = 0
    train_tokens: int = 0
    target_tokens: int = 0
    wall_time_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    # on-policy batches' extra work, for the cost ledger: the student's samples and the teacher's scoring of them
    onpolicy_batches: int = 0
    onpolicy_student_prompt_tokens: int = 0
    onpolicy_generated_tokens: int = 0
    onpolicy_teacher_tokens: int = 0  # (c, z, ŷ) tokens through the teacher (each forward it runs)
    ema_updates: int = 0


def apply_lora(model: torch.nn.Module, rank: int) -> PeftModel:
    """Wrap the student in LoRA adapters on every linear layer (rank > 0)."""
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    with quiet_peft():
        return get_peft_model(model, cfg)


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft reads a transformers attribute deprecated for v6 whenever it wraps a model: one log line per LoRA trial
    (and per kept adapter loaded back), about nothing the user can change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@contextlib.contextmanager
def student_of(
    base: torch.nn.Module,
    lora_rank: int,
    *,
    share_base: bool = True,
    soft_prompt: softprompt.Learned | None = None,
) -> Iterator[tuple[torch.nn.Module, Callable[[], contextlib.AbstractContextManager]]]:
    """The student to train from `base`, and a context manager under which `base` is the teacher again.

    Full fine-tuning trains a deep copy in float32 (fp32 master weights even when the frozen base is
    bf16). LoRA with `share_base` injects the adapters into `base` itself, no copy: the teacher is the
    same modules with the adapters disabled, and leaving the block removes them (`unload`, no merge),
    so `base`'s weights are untouched. A `soft_prompt` is attached to `base` itself, frozen (no copy, no
    adapters: lora_rank must be 0); the teacher is `base` with the virtual tokens switched off. Inside the
    block, run teacher work under the returned context.
    """
    if soft_prompt is not None:
        if lora_rank > 0:
            raise ValueError(f"a soft prompt trains on frozen weights: lora_rank must be 0, not {lora_rank}")
        with softprompt.attach(base, soft_prompt) as as_teacher:
            yield base, as_teacher
        return
    if lora_rank > 0 and share_base:
        flags = [p.requires_grad for p in base.parameters()]
        student = apply_lora(base, lora_rank)
        try:
            yield student, student.disable_adapter
        finally:
            student.unload()
            for p, flag in zip(base.parameters(), flags, strict=True):
                p.requires_grad_(flag)
        return
    copied = copy.deepcopy(base).float()
    for p in copied.parameters():
        p.requires_grad_(True)
    yield (apply_lora(copied, lora_rank) if lora_rank > 0 else copied), contextlib.nullcontext


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast over fp32 master weights: on GPU for 'auto' and 'bfloat16'; on CPU only when asked
    ('bfloat16'), so CI runs the GPU's mixed-precision code path; 'auto' on CPU stays plain fp32 (faster there)."""
    if device.type == "cuda" and dtype in ("auto", "bfloat16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _fused_ok(params: Sequence[torch.Tensor]) -> bool:
    """Fused AdamW (one kernel over all tensors) where torch has it: the unfused update is a fifth of a CPU step."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _on_policy_batch(
    student: torch.nn.Module,
    items: list[Example],
    op: OnPolicy,
    seed: int,
    pad_id: int,
    needs: TeacherNeeds,
    prefix: generation.Prefix | None = None,
) -> tuple[list[list[int]], list[TopKSeq | None], list[torch.Tensor | None], list[torch.Tensor] | None]:
    """Student samples targets from (c', z); the teacher scores them with (c, z): what the loss reads of it
    (top-k, the sampled tokens' log-probs, hidden states). `prefix`: c's cache, prefilled once per trial."""
    was_training = student.training
    student.eval()
    samples = generation.generate(
        student,
        op.tokenizer,
        [e.prompt for e in items],
        max_new_tokens=op.max_new_tokens,
        batch_size=len(items),
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        seed=seed,
        stop_strings=op.stop_strings,
    )
    student.train(was_training)
    tgts = [s[0] if s and s[0] else [pad_id] for s in samples]
    prompts, n = [e.teacher_prompt or [] for e in items], len(items)
    scored: list[TopKSeq | None] = [None] * n
    hidden: list[torch.Tensor | None] = [None] * n
    token_lp = None
    with op.teacher_mode():  # a LoRA student shares the teacher's modules: adapters off while it scores
        if needs.topk is not None:
            scored = list(
                score_topk(
                    op.teacher,
                    prompts,
                    tgts,
                    k=op.top_k,
                    temperature=op.temperature,
                    batch_size=n,
                    pad_id=pad_id,
                    prefix=prefix,
                )
            )
        if needs.sampled_logprobs:
            token_lp = score_token_logprobs(op.teacher, prompts, tgts, batch_size=n, pad_id=pad_id)
        if needs.hidden_layers:
            layers = needs.hidden_layers
            hidden = list(score_hidden(op.teacher, prompts, tgts, layers=layers, batch_size=n, pad_id=pad_id))
    return tgts, scored, hidden, token_lp


def _extras(
    needs: TeacherNeeds,
    sampled: bool,
    token_lp: list[torch.Tensor] | None,
    hidden: Sequence[torch.Tensor | None],
    student_hidden: torch.Tensor | None,
    T: int,
    device: torch.device,
) -> Extras | None:
    """What the loss reads besides logits and top-k, padded to the batch's [B, T] and on its device."""
    if not (needs.sampled_logprobs or needs.hidden_layers):
        return None
    teacher_hidden = None
    if needs.hidden_layers:
        rows = [h for h in hidden if h is not None]
        if len(rows) != len(hidden):
            raise ValueError("the loss reads the teacher's hidden states, but some examples carry none")
        teacher_hidden = stack_rows(rows, T).to(device)
    return Extras(
        sampled=sampled,
        teacher_token_logprobs=None if token_lp is None else stack_rows(token_lp, T).to(device),
        student_hidden=student_hidden,
        teacher_hidden=teacher_hidden,
    )


def train(
    model: torch.nn.Module,
    examples: list[Example],
    loss_name: str,
    loss_params: dict,
    settings: TrainSettings,
    *,
    pad_id: int,
    on_policy: OnPolicy | None = None,
    then: Switch | None = None,
    on_eval: Callable[[int], float | None] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train in place. `on_eval(step)` runs at eval points (it may raise to prune); `on_step` logs.
    With `then` (a target schedule), batches switch to its targets at its share of the optimizer updates."""
    if not examples:
        raise ValueError("no training examples")
    if then is not None and len(then.examples) != len(examples):
        raise ValueError(f"a schedule's phases need the same inputs: {len(examples)} and {len(then.examples)} examples")
    needs = teacher_needs(loss_name, loss_params)
    params = dict(loss_params)
    params.pop("top_k", None)  # top-k was applied when the teacher cache was built
    if (on_policy is not None or (then is not None and then.on_policy is not None)) and not needs.any:
        raise ValueError(f"on_policy targets need a distribution loss; '{loss_name}' only uses the target tokens")

    device = next(model.parameters()).device
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=_fused_ok(trainable)
    )
    per_epoch = math.ceil(len(examples) / settings.batch_size)
    total_updates = max(1, math.ceil(per_epoch * settings.epochs / settings.grad_accum))
    sched = get_scheduler(
        settings.scheduler,
        opt,
        num_warmup_steps=int(settings.warmup_ratio * total_updates),
        num_training_steps=total_updates,
    )
    eval_every = settings.eval_every or per_epoch
    switch_update = total_updates if then is None else math.floor(then.at * total_updates)
    ops = [on_policy, then.on_policy if then is not None else None]
    emas = list({id(op.ema): op.ema for op in ops if op is not None and op.ema is not None}.values())
    result = TrainResult()
    prefixes: dict[int, generation.Prefix | None] = {}  # per on-policy phase: its teacher prompts' shared prefix
    start = time.perf_counter()
    # disable=None: a bar on a terminal, nothing in a log file
    bar = tqdm(total=per_epoch * settings.epochs, desc=f"train {loss_name}", leave=False, disable=None)
    ticker = console.Ticker(f"training {loss_name}", per_epoch * settings.epochs, "step")  # a line in a log file
    step = 0
    for _epoch in range(settings.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for b in range(per_epoch):
            second = then is not None and step // settings.grad_accum >= switch_update
            pool, op = (then.examples, then.on_policy) if then is not None and second else (examples, on_policy)
            items = [pool[i] for i in order[b * settings.batch_size : (b + 1) * settings.batch_size]]
            tgts = [e.target for e in items]
            teach: Sequence[TopKSeq | None] = [e.teacher for e in items]
            hidden: Sequence[torch.Tensor | None] = [e.hidden for e in items]
            sampled, token_lp = False, None
            if op is not None and rng.random() < op.mix:
                sampled = True
                if needs.topk is not None and op.ema is None and id(op) not in prefixes:
                    # c's cache for the whole trial: the frozen teacher's (an EMA teacher's weights move each step)
                    with op.teacher_mode():
                        fill = op.prefill or functools.partial(generation.prefill, op.teacher)
                        prefixes[id(op)] = fill([e.teacher_prompt or [] for e in pool])
                tgts, teach, hidden, token_lp = _on_policy_batch(
                    model, items, op, settings.seed * 100003 + step, pad_id, needs, prefixes.get(id(op))
                )
                forwards = (needs.topk is not None) + needs.sampled_logprobs + bool(needs.hidden_layers)
                result.onpolicy_batches += 1
                result.onpolicy_student_prompt_tokens += sum(len(e.prompt) for e in items)
                result.onpolicy_generated_tokens += sum(len(t) for t in tgts)
                result.onpolicy_teacher_tokens += forwards * sum(
                    len(e.teacher_prompt or []) + len(t) for e, t in zip(items, tgts, strict=True)
                )
            batch = make_batch([e.prompt for e in items], tgts, pad_id)
            teacher_dist = None
            if needs.topk is not None:
                if any(t is None for t in teach):
                    raise ValueError(f"loss '{loss_name}' needs the teacher's top-k log-probs")
                teacher_dist = stack([t for t in teach if t is not None], batch.target_ids.shape[1])
                teacher_dist = type(teacher_dist)(
                    *(to_device(t, device) for t in (teacher_dist.indices, teacher_dist.logprobs, teacher_dist.tail))
                )
            batch = batch.to(device)
            student_hidden = None
            with _autocast(device, settings.dtype):
                if needs.hidden_layers:
                    logits, student_hidden = target_logits_and_hidden(model, batch, needs.hidden_layers)
                else:
                    logits = target_logits(model, batch)
            extras = _extras(needs, sampled, token_lp, hidden, student_hidden, batch.target_ids.shape[1], device)
            loss = compute_loss(loss_name, logits.float(), batch.target_ids, batch.mask, teacher_dist, extras, **params)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss.item()} at step {step} (learning rate "
                    f"{settings.learning_rate:g}); training diverged"
                )
            (loss / settings.grad_accum).backward()
            step += 1
            if step % settings.grad_accum == 0 or step == per_epoch * settings.epochs:
                torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                for ema in emas:
                    ema.step()
            value = float(loss.detach())
            result.losses.append(value)
            result.train_tokens += batch.n_tokens
            result.target_tokens += int(batch.mask.sum())
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            ticker.add(1, f"loss {value:.4f}")
            if on_step:
                on_step(step, {TRAIN_LOSS.name: value, TRAIN_LR.name: sched.get_last_lr()[0]})
            if on_eval and step % eval_every == 0 and step < per_epoch * settings.epochs:
                model.eval()
                on_eval(step)
                model.train()
    bar.close()
    result.steps = step
    result.ema_updates = sum(e.updates for e in emas)
    result.wall_time_s = time.perf_counter() - start
    model.eval()
    return result
