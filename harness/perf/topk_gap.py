"""How much the top-k + tail KL misses: on real teacher outputs of the embedded model, the full-vocabulary forward
KL(teacher with c ‖ untrained student with c' = empty) against the k+1-bucket KL the harness trains on, per k.

The k+1-bucket KL is a lower bound of the full one (the data-processing inequality); the gap is what the tail hides.
Then the held-out KL per k: a student trained with forward_kl on each k's top-k + tail (same inputs, steps and
seed), measured against the teacher on inputs it never saw, by the full-vocabulary KL and by the k+1-bucket one: what
the choice of k changes in the trained student, not only in the loss.
Run: `python -m harness.perf.topk_gap --out results/perf` (CPU, a few minutes).
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
from pathlib import Path
from typing import Any

import torch

from harness import models
from harness.batching import make_batch, target_logits
from harness.losses import forward_kl, topk_with_tail
from harness.perf import workload
from harness.teacher import TopKSeq
from harness.train import Example, train


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


def _teacher_logits(m: models.LoadedModel, qs: list[str], demos: int) -> tuple[list[list[int]], torch.Tensor, Any]:
    """Greedy targets of the teacher (with c) for `qs`, its full logits on them, and the student-prompt batch."""
    tok = m.tokenizer
    t_prompts = workload.teacher_prompts(tok, demos, qs)
    tgts = workload.targets(m, t_prompts, batch_size=len(qs))
    with torch.no_grad():
        t_logits = target_logits(m.model, make_batch(t_prompts, tgts, tok.pad_token_id)).float()
    return tgts, t_logits, make_batch(workload.student_prompts(tok, qs), tgts, tok.pad_token_id)


def _kl(model: torch.nn.Module, sb: Any, t_logits: torch.Tensor, k: int | None) -> float:
    """Mean token forward KL(teacher ‖ model) on the batch's targets, the teacher as top-k + tail (None: all)."""
    with torch.no_grad():
        s_logits = target_logits(model, sb).float()
    mask = sb.mask.bool()
    return float(forward_kl(s_logits, torch.zeros(mask.shape, dtype=torch.long), mask, topk_with_tail(t_logits, k)))


def heldout(
    m: models.LoadedModel, n_train: int, n_heldout: int, demos: int, ks: list[int], epochs: int, lr: float
) -> list[dict[str, float]]:
    """Per k: a student trained on the top-k + tail of `n_train` inputs, its held-out KL to the teacher on `n_heldout`
    other inputs (full vocabulary and k+1 buckets), beside the untrained model's."""
    qs = workload.queries(n_train + n_heldout)
    train_q, held_q = qs[:n_train], qs[n_train:]
    tgts, t_train, train_b = _teacher_logits(m, train_q, demos)
    _, t_held, held_b = _teacher_logits(m, held_q, demos)
    s_prompts = workload.student_prompts(m.tokenizer, train_q)
    untrained = _kl(m.model, held_b, t_held, None)
    rows = []
    for k in ks:
        top = topk_with_tail(t_train, k)
        seqs = [
            TopKSeq(top.indices[i, : len(t)], top.logprobs[i, : len(t)], top.tail[i, : len(t)])
            for i, t in enumerate(tgts)
        ]  # make_batch right-pads targets: row i's tokens are its first len(t) positions
        examples = [Example(p, t, sq) for p, t, sq in zip(s_prompts, tgts, seqs, strict=True)]
        student = copy.deepcopy(m.model).float()
        for p in student.parameters():
            p.requires_grad_(True)
        torch.manual_seed(0)
        result = train(
            student, examples, "forward_kl", {}, workload.settings(lr, epochs, 8), pad_id=m.tokenizer.pad_token_id
        )
        student.eval()
        rows.append(
            {
                "k": k,
                "train_inputs": n_train,
                "heldout_inputs": n_heldout,
                "heldout_tokens": int(held_b.mask.sum()),
                "steps": result.steps,
                "untrained_full_kl": untrained,
                "trained_full_kl": _kl(student, held_b, t_held, None),
                "trained_topk_tail_kl": _kl(student, held_b, t_held, k),
                "train_loss_last": result.losses[-1],
            }
        )
        del student
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.perf.topk_gap", description=__doc__)
    p.add_argument("--model", default=models.EMBEDDED)
    p.add_argument("--inputs", type=int, default=16)
    p.add_argument("--demos", type=int, default=8)
    p.add_argument("--k", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--heldout-inputs", type=int, default=16, help="held-out inputs (0: skip the held-out part)")
    p.add_argument("--train-inputs", type=int, default=16, help="the held-out part's training inputs")
    p.add_argument("--epochs", type=int, default=2, help="the held-out part's epochs (batch 8)")
    p.add_argument("--lr", type=float, default=1e-4, help="the held-out part's learning rate")
    p.add_argument("--out", default="results/perf")
    args = p.parse_args(argv)
    m = models.load(args.model, "cpu")
    rows = measure(m, args.inputs, args.demos, args.k)
    held = []
    if args.heldout_inputs:
        held = heldout(m, args.train_inputs, args.heldout_inputs, args.demos, args.k, args.epochs, args.lr)
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
    if held:
        with (out / "topk_heldout.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(held[0]))
            w.writeheader()
            w.writerows(held)
        h = held[0]
        lines += [
            "",
            "## Held-out KL per k",
            "",
            "Full fine-tuning from the same weights with forward_kl on the teacher's top-k + tail, "
            f"{h['train_inputs']} training inputs, {h['steps']} steps (batch 8, constant learning rate {args.lr:g}, "
            "seed 0), one student per k; KL(teacher with c ‖ student with c' = empty) on "
            f"{h['heldout_inputs']} other inputs "
            f"({h['heldout_tokens']} target tokens of the teacher's greedy answers), full vocabulary and k+1 buckets. "
            f"Untrained: {h['untrained_full_kl']:.4f} (full). `topk_heldout.csv`.",
            "",
            "| k | held-out full KL, trained | held-out top-k + tail KL, trained | full − top-k | last train loss |",
            "|---|---|---|---|---|",
        ]
        for r in held:
            lines.append(
                f"| {r['k']} | {r['trained_full_kl']:.4f} | {r['trained_topk_tail_kl']:.4f} "
                f"| {r['trained_full_kl'] - r['trained_topk_tail_kl']:.4f} | {r['train_loss_last']:.4f} |"
            )
    (out / "topk_gap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
