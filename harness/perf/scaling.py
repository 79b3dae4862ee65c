"""Part `scaling`: how a trial's two halves grow with |c| (demonstrations) and with train_inputs.

The teacher's work (targets + top-k) is done once per study and cached; the student's training is paid
by every trial, and its prompts carry c' = empty, so its cost must not follow |c|.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from harness import generation, models, teacher
from harness.perf.stepping import SteppedTrain
from harness.perf.timing import Goal, goal, interleaved, ratio
from harness.perf.workload import examples, queries, settings, teacher_prompts, teacher_work
from harness.train import train

log = logging.getLogger(__name__)

TEACHER, STUDENT = "teacher s (once per study)", "student training s (per trial, 1 epoch)"


def _context_sweep(
    m: models.LoadedModel, *, repeats: int, demo_counts: list[int], n: int, batch_size: int, teacher_batch: int, k: int
) -> tuple[list[dict[str, Any]], Goal]:
    """At n inputs: the teacher's work once per |c|; the student's steps at every |c| interleaved (median s/step
    × the steps of one epoch)."""
    rows: list[dict[str, Any]] = []
    student = copy.deepcopy(m.model)
    steppers: dict[str, Callable[[], float]] = {}
    qs = queries(n)
    for demos in demo_counts:
        prompts = teacher_prompts(m.tokenizer, demos, qs)
        t0 = time.perf_counter()
        work = teacher_work(m, prompts, teacher_batch, k)
        teacher_s = time.perf_counter() - t0
        ex = examples(m.tokenizer, qs, prompts, *work)
        steppers[str(demos)] = SteppedTrain(
            student, ex, "forward_kl", m.tokenizer.pad_token_id, total=1 + repeats, batch_size=batch_size
        ).step
        shared = generation.common_prefix_length(prompts)
        rows.append(
            {"sweep": "context", "demos": demos, "context tokens": shared, "train inputs": n, TEACHER: teacher_s}
        )
        log.info("scaling |c| %d demos: teacher %.1f s", demos, teacher_s)
    for step in steppers.values():  # the first step allocates the optimizer's state
        step()
    per_step = interleaved(steppers, repeats)
    fewest, most = per_step[str(min(demo_counts))], per_step[str(max(demo_counts))]
    for r in rows:
        t = per_step[str(r["demos"])]
        r["student s/step (median)"] = t.median
        r[STUDENT] = t.median * -(-n // batch_size)
        r["student step vs fewest demos"] = ratio(t, fewest)[0]
    name = f"scaling: student step with {max(demo_counts)} demos in c / with {min(demo_counts)}"
    return rows, goal(name, ratio(most, fewest), at_most=1.15, repeats=repeats)


def _inputs_sweep(
    m: models.LoadedModel, *, demos: int, inputs: list[int], batch_size: int, teacher_batch: int, k: int
) -> list[dict[str, Any]]:
    """At `demos`: one run over max(inputs) read as cumulative time at each N: the teacher's work in chunks (the
    gcd of the N values; each chunk prefills the context again, a slight overestimate) and one training epoch."""
    chunk = functools.reduce(math.gcd, inputs)
    qs = queries(max(inputs))
    prompts = teacher_prompts(m.tokenizer, demos, qs)
    cumulative: dict[int, float] = {}
    tgts: list[list[int]] = []
    tops: list[teacher.TopKSeq] = []
    done = 0.0
    for i in range(0, len(prompts), chunk):
        t0 = time.perf_counter()
        part_t, part_k = teacher_work(m, prompts[i : i + chunk], teacher_batch, k)
        done += time.perf_counter() - t0
        tgts, tops = tgts + part_t, tops + part_k
        cumulative[i + chunk] = done
    student = copy.deepcopy(m.model)
    t0 = time.perf_counter()
    stamps: list[float] = []
    train(
        student,
        examples(m.tokenizer, qs, prompts, tgts, tops),
        "forward_kl",
        {},
        settings(1e-5, 1, batch_size),
        pad_id=m.tokenizer.pad_token_id,
        on_step=lambda _s, _m: stamps.append(time.perf_counter() - t0),
    )
    shared = generation.common_prefix_length(prompts)
    rows = []
    for n in inputs:
        student_s = stamps[-(-n // batch_size) - 1]
        rows.append(
            {
                "sweep": "train inputs",
                "demos": demos,
                "context tokens": shared,
                "train inputs": n,
                TEACHER: cumulative[n],
                STUDENT: student_s,
            }
        )
        log.info("scaling N %d: teacher %.1f s, student %.1f s", n, cumulative[n], student_s)
    return rows


def bench_scaling(
    m: models.LoadedModel,
    *,
    repeats: int,
    demo_counts: list[int],
    inputs: list[int],
    batch_size: int,
    teacher_batch: int,
    top_k: int,
) -> tuple[list[dict[str, Any]], list[Goal]]:
    """Against |c| at the fewest inputs, and against train inputs at the fewest demonstrations."""
    common = {"batch_size": batch_size, "teacher_batch": teacher_batch, "k": top_k}
    rows, g = _context_sweep(m, repeats=repeats, demo_counts=demo_counts, n=min(inputs), **common)
    rows += _inputs_sweep(m, demos=min(demo_counts), inputs=inputs, **common)
    return rows, [g]
