"""Part `train`: seconds per optimizer step, harness losses against TRL's GKDTrainer, and where the time goes.

Steady state: each arm's first steps allocate its optimizer's state and are left out; then the arms
interleave step by step (`SteppedTrain`), each keeping its own optimizer.
"""

from __future__ import annotations

import copy
import functools
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness import models
from harness.batching import make_batch
from harness.perf import profiles
from harness.perf.stepping import KL_LOSSES, SteppedTrain, phases
from harness.perf.timing import Goal, goal, interleave, interleaved, ratio, row, timed
from harness.perf.trl_gkd import TRLStep
from harness.perf.workload import train_examples

log = logging.getLogger(__name__)

NLL, FKL, TRL = "harness self_target_nll", "harness forward_kl", "trl gkd forward_kl"


@dataclass
class TrainReport:
    rows: list[dict[str, Any]]
    goals: list[Goal]
    phases: dict[str, dict[str, float]]  # arm → phase → median seconds
    profile: str
    tokens: int
    targets: int
    trl_optim: str  # TRL's default optimizer, as its args name it


def bench_train(
    m: models.LoadedModel,
    *,
    repeats: int,
    batch_size: int,
    demos: int,
    top_k: int,
    warmup: int = 2,
    trl_default: bool = False,
) -> TrainReport:
    """Seconds per step: harness losses and TRL GKD interleaved after `warmup` steps each; then phases and
    a profile of one step of each."""
    examples = train_examples(m, batch_size, demos, top_k)
    pad = m.tokenizer.pad_token_id
    tokens = make_batch([e.prompt for e in examples], [e.target for e in examples], pad).n_tokens
    n_targets = sum(len(e.target) for e in examples)
    setting = f"batch {batch_size}, {tokens} tokens, {n_targets} target tokens"
    # The harness arms share one student (one runs at a time; each step ends with zero_grad), each with its
    # own `train` call and so its own AdamW state.
    student = copy.deepcopy(m.model)
    arms: dict[str, Callable[[], float]] = {
        f"harness {loss}": SteppedTrain(student, examples, loss, pad, warmup + repeats).step
        for loss in ("self_target_nll", *KL_LOSSES)
    }
    peers: list[TRLStep] = []
    try:
        peers.append(TRLStep(copy.deepcopy(m.model), copy.deepcopy(m.model), m.tokenizer, examples, bf16=False))
        arms[TRL] = functools.partial(timed, peers[0].step)
        if trl_default:
            peers.append(TRLStep(copy.deepcopy(m.model), copy.deepcopy(m.model), m.tokenizer, examples, bf16=True))
            arms[f"{TRL}, TRL default bf16 autocast"] = functools.partial(timed, peers[1].step)
    except ImportError as e:
        log.warning("TRL not installed (%s): pip install trl==1.16.0; TRL arm skipped", e)
    for _ in range(warmup):
        for arm in arms.values():
            arm()
    timings = interleaved(arms, repeats)
    rows = [row("train", t, setting, "s/step") for t in timings.values()]
    goals = [
        goal(
            f"train: {loss} step / self_target_nll step",
            ratio(timings[f"harness {loss}"], timings[NLL]),
            at_most=1.15,
            repeats=repeats,
        )
        for loss in KL_LOSSES
    ]
    if peers:
        r = ratio(timings[TRL], timings[FKL])
        goals.append(goal("train: TRL GKD step / harness forward_kl step", r, at_least=1.5, repeats=repeats))

    # where the time goes: phases of one step (interleaved), and the profiler's table of one step of each
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-6, fused=True)
    phase_arms: dict[str, Callable[[], dict[str, float]]] = {
        f"harness {loss}": functools.partial(phases, student, opt, examples, loss, pad)
        for loss in ("self_target_nll", "forward_kl")
    }
    if peers:
        phase_arms[TRL] = peers[0].phases
    for phase in phase_arms.values():
        phase()
    samples = interleave(phase_arms, 3)
    medians = {n: {k: statistics.median(s[k] for s in v) for k in v[0]} for n, v in samples.items()}

    profile = ""
    for loss in ("self_target_nll", "forward_kl"):
        stepper = SteppedTrain(student, examples, loss, pad, 2)
        profile += profiles.table(profiles.repeated(stepper.step), f"harness {loss}")
    if peers:
        profile += profiles.table(
            profiles.repeated(peers[0].step), f"TRL GKDTrainer forward_kl ({peers[0].optim_name})"
        )
    for peer in peers:
        peer.close()
    optim = peers[0].optim_name if peers else ""
    return TrainReport(rows, goals, medians, profile, tokens, n_targets, optim)


def notes(report: TrainReport) -> list[str]:
    """What bounds the training ratios, read off the measured phases (not a model of them)."""
    ph = report.phases
    nll, fkl, trl = ph.get(NLL), ph.get(FKL), ph.get(TRL)
    if not (nll and fkl):
        return []
    h = sum(fkl.values())
    lines = [
        "### What bounds the training ratios (from the phase table below)",
        "",
        f"- KL vs NLL: both steps are one student forward with the LM head on the {report.targets} target positions"
        f" only, one backward and one optimizer step; the loss itself takes {1000 * fkl['loss']:.1f} ms for"
        f" forward_kl against {1000 * nll['loss']:.1f} ms for self_target_nll, of a {h:.2f} s step"
        f" ({h / sum(nll.values()):.2f}× the NLL step by phases).",
    ]
    if trl:
        t = sum(trl.values())
        extra_fwd = trl["student forward (LM head on all positions)"] - fkl["student forward (LM head on targets)"]
        lines.append(
            f"- TRL vs harness: TRL's step ({t:.2f} s) is the harness's ({h:.2f} s) plus the teacher forward"
            f" ({trl['teacher forward']:.2f} s), the LM head and softmax over all {report.tokens} positions"
            f" (student forward +{extra_fwd:.2f} s, backward +{trl['backward'] - fkl['backward']:.2f} s,"
            f" full-vocabulary loss {trl['loss']:.2f} s); clip + optimizer {fkl['clip + optimizer']:.2f} s"
            f" (harness, fused AdamW) vs {trl['clip + optimizer']:.2f} s (TRL, {report.trl_optim})."
            f" By phases the ratio is {t / h:.2f}× on this batch: both pay the student's own forward, backward"
            " and update; what the harness saves is the teacher's forward and the full-vocabulary head, so the"
            " ratio grows with the teacher's share (a teacher that sees c, as context distillation needs, or a"
            " larger teacher)."
        )
    return lines + [""]
