"""Part `memory`: peak memory of one trial's training per student kind, each in a fresh process.

Peaks never go down within a process (RSS on CPU), so every kind gets its own: `python -m harness.perf
--probe-memory KIND` loads the base (bf16 on CUDA, as a Workbench does), builds the teacher's work and
trains two steps of forward_kl.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
from typing import Any

import torch

from harness import models
from harness.perf.workload import settings, train_examples
from harness.train import student_of, train

log = logging.getLogger(__name__)

MEMORY_MODES = {  # kind → (LoRA rank, adapters injected into the base itself)
    "full fine-tune": (0, False),
    "LoRA r=16 on a deep copy (before)": (16, False),
    "LoRA r=16 on the shared base (teacher = adapters off)": (16, True),
}


def _resident_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def probe(model: str, mode: str, batch_size: int) -> dict[str, Any]:
    """In this (fresh) process: memory before the trial's training, and its peak."""
    rank, share = MEMORY_MODES[mode]
    m = models.load(model, frozen_bf16=True)
    device = next(m.model.parameters()).device
    examples = train_examples(m, batch_size, 8, 64)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    before = _resident_mb(device)
    with student_of(m.model, rank, share_base=share) as (student, _as_teacher):
        train(student, examples, "forward_kl", {}, settings(1e-5, 2, batch_size), pad_id=m.tokenizer.pad_token_id)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max_memory_allocated"
    else:
        peak, kind = _resident_mb(device), "process peak RSS"
    return {"peak_mb": peak, "before_trial_mb": before, "kind": kind}


def bench_memory(model: str, batch_size: int) -> list[dict[str, Any]]:
    """One row per student kind, each measured by `probe` in its own process."""
    rows = []
    for mode in MEMORY_MODES:
        cmd = [sys.executable, "-m", "harness.perf", "--probe-memory", mode, "--model", model]
        done = subprocess.run([*cmd, "--batch-size", str(batch_size)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory probe '{mode}' failed: {done.stderr.strip().splitlines()[-1:]}")
        res = json.loads(done.stdout.strip().splitlines()[-1])
        log.info("memory %-55s peak %.0f MB", mode, res["peak_mb"])
        rows.append(
            {
                "student": mode,
                "peak MB": res["peak_mb"],
                "before training MB": res["before_trial_mb"],
                "training adds MB": res["peak_mb"] - res["before_trial_mb"],
                "measured as": res["kind"],
            }
        )
    return rows
