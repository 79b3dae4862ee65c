"""fp64 reference for the 16-prompt top-k identity-check failure: per row, fp32 plain / reuse / copy vs fp64 plain."""

import os
import sys
import time
from collections.abc import Callable

import torch

from harness import batching, generation, models
from harness.perf.workload import queries, targets, teacher_prompts

torch.set_num_threads(1)
OUT = sys.argv[1]
print("load before", os.getloadavg(), flush=True)
m = models.load(models.EMBEDDED)
tok = m.tokenizer
pad = tok.pad_token_id
prompts = teacher_prompts(tok, 256, queries(16))
print("shared", generation.common_prefix_length(prompts), "lens", [len(p) for p in prompts], flush=True)
t = time.perf_counter()
tg = targets(m, prompts, 8)
print(f"targets {time.perf_counter() - t:.1f}s", [len(x) for x in tg], flush=True)
torch.save({"prompts": prompts, "targets": tg}, f"{OUT}/inputs.pt")


def plain(model: torch.nn.Module, groups: list) -> dict:
    out = {}
    for r in groups:
        b = batching.make_batch([prompts[i] for i in r], [tg[i] for i in r], pad)
        with torch.no_grad():
            lg = batching.target_logits(model, b)
        for j, i in enumerate(r):
            out[i] = lg[j, : len(tg[i])].clone()
    return out


def reuse(model: torch.nn.Module) -> dict:
    out = {}
    for idx, lg in generation.continuation_logits(model, prompts, tg, 8):
        for j, i in enumerate(idx):
            out[i] = lg[j, lg.shape[1] - len(tg[i]) :].clone()
    return out


def stage(name: str, fn: Callable[[], dict]) -> None:
    t = time.perf_counter()
    r = fn()
    print(f"{name}: {time.perf_counter() - t:.1f}s load {os.getloadavg()[0]:.2f}", flush=True)
    torch.save(r, f"{OUT}/{name}.pt")


model = m.model
stage("reuse32", lambda: reuse(model))
new = generation._prefix_cache
generation._prefix_cache = lambda lm, kv, rows: generation._expand_cache(lm, kv, rows)
stage("copy32", lambda: reuse(model))
generation._prefix_cache = new
stage("plain32", lambda: plain(model, [range(0, 8), range(8, 16)]))  # as _score_topk_plain batches them
model.double()
stage("reuse64", lambda: reuse(model))
for g, r in enumerate([[6, 10, 0, 1], [2, 3, 4, 5], [7, 8, 9, 11], [12, 13, 14, 15]]):
    stage(f"plain64_{g}", lambda r=r: plain(model, [r]))
print("load after", os.getloadavg(), flush=True)
