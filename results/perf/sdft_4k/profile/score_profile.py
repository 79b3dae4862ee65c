"""torch.profiler over one on-policy scoring call (8 rows, 8 continuation tokens) against c's prefilled KV cache.

Usage (repository root): OMP_NUM_THREADS=1 nice -n 5 python results/perf/sdft_4k/profile/score_profile.py 256"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from harness import generation, models
from harness.perf.trl_sdft import HarnessArm, make_job
from harness.spec import load_suite
from harness.teacher import score_topk

torch.manual_seed(0)
m = models.load(models.EMBEDDED)
arm = HarnessArm(
    m, make_job(m.tokenizer, load_suite("suites/quickstart.yaml"), demos=int(sys.argv[1]), steps=4), on_policy=True
)
prompts = arm.t_ids[:8]
conts = [[1000 + i + j for j in range(8)] for i in range(8)]
t = time.perf_counter()
pre = generation.prefill(m.model, arm.t_ids)
assert pre is not None
print(f"prefill of {len(pre.tokens)} tokens: {time.perf_counter() - t:.1f} s")
kw = {"k": 64, "temperature": 1.0, "batch_size": 8, "pad_id": 0, "prefix": pre}
for _ in range(2):
    t = time.perf_counter()
    score_topk(m.model, prompts, conts, **kw)
    print(f"score: {time.perf_counter() - t:.2f} s")
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
    score_topk(m.model, prompts, conts, **kw)
print(
    p.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=12, max_shapes_column_width=60
    )
)
