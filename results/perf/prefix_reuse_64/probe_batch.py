"""Plain generate per prompt at 256 demonstrations (4385 shared tokens) by batch size, then the reuse arm.

Usage (repository root):
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python results/perf/prefix_reuse_64/probe_batch.py N BS...
(N prompts, one plain pass per batch size BS). Run 2026-12-07 05:59-06:03 UTC with `4 1 4`, load 0.8-1.0:
plain bs 1: 75.4 s for 4 prompts = 18.8 s/prompt; plain bs 4: 87.2 s = 21.8 s/prompt; reuse bs 8: 22.1 s, same True.
"""

import os
import sys
import time

import torch

from harness import models
from harness.perf.workload import queries, targets, teacher_prompts

torch.set_num_threads(1)
m = models.load(models.EMBEDDED)
n = int(sys.argv[1])
prompts = teacher_prompts(m.tokenizer, 256, queries(n))
tg: list[list[int]] = []
for bs in [int(x) for x in sys.argv[2:]]:
    t = time.perf_counter()
    tg = targets(m, prompts, bs, reuse=False)
    a = time.perf_counter() - t
    print(f"plain bs {bs}: {a:.1f} s for {n} prompts = {a / n:.1f} s/prompt; load {os.getloadavg()[0]:.2f}", flush=True)
t = time.perf_counter()
tg2 = targets(m, prompts, 8, reuse=True)
a = time.perf_counter() - t
print(f"reuse bs 8: {a:.1f} s, same {tg == tg2}", flush=True)
