"""`python -m harness.perf` (`nox -s perf`): pick the parts, run them in one process, write results/perf/."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from harness import console, models
from harness.perf import memory
from harness.perf.lmeval_arm import bench_lmeval
from harness.perf.profiles import Missed
from harness.perf.scaling import bench_scaling
from harness.perf.sdft_bench import bench_sdft, write_sdft
from harness.perf.teacher_arms import bench_teacher
from harness.perf.training import bench_train
from harness.perf.trl_sdft import sdft_problem
from harness.perf.write import Results, load_average, write
from harness.spec import SuiteError, load_suite
from harness.tasks import TaskError

PARTS = ("sdft", "memory", "train", "topk", "generate", "lmeval", "scaling")


def main(argv: list[str] | None = None) -> int:
    """Bad input (suite, model, task) or a fast path that changed an output: one line, exit 1."""
    try:
        return _main(argv)
    except (SuiteError, TaskError, models.ModelError, AssertionError) as e:
        print(f"harness.perf: error: {e}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.perf", description="side-by-side speed benchmark")
    p.add_argument("--model", default=models.EMBEDDED)
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    p.add_argument("--repeats", type=int, default=8, help="interleaved steps per arm in the train part")
    p.add_argument("--teacher-repeats", type=int, nargs="+", default=[3, 3, 2], help="topk/generate, per --demos")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--demos", type=int, nargs="+", default=[8, 64, 256], help="demonstrations in c (topk, generate)")
    p.add_argument("--prompts", type=int, nargs="+", default=[16, 16, 4], help="teacher prompts, per --demos")
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--trl-bf16", action="store_true", help="also time TRL with its default bf16 autocast")
    p.add_argument("--suite", default="suites/quickstart.yaml", help="the lm-eval part scores its teacher arm")
    p.add_argument("--lmeval-limit", type=int, default=None, help="test items (default: the suite's own)")
    p.add_argument("--lmeval-repeats", type=int, default=3)
    p.add_argument("--scaling-demos", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--scaling-inputs", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--scaling-repeats", type=int, default=4, help="interleaved student steps per |c|")
    p.add_argument("--sdft-demos", type=int, nargs="+", default=[8, 64], help="sdft part: demonstrations in c")
    p.add_argument("--sdft-steps", type=int, default=4, help="sdft part: optimizer steps per trial (whole epochs)")
    p.add_argument("--sdft-repeats", type=int, default=2, help="sdft part: interleaved rounds of whole trials per |c|")
    p.add_argument(
        "--sdft-study",
        type=int,
        nargs=2,
        metavar=("CONFIGS", "SEEDS"),
        help="sdft part: also a real study at the first |c|",
    )
    p.add_argument("--out", default="results/perf")
    p.add_argument("--note", action="append", default=[], help="a line for perf.md (e.g. about the machine)")
    p.add_argument("--probe-memory", choices=list(memory.MEMORY_MODES), help=argparse.SUPPRESS)
    return p


def _main(argv: list[str] | None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.probe_memory:  # internal: one memory measurement in a fresh process
        print(json.dumps(memory.probe(args.model, args.probe_memory, args.batch_size)))
        return 0
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})")

    def per_demo(values: list[int], name: str) -> list[int]:
        if len(values) == 1:
            return values * len(args.demos)
        if len(values) != len(args.demos):
            p.error(f"{name}: give one value or one per --demos ({len(args.demos)})")
        return values

    prompts, teacher_repeats = per_demo(args.prompts, "--prompts"), per_demo(args.teacher_repeats, "--teacher-repeats")
    if "lmeval" in parts or "sdft" in parts:  # a bad suite fails now, not after twenty minutes
        suite = load_suite(args.suite)
        if "sdft" in parts and (problem := sdft_problem(suite, args.sdft_steps)):
            p.error(problem)
    console.setup(verbose=False)  # the CLI's own logging: each arm's seconds, libraries quiet
    command = shlex.join(["python", "-m", "harness.perf", *(sys.argv[1:] if argv is None else argv)])
    res = Results(command=command, started=time.time(), load_before=load_average())
    res.notes = [*(f"Note: {n}" for n in args.note), *([""] if args.note else [])]
    missed = Missed()
    if "memory" in parts:
        res.memory = memory.bench_memory(args.model, args.batch_size)
    torch.manual_seed(0)
    m = models.load(args.model)
    if "train" in parts:
        res.train = bench_train(
            m, repeats=args.repeats, batch_size=args.batch_size, demos=8, top_k=args.top_k, trl_default=args.trl_bf16
        )
        res.rows += res.train.rows
        res.goals += res.train.goals
    if "topk" in parts or "generate" in parts:
        for demos, n, reps in zip(args.demos, prompts, teacher_repeats, strict=True):
            rows, goals = bench_teacher(
                m,
                repeats=reps,
                demos=demos,
                n_prompts=n,
                batch_size=args.batch_size,
                top_k=args.top_k,
                parts=parts,
                missed=missed,
            )
            res.rows += rows
            res.goals += goals
    if "lmeval" in parts:
        rows, goals = bench_lmeval(m, args.suite, repeats=args.lmeval_repeats, limit=args.lmeval_limit, missed=missed)
        res.rows += rows
        res.goals += goals
    if "scaling" in parts:
        res.scaling, goals = bench_scaling(
            m,
            repeats=args.scaling_repeats,
            demo_counts=args.scaling_demos,
            inputs=args.scaling_inputs,
            batch_size=args.batch_size,
            teacher_batch=32,
            top_k=args.top_k,
        )
        res.goals += goals
    res.missed_profiles = missed.tables
    out = Path(args.out)
    if "sdft" in parts:  # the anchor: its own sdft.md, its ratios first in perf.md
        started, load_before = time.time(), load_average()
        sd = bench_sdft(
            m,
            args.suite,
            demos=args.sdft_demos,
            steps=args.sdft_steps,
            repeats=args.sdft_repeats,
            study_grid=tuple(args.sdft_study) if args.sdft_study else None,
        )
        peers = [g for g in res.goals if "GKD" in g.name]
        text = write_sdft(out, sd, command=command, started=started, load_before=load_before, peers=peers)
        res.goals[:0] = sd.goals
        res.notes += ["TRL's SDFTTrainer side by side, per trial and per study: `sdft.md`.", ""]
        if parts == ["sdft"]:  # perf.md keeps the other parts' last full run
            print(text)
            return 0
    write(out, res)
    print((out / "perf.md").read_text())
    return 0
