"""`python -m harness.perf`: side-by-side speed benchmark (a benchmark, not a test; `nox -s perf`).

Every figure is a ratio of two arms measured in the same process, interleaved (arm order rotates every
repeat), with the min and median of several repeats: the machines are shared and noisy, so absolute
seconds say little and ratios taken minutes apart say less.

Parts:
- train: one optimizer step of the harness per loss (self_target_nll, forward_kl, reverse_kl, jsd) against
  TRL's GKDTrainer loss (lmbda=0, beta=0: forward KL, teacher full-vocabulary forward every step) on the same
  batches, same model, same optimizer.
- generate: teacher target generation with the shared-context KV reuse against plain batched `generate`
  with left padding, same prompts, greedy, identical tokens asserted; at several context lengths.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness import generation, models, teacher
from harness.batching import make_batch
from harness.train import Example, TrainSettings, train

log = logging.getLogger(__name__)

INSTRUCTION = "Reply with the plural form of the given English noun. Answer with the plural word only."
NOUNS = (
    "apple bird chair desk engine forest garden house island jacket kettle lamp mountain notebook orange pencil "
    "river spoon table umbrella village window yard zebra bottle candle dragon feather guitar helmet ladder mirror"
).split()


@dataclass
class Timing:
    """Seconds per unit of work for one arm over several interleaved repeats."""

    arm: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)


def interleaved(arms: dict[str, Callable[[], float]], repeats: int) -> dict[str, Timing]:
    """Run each arm once per repeat, rotating the order, and keep each call's seconds."""
    names = list(arms)
    out = {n: Timing(n, []) for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            out[n].seconds.append(arms[n]())
            log.info("repeat %d/%d %-18s %.3f s", r + 1, repeats, n, out[n].seconds[-1])
    return out


# --------------------------------------------------------------------------------------------- prompts
def chat_prompt(tok: Any, n_demos: int, query: str, system: str | None = INSTRUCTION) -> list[int]:
    """Chat-templated prompt ids: system instruction, n demonstration turns, the query."""
    msgs: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for i in range(n_demos):
        noun = NOUNS[i % len(NOUNS)] + ("" if i < len(NOUNS) else str(i // len(NOUNS)))
        msgs += [{"role": "user", "content": noun}, {"role": "assistant", "content": noun + "s"}]
    msgs.append({"role": "user", "content": query})
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


# --------------------------------------------------------------------------------------------- training
def _train_examples(m: models.LoadedModel, n: int, demos: int, top_k: int) -> list[Example]:
    """n distillation examples: student prompt with no context, teacher targets and top-k with the full one."""
    tok = m.tokenizer
    queries = [NOUNS[i % len(NOUNS)] for i in range(n)]
    t_prompts = [chat_prompt(tok, demos, q) for q in queries]
    s_prompts = [chat_prompt(tok, 0, q, system=None) for q in queries]
    outs = generation.generate(m.model, tok, t_prompts, max_new_tokens=8, batch_size=16, stop_strings=("\n",))
    tgts = [o[0] for o in outs]
    tops = teacher.score_topk(
        m.model, t_prompts, tgts, k=top_k, temperature=1.0, batch_size=16, pad_id=tok.pad_token_id
    )
    return [Example(p, t, top, tp) for p, t, top, tp in zip(s_prompts, tgts, tops, t_prompts, strict=True)]


def _harness_step(student: torch.nn.Module, batch: list[Example], loss: str, pad_id: int) -> Callable[[], float]:
    """One harness optimizer step on `batch` (the real `train` loop, one epoch of one batch)."""
    settings = TrainSettings(learning_rate=1e-5, epochs=1, batch_size=len(batch), warmup_ratio=0.0)
    params = {"beta": 0.5} if loss == "jsd" else {}

    def step() -> float:
        t0 = time.perf_counter()
        train(student, batch, loss, params, settings, pad_id=pad_id)
        return time.perf_counter() - t0

    return step


def _trl_step(
    student: torch.nn.Module, teacher_model: torch.nn.Module, tok: Any, batch: list[Example]
) -> Callable[[], float]:
    """One step of TRL's GKDTrainer loss (forward KL) + backward + AdamW on the same token sequences."""
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    args = GKDConfig(
        output_dir="/tmp/harness-perf-trl",
        lmbda=0.0,
        beta=0.0,
        temperature=1.0,
        report_to=[],
        per_device_train_batch_size=len(batch),
        use_cpu=not torch.cuda.is_available(),
        learning_rate=1e-5,
        max_grad_norm=1.0,
        disable_tqdm=True,
    )
    dummy = Dataset.from_list([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    trainer = GKDTrainer(
        model=student, teacher_model=teacher_model, args=args, train_dataset=dummy, processing_class=tok
    )
    pad = tok.pad_token_id
    seqs = [e.prompt + e.target for e in batch]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(batch):
        s = e.prompt + e.target
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, len(e.prompt) : len(s)] = torch.tensor(e.target)
    device = next(student.parameters()).device
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)

    def step() -> float:
        t0 = time.perf_counter()
        student.train()
        loss = trainer.compute_loss(student, dict(inputs))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    return step


def bench_train(m: models.LoadedModel, *, repeats: int, batch_size: int, demos: int, top_k: int) -> list[dict]:
    """Seconds per optimizer step: harness losses against TRL GKD, interleaved."""
    examples = _train_examples(m, batch_size, demos, top_k)
    pad = m.tokenizer.pad_token_id
    tokens = make_batch([e.prompt for e in examples], [e.target for e in examples], pad).n_tokens
    arms: dict[str, Callable[[], float]] = {}
    for loss in ("self_target_nll", "forward_kl", "reverse_kl", "jsd"):
        arms[f"harness {loss}"] = _harness_step(copy.deepcopy(m.model), examples, loss, pad)
    try:
        arms["trl gkd forward_kl"] = _trl_step(copy.deepcopy(m.model), copy.deepcopy(m.model), m.tokenizer, examples)
    except ImportError as e:
        log.warning("TRL not installed (%s): pip install trl==1.16.0; TRL arm skipped", e)
    for f in arms.values():  # warm-up: first calls allocate
        f()
    timings = interleaved(arms, repeats)
    nll = timings["harness self_target_nll"].median
    rows = []
    for name, t in timings.items():
        rows.append(
            {
                "part": "train",
                "arm": name,
                "setting": f"batch {batch_size}, {tokens} tokens",
                "repeats": repeats,
                "min_s": t.min,
                "median_s": t.median,
                "ratio_vs_nll": t.median / nll,
            }
        )
    if "trl gkd forward_kl" in timings:
        fkl = timings["harness forward_kl"].median
        rows.append(
            {
                "part": "train",
                "arm": "trl / harness forward_kl",
                "setting": "",
                "repeats": repeats,
                "min_s": None,
                "median_s": None,
                "ratio": timings["trl gkd forward_kl"].median / fkl,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------- generation
def bench_generate(
    m: models.LoadedModel, *, repeats: int, demo_counts: list[int], n_prompts: int, batch_size: int
) -> list[dict]:
    """Teacher targets with shared-prefix KV reuse vs plain left-padded batched generate: same tokens."""
    rows = []
    for demos in demo_counts:
        prompts = [
            chat_prompt(m.tokenizer, demos, NOUNS[(i * 7) % len(NOUNS)] + "x" * (i % 3)) for i in range(n_prompts)
        ]
        results: dict[str, Any] = {}

        def arm(
            reuse: bool, key: str, prompts: list[list[int]] = prompts, results: dict = results
        ) -> Callable[[], float]:
            def run() -> float:
                t0 = time.perf_counter()
                results[key] = generation.generate(
                    m.model,
                    m.tokenizer,
                    prompts,
                    max_new_tokens=8,
                    batch_size=batch_size,
                    stop_strings=("\n",),
                    reuse_prefix=reuse,
                )
                return time.perf_counter() - t0

            return run

        timings = interleaved(
            {"plain generate": arm(False, "plain"), "harness prefix reuse": arm(True, "reuse")}, repeats
        )
        if results["plain"] != results["reuse"]:
            raise AssertionError(f"prefix reuse changed the generated tokens at {demos} demonstrations")
        ctx_tokens = generation.common_prefix_length(prompts)
        ratio = timings["plain generate"].median / timings["harness prefix reuse"].median
        for name, t in timings.items():
            rows.append(
                {
                    "part": "generate",
                    "arm": name,
                    "setting": f"{demos} demos, {ctx_tokens} shared tokens, {n_prompts} prompts",
                    "repeats": repeats,
                    "min_s": t.min,
                    "median_s": t.median,
                    "ratio": ratio if name == "harness prefix reuse" else None,
                }
            )
    return rows


# --------------------------------------------------------------------------------------------- output
def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": cpu,
        "cores": str(torch.get_num_threads()),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def write(rows: list[dict], out: Path, command: str) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "perf.csv", index=False)
    m = machine()
    lines = [
        f"# Performance ({m['cpu']}, {m['cores']} threads, GPU {m['gpu']}, torch {m['torch']})",
        "",
        f"Command: `{command}`",
        "",
        df.to_markdown(index=False, floatfmt=".3f"),
        "",
    ]
    (out / "perf.md").write_text("\n".join(lines))
    (out / "machine.json").write_text(json.dumps(m, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.perf", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=models.EMBEDDED)
    p.add_argument("--parts", default="train,generate")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--demos", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--out", default="results/perf")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.manual_seed(0)
    m = models.load(args.model)
    rows: list[dict] = []
    parts = args.parts.split(",")
    if "train" in parts:
        rows += bench_train(m, repeats=args.repeats, batch_size=args.batch_size, demos=8, top_k=64)
    if "generate" in parts:
        rows += bench_generate(
            m, repeats=args.repeats, demo_counts=args.demos, n_prompts=args.prompts, batch_size=args.batch_size
        )
    import sys

    write(rows, Path(args.out), "python -m harness.perf " + " ".join(sys.argv[1:] if argv is None else argv))
    print((Path(args.out) / "perf.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
