"""How much the top-k + tail KL misses: on real teacher outputs of the embedded model, the full-vocabulary forward
KL(teacher with c ‖ untrained student with c' = empty) against the k+1-bucket KL the harness trains on, per k.

The k+1-bucket KL is a lower bound of the full one (the data-processing inequality); the gap is what the tail hides.
Run: `python -m harness.perf.topk_gap --out results/perf` (CPU, about a minute).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from harness import models
from harness.batching import make_batch, target_logits
from harness.losses import forward_kl, topk_with_tail
from harness.perf import workload


def measure(m: models.LoadedModel, n: int, demos: int, ks: list[int]) -> list[dict[str, float]]:
    """Rows per k: full KL, top-k + tail KL, their gap, kept teacher mass (mean, 5th percentile), tokens."""
    tok = m.tokenizer
    qs = workload.queries(n)
    t_prompts = workload.teacher_prompts(tok, demos, qs)
    tgts = workload.targets(m, t_prompts, batch_size=n)
    s_prompts = workload.student_prompts(tok, qs)
    pad = tok.pad_token_id
    with torch.no_grad():
        tb, sb = make_batch(t_prompts, tgts, pad), make_batch(s_prompts, tgts, pad)
        t_logits, s_logits = target_logits(m.model, tb).float(), target_logits(m.model, sb).float()
    mask = sb.mask.bool()
    y = torch.zeros(mask.shape, dtype=torch.long)
    full = float(forward_kl(s_logits, y, mask, topk_with_tail(t_logits, None)))
    rows = []
    for k in ks:
        teacher = topk_with_tail(t_logits, k)
        cover = 1.0 - torch.exp(teacher.tail[mask].double())
        kk = float(forward_kl(s_logits, y, mask, teacher))
        rows.append(
            {
                "k": k,
                "context_tokens": len(t_prompts[0]) - len(s_prompts[0]),
                "target_tokens": int(mask.sum()),
                "full_kl": full,
                "topk_tail_kl": kk,
                "gap": full - kk,
                "gap_share": (full - kk) / full if full > 0 else float("nan"),
                "coverage_mean": float(cover.mean()),
                "coverage_p05": float(torch.quantile(cover, 0.05)),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.perf.topk_gap", description=__doc__)
    p.add_argument("--model", default=models.EMBEDDED)
    p.add_argument("--inputs", type=int, default=16)
    p.add_argument("--demos", type=int, default=8)
    p.add_argument("--k", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--out", default="results/perf")
    args = p.parse_args(argv)
    m = models.load(args.model, "cpu")
    rows = measure(m, args.inputs, args.demos, args.k)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "topk_gap.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cmd = "python -m harness.perf.topk_gap " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Top-k + tail KL against the full-vocabulary KL",
        "",
        f"`{args.model}`, teacher with c ({args.demos} demonstrations, {rows[0]['context_tokens']} tokens more "
        f"than c'), untrained student with c' = empty, on the teacher's greedy targets for {args.inputs} quickstart "
        f"inputs ({rows[0]['target_tokens']} target tokens). Forward KL(t ‖ s), mean over target tokens.",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        "| k | full KL | top-k + tail KL | gap | gap / full | kept teacher mass (mean) | (5th percentile) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['full_kl']:.4f} | {r['topk_tail_kl']:.4f} | {r['gap']:.4f} | {r['gap_share']:.1%} "
            f"| {r['coverage_mean']:.4f} | {r['coverage_p05']:.4f} |"
        )
    (out / "topk_gap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
