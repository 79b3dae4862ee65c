"""`python -m harness.perf.threads`: training-step time with torch's default thread settings against
`harness.threads.configure()`, on a quiet machine and under a synthetic load, written to
results/perf/threads.md and threads.csv.

Each measurement is a fresh process (thread settings are fixed when torch loads): it loads the model,
takes one warm-up optimizer step (forward, backward, AdamW) on a fixed batch, then times `--steps`
more. The load is `--load` busy-looping processes started by this script for the loaded runs only.
Arms interleave (order alternating every repeat); every row records the 1-minute load average read
just before it, since the machine may be shared with other work.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("default", "fixed")
THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "HARNESS_THREADS")


def child(mode: str, model_name: str, steps: int, batch: int, length: int) -> dict[str, float]:
    """One measurement in this process: seconds per optimizer step after a warm-up step."""
    if mode == "fixed":
        from harness import threads

        threads.configure()
    import torch

    from harness import models

    torch.manual_seed(0)
    loaded = models.load(model_name, device="cpu")
    model = loaded.model
    model.train()
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (batch, length))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - start) / steps
    return {"s_per_step": per_step, "torch_threads": torch.get_num_threads()}


def _spawn_load(n: int) -> list[subprocess.Popen[bytes]]:
    code = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", code], start_new_session=True) for _ in range(n)]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _measure(mode: str, args: argparse.Namespace) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}  # torch's defaults for "default"
    cmd = [sys.executable, "-m", "harness.perf.threads", "--child", mode, "--model", args.model]
    cmd += ["--steps", str(args.steps), "--batch", str(args.batch), "--length", str(args.length)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ratio_line(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f} – {max(values):.2f})"


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    """Interleaved repeats: per repeat, quiet then loaded, both modes each (order alternating)."""
    rows: list[dict[str, object]] = []
    for rep in range(args.repeats):
        for condition in ("quiet", "loaded"):
            procs = _spawn_load(args.load) if condition == "loaded" else []
            try:
                if procs:
                    time.sleep(2.0)  # let the busy loops start
                order = MODES if rep % 2 == 0 else MODES[::-1]
                for mode in order:
                    load1 = os.getloadavg()[0]
                    got = _measure(mode, args)
                    row: dict[str, object] = {"repeat": rep, "condition": condition, "extra_busy": len(procs)}
                    row["mode"] = mode
                    row |= {"load1_before": round(load1, 2), **got}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                _stop(procs)
    return rows


def write(rows: list[dict[str, object]], args: argparse.Namespace, command: str, wall_s: float) -> None:
    """threads.csv (every measurement) and threads.md (ratios per repeat: median (min – max))."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "threads.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    def cell(rep: int, cond: str, mode: str) -> dict[str, object]:
        return next(r for r in rows if r["repeat"] == rep and r["condition"] == cond and r["mode"] == mode)

    def s(rep: int, cond: str, mode: str) -> float:
        return float(cell(rep, cond, mode)["s_per_step"])  # type: ignore[arg-type]

    reps = range(args.repeats)
    loads = [float(r["load1_before"]) for r in rows]  # type: ignore[arg-type]
    lines = [
        "# Thread settings under load (`harness.threads`)",
        "",
        f"Command: `{command}` ({wall_s:.0f} s wall). Written by `harness/perf/threads.py`.",
        "",
        f"Machine: {os.cpu_count()} CPUs, shared with other processes: the 1-minute load average before each "
        f"measurement ranged {min(loads):.2f} – {max(loads):.2f} (column `load1_before` of threads.csv). "
        f"'quiet' adds nothing to that background (it is quiet only where the machine is); 'loaded' adds "
        f"{args.load} busy-looping processes.",
        "",
        f"Workload: model `{args.model}`, full fine-tune, AdamW, batch {args.batch} × {args.length} tokens, "
        f"one warm-up step then {args.steps} timed step(s), each measurement a fresh process. 'default' is torch's "
        "own settings (OpenMP threads = CPUs, OpenMP's default spin-wait); 'fixed' is `harness.threads."
        "configure()` (`OMP_WAIT_POLICY=PASSIVE`, threads = min(physical cores, affinity), as `harness` does).",
        "",
        "| condition | mode | s/step median (min – max) | load1 before (min – max) |",
        "|---|---|---|---|",
    ]
    for cond in ("quiet", "loaded"):
        for mode in MODES:
            v = [s(r, cond, mode) for r in reps]
            ld = [float(cell(r, cond, mode)["load1_before"]) for r in reps]  # type: ignore[arg-type]
            lines.append(f"| {cond} | {mode} | {_ratio_line(v)} | {min(ld):.2f} – {max(ld):.2f} |")
    lines += ["", "Ratios per repeat, median (min – max):", ""]
    for cond in ("quiet", "loaded"):
        lines.append(
            f"- {cond}: default / fixed = {_ratio_line([s(r, cond, 'default') / s(r, cond, 'fixed') for r in reps])}"
        )
    for mode in MODES:
        lines.append(
            f"- {mode}: loaded / quiet = {_ratio_line([s(r, 'loaded', mode) / s(r, 'quiet', mode) for r in reps])}"
        )
    (out / "threads.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.perf.threads", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="harness model name (default: the embedded SmolLM2)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--load", type=int, default=4, help="busy processes started for the loaded runs")
    p.add_argument("--out", default="results/perf")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.steps, args.batch, args.length)))
        return 0
    command = "python -m harness.perf.threads " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    rows = run(args)
    write(rows, args, command.strip(), time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
