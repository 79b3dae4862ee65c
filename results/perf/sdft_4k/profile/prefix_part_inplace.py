"""shared_prefix._prefix_part against an in-place variant (scale folded into the queries, one max, exp in place,
no log-sum-exp pass) at the 4385-token on-policy scoring shape; prints seconds per call and the largest differences.

Usage (repository root): OMP_NUM_THREADS=1 nice -n 5 python results/perf/sdft_4k/profile/prefix_part_inplace.py"""

from __future__ import annotations

import time

import torch

from harness import shared_prefix


def inplace(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, q, d = query.shape
    kvh = keys.shape[1]
    g = H // kvh
    qs = (query * scale).reshape(B, kvh, g, q, d).permute(1, 0, 2, 3, 4).reshape(kvh, B * g * q, d)
    s = torch.matmul(qs, keys[0].transpose(-1, -2))
    top = s.amax(-1, keepdim=True)
    s.sub_(top).exp_()
    total = s.sum(-1, keepdim=True)
    out = torch.matmul(s, values[0]) / total
    lse = top + total.log()
    out = out.reshape(kvh, B, g, q, d).permute(1, 0, 2, 3, 4).reshape(B, H, q, d)
    return out, lse.reshape(kvh, B, g, q, 1).permute(1, 0, 2, 3, 4).reshape(B, H, q, 1)


torch.manual_seed(0)
B, H, q, d, kvh, P = 8, 9, 16, 64, 3, 4385
query, keys, values = torch.randn(B, H, q, d), torch.randn(1, kvh, P, d), torch.randn(1, kvh, P, d)
for fn in (shared_prefix._prefix_part, inplace, shared_prefix._prefix_part, inplace):
    t = time.perf_counter()
    for _ in range(10):
        fn(query, keys, values, d**-0.5)
    print(f"{fn.__name__}: {(time.perf_counter() - t) / 10:.3f} s per call")
a, b = shared_prefix._prefix_part(query, keys, values, d**-0.5), inplace(query, keys, values, d**-0.5)
print(f"max |out diff| {(a[0] - b[0]).abs().max().item():.1e}, max |lse diff| {(a[1] - b[1]).abs().max().item():.1e}")
