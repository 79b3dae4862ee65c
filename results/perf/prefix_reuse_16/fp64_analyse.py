import glob
import sys

import torch

from harness import losses
from harness.perf.teacher_arms import TOPK_LOGPROB_TOL, topk_equal
from harness.teacher import TopKSeq

D = sys.argv[1]
K = 64


def ld(n: str) -> dict:
    return torch.load(f"{D}/{n}.pt")


arms = {n: ld(n) for n in ("plain32", "reuse32", "copy32")}
r64 = ld("reuse64")
p64 = {}
for f in sorted(glob.glob(f"{D}/plain64_*.pt")):
    p64.update(torch.load(f))


def lsm(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x.double(), -1)


def seq(x: torch.Tensor) -> TopKSeq:
    t = losses.topk_with_tail(x.float()[None], K, 1.0)
    return TopKSeq(t.indices[0].to(torch.int32), t.logprobs[0], t.tail[0])


def old_equal(a: TopKSeq, b: TopKSeq, tol: float = 1e-5) -> bool:
    return torch.allclose(a.logprobs, b.logprobs, rtol=tol, atol=tol) and torch.equal(a.indices, b.indices)


print(f"rows with an fp64 plain reference: {sorted(p64)}")
print(
    "row | reuse64 vs plain64 | plain32 vs fp64 | reuse32 vs fp64 | copy32 vs fp64 | reuse32 vs plain32 | "
    "old check | new check | top-64 ids = fp64's (plain/reuse) | min k/k+1 gap (fp64)"
)
worst = {n: 0.0 for n in arms}
d64 = 0.0
for i in range(16):
    ref = lsm(p64[i]) if i in p64 else lsm(r64[i])
    ids = ref.topk(K, -1).indices
    e = {}
    for n, rows in arms.items():
        lp = torch.log_softmax(rows[i].float(), -1).double()
        e[n] = float((lp.gather(-1, ids) - ref.gather(-1, ids)).abs().max())
        worst[n] = max(worst[n], e[n])
    dd = float((lsm(r64[i]) - lsm(p64[i])).gather(-1, ids).abs().max()) if i in p64 else float("nan")
    if i in p64:
        d64 = max(d64, dd)
    sp, sr = seq(arms["plain32"][i]), seq(arms["reuse32"][i])
    same_ids = [
        bool(torch.equal(seq(arms[n][i]).indices.long().sort(-1).values, ids.sort(-1).values))
        for n in ("plain32", "reuse32")
    ]
    top2 = ref.topk(K + 1, -1).values
    gap = float((top2[:, K - 1] - top2[:, K]).min())
    dpr = float((sp.logprobs - sr.logprobs).abs().max())
    print(
        f"{i} | {dd:.1e} | {e['plain32']:.1e} | {e['reuse32']:.1e} | {e['copy32']:.1e} | {dpr:.1e} | "
        f"{'pass' if old_equal(sp, sr) else 'FAIL'} | {'pass' if topk_equal(sp, sr) else 'FAIL'} | {same_ids} | "
        f"{gap:.1e}"
    )
print(
    "max over rows:",
    {n: f"{v:.1e}" for n, v in worst.items()},
    f"reuse64 vs plain64 {d64:.1e}",
    "tol",
    TOPK_LOGPROB_TOL,
)
