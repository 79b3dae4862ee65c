"""GPU readiness: throughput, peak memory and MFU of the harness's own hot loops on a random ~1B Llama.

No weights beyond the embedded 135M model ship with the harness, so a real architecture and size is
built in code (SmolLM2-style: hidden 2048, 16 layers, the embedded tokenizer's 49,152-token vocabulary)
and randomly initialised: throughput does not depend on what the weights are.

    python -m harness.perf.cuda                          # on a GPU: ~1B, writes results/perf-cuda/
    python -m harness.perf.cuda --device cpu --size tiny # CI: the same code in seconds

Parts, each through the harness's own code: student training step (train.train: full fine-tune with
fp32 master weights + bf16 autocast, and LoRA on a bf16 base), teacher generation with and without
prefix reuse (generation.generate), teacher top-k scoring (teacher.score_topk). A torch.profiler table
of the training loop counts the host-device copies in it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from harness import generation, models
from harness.teacher import TopKSeq, score_topk
from harness.train import Example, TrainSettings, student_of, train

VOCAB = 49152  # SmolLM2's tokenizer (the embedded model's)

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched by substring of torch.cuda.get_device_name.
PEAKS_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
]

COLUMNS = [
    "part",
    "batch",
    "length",
    "tokens",
    "seconds",
    "tokens_per_s",
    "peak_mem_gib",
    "flops_rule",
    "tflops_per_s",
    "mfu_pct",
    "note",
]


@dataclass(frozen=True)
class Size:
    """Model and workload shape of one run mode."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    train_batch: int
    train_len: int  # prompt + target tokens per row
    train_target: int
    train_steps: int
    gen_batch: int
    gen_prefix: int  # shared context tokens
    gen_suffix: int  # per-row tokens after it
    gen_new: int
    score_rows: int
    top_k: int


SIZES = {
    "1b": Size(2048, 8192, 16, 32, 8, 8, 1024, 128, 10, 16, 768, 32, 64, 64, 64),
    "tiny": Size(64, 128, 2, 4, 2, 2, 48, 8, 2, 2, 24, 4, 4, 4, 8),
}


def config_for(size: Size) -> LlamaConfig:
    """A SmolLM2-style Llama config (tied embeddings, GQA, RoPE) at `size`."""
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def build(size: Size, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """Random init directly on the device (a 1B init on CPU alone would take a minute)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config_for(size))
    model.to(dtype)  # type: ignore[arg-type]  # transformers' decorated `to`
    model.eval()
    return model


def flop_params(model: torch.nn.Module) -> int:
    """N in the 6·N·tokens rule: every weight except the input embedding (a lookup, no FLOPs); the tied LM
    head then runs only on target positions, so N slightly overstates the work done there."""
    get_base = getattr(model, "get_base_model", None)  # a peft wrapper
    base = get_base() if callable(get_base) else model
    emb = cast(torch.Tensor, cast(PreTrainedModel, base).get_input_embeddings().weight).numel()
    return sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n) - emb


def peak_tflops(device: torch.device) -> tuple[float | None, str]:
    """The card's dense bf16 peak from the table, and the name it was matched by."""
    if device.type != "cuda":
        return None, "cpu (no peak table: MFU not computed)"
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAKS_TFLOPS:
        if key in name:
            return peak, f"{name}: {peak:g} TFLOP/s dense bf16 (matched '{key}')"
    return None, f"{name}: not in the peak table (MFU not computed)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measured(device: torch.device) -> Iterator[dict[str, float]]:
    """Wall seconds (synchronised) and peak CUDA memory of the block."""
    out: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    yield out
    _sync(device)
    out["seconds"] = time.perf_counter() - t0
    out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def row(
    part: str,
    batch: int,
    length: int,
    tokens: int,
    m: dict[str, float],
    flops_per_token: float,
    rule: str,
    peak: float | None,
    note: str = "",
) -> dict[str, object]:
    """One table row: tokens/s, achieved TFLOP/s by `rule`, MFU against `peak`."""
    tps = tokens / m["seconds"]
    tflops = flops_per_token * tps / 1e12
    return {
        "part": part,
        "batch": batch,
        "length": length,
        "tokens": tokens,
        "seconds": round(m["seconds"], 4),
        "tokens_per_s": round(tps, 1),
        "peak_mem_gib": round(m["peak_mem_gib"], 2),
        "flops_rule": rule,
        "tflops_per_s": round(tflops, 4),
        "mfu_pct": round(100 * tflops / peak, 2) if peak else float("nan"),
        "note": note,
    }


def _examples(size: Size, n: int, seed: int) -> list[Example]:
    """Random (prompt, target, teacher top-k) rows of the training shape: what the teacher cache holds."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (size.train_len,), generator=g).tolist()
        T, k = size.train_target, size.top_k
        idx = torch.randint(3, VOCAB, (T, k), generator=g, dtype=torch.int64).to(torch.int32)
        lp = torch.log_softmax(torch.randn(T, k, generator=g), -1) - 0.1
        tail = torch.full((T,), -2.3)
        split = size.train_len - T
        out.append(Example(prompt=ids[:split], target=ids[split:], teacher=TopKSeq(idx, lp, tail)))
    return out


def _settings(size: Size) -> TrainSettings:
    """One epoch over the given examples: the number of examples sets the steps."""
    return TrainSettings(
        learning_rate=1e-5,
        epochs=1,
        batch_size=size.train_batch,
        warmup_ratio=0.0,
        weight_decay=0.0,
        grad_accum=1,
        scheduler="constant_with_warmup",
        max_grad_norm=1.0,
        eval_every=0,
        dtype="bfloat16",
        seed=0,
    )


def train_part(
    base: torch.nn.Module, size: Size, lora_rank: int, device: torch.device, peak: float | None
) -> tuple[dict[str, object], float]:
    """Timed train.train over `train_steps` batches (after one warm-up step), forward_kl on top-k targets.
    Returns the row and how far the weights moved (a check that it really trained)."""
    warm = _examples(size, size.train_batch, seed=1)
    exs = _examples(size, size.train_batch * size.train_steps, seed=2)
    with student_of(base, lora_rank) as (student, _teacher):  # LoRA: base = teacher, adapters off
        trainable = [p for p in student.parameters() if p.requires_grad]
        before = [p.detach().float().clone() for p in trainable[:4]]
        train(student, warm, "forward_kl", {}, _settings(size), pad_id=2)  # warm-up: kernels, allocator
        with measured(device) as m:
            res = train(student, exs, "forward_kl", {}, _settings(size), pad_id=2)
        moved = max(float((p.detach().float() - b).abs().max()) for p, b in zip(trainable[:4], before, strict=True))
        master = {str(p.dtype).replace("torch.", "") for p in trainable}
        n = flop_params(student)
        if lora_rank:
            # The frozen base needs no weight gradients: forward 2N + input gradients 2N = 4N per token.
            flops_per_token, rule = 4.0 * n, "4*N*tokens (LoRA: no base weight grads)"
        else:
            flops_per_token, rule = 6.0 * n, "6*N*tokens"
        note = (
            f"N={n / 1e9:.3f}B non-embedding; trainable {sum(p.numel() for p in trainable) / 1e6:.2f}M in "
            f"{'/'.join(sorted(master))}; loss {res.losses[0]:.3f}->{res.losses[-1]:.3f}"
        )
        part = f"train_lora_r{lora_rank}" if lora_rank else "train_full_ft"
        r = row(part, size.train_batch, size.train_len, res.train_tokens, m, flops_per_token, rule, peak, note)
    return r, moved


def _gen_prompts(size: Size, rows: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, VOCAB, (size.gen_prefix,), generator=g).tolist()
    return [prefix + torch.randint(3, VOCAB, (size.gen_suffix,), generator=g).tolist() for _ in range(rows)]


class _NoStopTokenizer:
    """generate() reads eos/pad ids and decodes only for stop strings; a random model needs no real vocabulary."""

    eos_token_id = 2
    pad_token_id = 2

    def decode(self, ids: list[int], **_: object) -> str:
        return ""


def generation_part(
    teacher: torch.nn.Module, size: Size, reuse: bool, device: torch.device, peak: float | None
) -> dict[str, object]:
    """Greedy generation of `gen_new` tokens per prompt, the shared prefix prefilled once or per row."""
    prompts = _gen_prompts(size, size.gen_batch, seed=3)
    tok = _NoStopTokenizer()
    kw = dict(max_new_tokens=size.gen_new, batch_size=size.gen_batch, reuse_prefix=reuse)
    generation.generate(teacher, tok, prompts[:2], **kw)  # type: ignore[arg-type]  # warm-up
    with measured(device) as m, torch.inference_mode():
        outs = generation.generate(teacher, tok, prompts, **kw)  # type: ignore[arg-type]
    new = sum(len(o[0]) for o in outs)
    n = flop_params(teacher)
    note = f"{new} new tokens after a {size.gen_prefix}-token shared prefix + {size.gen_suffix} per row"
    return row(
        "generate_prefix_reuse" if reuse else "generate_no_reuse",
        size.gen_batch,
        size.gen_prefix + size.gen_suffix + size.gen_new,
        new,
        m,
        2.0 * n,
        "2*N*new_tokens (decode is memory-bound)",
        peak,
        note,
    )


def scoring_part(teacher: torch.nn.Module, size: Size, device: torch.device, peak: float | None) -> dict[str, object]:
    """Teacher top-k + tail on (c, z, y) rows sharing c, with prefix reuse, as the teacher cache is built."""
    prompts = _gen_prompts(size, size.score_rows, seed=4)
    g = torch.Generator().manual_seed(5)
    tgts = [torch.randint(3, VOCAB, (size.gen_new,), generator=g).tolist() for _ in prompts]
    kw = dict(k=size.top_k, temperature=1.0, batch_size=size.gen_batch, pad_id=2)
    score_topk(teacher, prompts[:2], tgts[:2], **kw)  # type: ignore[arg-type]  # warm-up
    with measured(device) as m, torch.inference_mode():
        score_topk(teacher, prompts, tgts, **kw)  # type: ignore[arg-type]
    tokens = sum(len(p) + len(t) for p, t in zip(prompts, tgts, strict=True))
    return row(
        f"score_topk{size.top_k}",
        size.gen_batch,
        size.gen_prefix + size.gen_suffix + size.gen_new,
        tokens,
        m,
        2.0 * flop_params(teacher),
        "2*N*(prompt+target tokens, as without reuse)",
        peak,
        f"{size.score_rows} rows, prefix reused",
    )


def profile_part(base: torch.nn.Module, size: Size, device: torch.device) -> tuple[str, dict[str, int]]:
    """torch.profiler over two full-FT training steps: the top ops, and the host<->device copies counted
    (aten::copy_/aten::to calls, and Memcpy HtoD/DtoH device events)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    exs = _examples(size, size.train_batch * 2, seed=6)
    with student_of(base, 0) as (student, _):
        train(student, exs[: size.train_batch], "forward_kl", {}, _settings(size), pad_id=2)
        with profile(activities=acts) as prof:
            train(student, exs, "forward_kl", {}, _settings(size), pad_id=2)
    counts = {"steps": 2, "aten::copy_": 0, "aten::to": 0, "Memcpy HtoD": 0, "Memcpy DtoH": 0, "Memcpy DtoD": 0}
    for ev in prof.events():
        for key in counts:
            if key != "steps" and key in ev.name:
                counts[key] += 1
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=15), counts


def machine_line(device: torch.device, peak_note: str) -> str:
    """One line naming what measured: device, torch, CUDA, the bf16 peak used."""
    import platform

    cuda = torch.version.cuda or "none"
    return (
        f"device {device.type}; {peak_note}; torch {torch.__version__}; CUDA {cuda}; "
        f"python {platform.python_version()}; {torch.get_num_threads()} CPU threads"
    )


def write(out: Path, rows: list[dict[str, object]], header: str, table: str, counts: dict[str, int]) -> None:
    """perf_cuda.csv, perf_cuda.md, machine.txt and profile.txt under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "perf_cuda.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (out / "machine.txt").write_text(header + "\n")
    (out / "profile.txt").write_text(table + "\n" + json.dumps(counts) + "\n")
    lines = [
        "# perf-cuda",
        "",
        f"Machine: {header}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    lines += [
        "",
        "FLOPs: 6·N·tokens for a full fine-tune step, 4·N·tokens for LoRA (no base weight gradients), 2·N·tokens "
        "for forward-only parts; N = parameters except the input embedding. MFU = achieved / the card's dense "
        "bf16 peak named above.",
        "",
        f"Copies in 2 profiled training steps: {json.dumps(counts)}. Host<->device copies are the Memcpy HtoD/DtoH "
        "device events (CUDA only; expected per step: the batch's 5 tensors and the teacher top-k's 3 in, the loss "
        "value out); aten::copy_/aten::to also count on-device dtype casts under autocast.",
        "",
        "```",
        table,
        "```",
    ]
    (out / "perf_cuda.md").write_text("\n".join(lines) + "\n")


def run(size_name: str, device_name: str, out: Path, parts: set[str], log: Callable[[str], None] = print) -> list[dict]:
    """Every part in `parts` on a fresh random model of `size_name`; returns the table rows."""
    device = models.pick_device(device_name)
    size = SIZES[size_name]
    peak, peak_note = peak_tflops(device)
    header = machine_line(device, peak_note) + f"; model {size_name} ({size.layers} layers, hidden {size.hidden})"
    log(header)
    random.seed(0)
    rows: list[dict[str, object]] = []
    moved: dict[str, float] = {}
    # One bf16 model is the frozen teacher and the LoRA base; full FT trains an fp32 copy (student_of).
    base = build(size, device, torch.bfloat16)
    log(f"built: {sum(p.numel() for p in base.parameters()) / 1e9:.3f}B parameters in bfloat16 on {device}")
    if "train" in parts:
        for rank in (0, 16):
            r, mv = train_part(base, size, rank, device, peak)
            rows.append(r)
            moved[str(r["part"])] = mv
            log(json.dumps(r))
    if "generate" in parts:
        for reuse in (False, True):
            rows.append(generation_part(base, size, reuse, device, peak))
            log(json.dumps(rows[-1]))
    if "score" in parts:
        rows.append(scoring_part(base, size, device, peak))
        log(json.dumps(rows[-1]))
    table, counts = "(not profiled)", dict[str, int]()
    if "profile" in parts:
        table, counts = profile_part(base, size, device)
        log(table)
        log("host<->device copies in 2 training steps: " + json.dumps(counts))
    write(out, rows, header, table, counts)
    (out / "weights_moved.json").write_text(json.dumps(moved) + "\n")
    log(f"wrote {out}/perf_cuda.md")
    return rows


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m harness.perf.cuda [--device cuda|cpu|auto] [--size 1b|tiny] [--out DIR] [--parts ...]`."""
    ap = argparse.ArgumentParser(prog="python -m harness.perf.cuda", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when there is one), cuda, cpu")
    ap.add_argument("--size", choices=sorted(SIZES), default=None, help="default: 1b on CUDA, tiny on CPU")
    ap.add_argument("--out", type=Path, default=Path("results/perf-cuda"))
    ap.add_argument("--parts", default="train,generate,score,profile")
    a = ap.parse_args(argv)
    device = models.pick_device(a.device)
    size = a.size or ("1b" if device.type == "cuda" else "tiny")
    parts = {p.strip() for p in a.parts.split(",") if p.strip()}
    bad = parts - {"train", "generate", "score", "profile"}
    if bad:
        print(f"--parts: unknown part(s) {', '.join(sorted(bad))}", file=sys.stderr)
        return 2
    run(size, a.device, a.out, parts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
