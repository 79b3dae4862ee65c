"""Seconds per phase of harness on_policy trials (the sdft part's matched job, 4 steps of batch 8) at each
number of demonstrations: c's prefill, student sampling, teacher scoring, student forward, backward.

Usage (repository root): OMP_NUM_THREADS=1 nice -n 5 python results/perf/sdft_4k/profile/phases.py 8 64 256
`--shared-store`: both trials of a |c| share one teacher cache (the second reads c's KV cache from it, as a warm
trial of a study does); default: a new cache per trial (cold)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from harness import models
from harness import train as train_mod
from harness.perf.trl_sdft import HarnessArm, fresh_store, make_job
from harness.spec import load_suite

spent: dict[str, float] = {}


def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t

    return call


def main(argv: list[str]) -> None:
    shared = "--shared-store" in argv
    demos = [int(a) for a in argv if not a.startswith("--")]
    gen = train_mod.generation
    gen.generate = timed(gen.generate, "sample")  # type: ignore[method-assign]
    gen.prefill = timed(gen.prefill, "prefill")  # type: ignore[method-assign]
    gen._prefill = timed(gen._prefill, "prefill (any)")  # type: ignore[method-assign]
    train_mod.score_topk = timed(train_mod.score_topk, "score")  # type: ignore[assignment]
    train_mod.target_logits = timed(train_mod.target_logits, "student_fwd")  # type: ignore[assignment]
    torch.Tensor.backward = timed(torch.Tensor.backward, "backward")  # type: ignore[method-assign]
    torch.manual_seed(0)
    m = models.load(models.EMBEDDED)
    suite = load_suite("suites/quickstart.yaml")
    for n in demos:
        arm = HarnessArm(m, make_job(m.tokenizer, suite, demos=n, steps=4), on_policy=True)
        ctx = len(arm.t_ids[0]) - len(arm.s_ids[0])
        store, clean = fresh_store()
        for rep in range(2):
            spent.clear()
            if not shared and rep:
                clean()
                store, clean = fresh_store()
            r = arm.trial(store)
            phases = " ".join(f"{k} {v:.2f}" for k, v in spent.items())
            print(f"ctx {ctx} trial {rep}: train {r.train_s:.1f} total {r.total_s:.1f} {phases}", flush=True)
        clean()


if __name__ == "__main__":
    main(sys.argv[1:])
