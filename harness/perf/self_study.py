"""`python -m harness.perf.self_study`: the teacher's self-study inputs with c's prefix reused, against plain
`generate`, on a suite's real c (default: the 1k-token rule sheet of suites/rule_sheet.yaml); and the student's
step with that c against a short one (c' = empty either way, so it must not grow with |c|).

- self-study generation: the teacher, seeing c, samples one query per seed instruction (`inputs.SEEDS`, cycled,
  as `self_study`'s first round asks them: 1.5 x train_inputs prompts), nucleus sampling with the source's own
  settings, through the prefix reuse (what `TeacherInputs.sample_texts` runs) and through plain batched
  `generate` with left padding, interleaved. The tokens must be identical; where the study already cached this
  exact request (`harness run` of the suite), the reuse arm's tokens are also compared with that entry.
- student step: the suite's first train inputs, the teacher's greedy targets and top-k under c and under c
  without its system prompt and document (demonstrations only), the student's forward_kl steps on each
  interleaved (median s/step).

Writes `<out>/self_study.md` and `self_study.csv` (command, machine, load average, commit). Standalone: the
harness never imports it, and `python -m harness.perf` does not run it.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness import console, generation, models, teacher
from harness import targets as target_registry
from harness.cache import content_hash, decode
from harness.contexts import Context
from harness.inputs import SEEDS, _keep
from harness.perf.stepping import SteppedTrain
from harness.perf.timing import goal, interleaved, ratio, row, timed
from harness.perf.write import _table, load_average, machine
from harness.spec import SuiteError, load_suite
from harness.tasks import TaskError
from harness.teacher_inputs import TeacherInputs
from harness.train import Example
from harness.trial import Workbench

TEMPERATURE, TOP_P, MAX_CHARS = 1.0, 0.95, 240  # the self_study source's defaults (harness/inputs.py)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.perf.self_study", description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="suites/rule_sheet.yaml")
    p.add_argument("--prompts", type=int, default=None, help="self-study prompts (default: 1.5 x train_inputs)")
    p.add_argument("--max-new-tokens", type=int, default=MAX_CHARS // 3, help="default: the source's own")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the two generation arms")
    p.add_argument("--student-repeats", type=int, default=4, help="interleaved student steps per context")
    p.add_argument("--student-inputs", type=int, default=32)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--skip-student", action="store_true")
    p.add_argument("--out", default="results/perf")
    return p


def study_entry(wb: Workbench, prompts: list[list[int]], max_new_tokens: int, seed: int) -> list[list[int]] | None:
    """The study's cached samples for exactly this request (the key `teacher.targets` builds), if it made them."""
    params = {"temperature": TEMPERATURE, "top_p": TOP_P}
    parts = {
        "teacher": wb.teacher.fingerprint,
        "prompts": prompts,
        "strategy": "sample",
        "params": target_registry.cache_key_params("sample", params),
        "max_new_tokens": max_new_tokens,
        "stop": [],
        "seed": target_registry.target_seed("sample", seed),
        "references": None,
    }
    path = wb.store.path("targets", content_hash(parts))
    try:
        return decode(path.read_bytes())
    except (OSError, ValueError):
        return None


def bench_generation(
    wb: Workbench, env: TeacherInputs, n: int, repeats: int, max_new: int
) -> tuple[list[dict[str, Any]], Any, str]:
    """Plain vs prefix-reuse sampling of n self-study queries; rows, the goal and a note on identity."""
    prompts = [env.prompt_ids(SEEDS[i % len(SEEDS)], wb.context) for i in range(n)]
    shared = generation.common_prefix_length(prompts)
    seed, batch = wb.suite.seed, wb.suite.training.generation_batch_size
    out: list[Any] = [None, None]

    def arm(reuse: bool) -> Any:
        def run() -> None:
            out[reuse] = [
                o[0]
                for o in generation.generate(
                    wb.teacher.model,
                    wb.tok,
                    prompts,
                    max_new_tokens=max_new,
                    batch_size=batch,
                    do_sample=True,
                    temperature=TEMPERATURE,
                    top_p=TOP_P,
                    seed=seed,
                    reuse_prefix=reuse,
                )
            ]

        return lambda: timed(run)

    t = interleaved({"self-study generate: plain": arm(False), "self-study generate: prefix reuse": arm(True)}, repeats)
    plain, reused = out
    same = sum(a == b for a, b in zip(plain, reused, strict=True))
    tokens = sum(len(x) for x in reused)
    cached = study_entry(wb, prompts, max_new, seed)
    if cached is None:
        vs_study = "the study's cache holds no entry for this request"
    else:
        vs_study = (
            f"{sum(a == b for a, b in zip(cached, reused, strict=True))} of {n} equal to the study's cached samples"
        )
    texts = [str(wb.tok.decode(x, skip_special_tokens=True)) for x in reused]
    kept, dropped = _keep(texts, set(), env.heldout_texts(), 8, MAX_CHARS)
    setting = f"{n} self-study prompts, {shared} shared tokens (c + chat turns), batch {batch}, ≤ {max_new} new"
    identical = f"{same} of {n} rows token-identical; {vs_study}"
    rows = [
        row("self_study", x, setting, "s/round", shared_tokens=shared, new_tokens=tokens, identical=identical)
        for x in t.values()
    ]
    r = ratio(*t.values())
    rows[-1]["ratio"] = r[0]
    g = goal(f"self-study generate: plain / prefix reuse, {shared} ctx tokens", r, at_least=3.0, repeats=repeats)
    note = (
        f"Self-study generation: {identical}. The samples, filtered as `self_study` does: {len(kept)} kept of {n} "
        f"({', '.join(f'{v} {k}' for k, v in dropped.items() if v) or 'none dropped'}); {tokens} new tokens in all."
    )
    if same != n:
        note += " **The prefix reuse changed sampled tokens: the ratio compares different work.**"
    return rows, g, note


def _examples(wb: Workbench, queries: Any, ctx: Context, k: int) -> tuple[list[Example], int]:
    """Distillation examples from the teacher under ctx (greedy targets, top-k along them), student c' = empty."""
    t_prompts = wb.encode_queries(queries, ctx)
    s_prompts = wb.encode_queries(queries, Context(None, 0))
    tgts = [
        o[0]
        for o in generation.generate(
            wb.teacher.model,
            wb.tok,
            t_prompts,
            max_new_tokens=wb.suite.training.max_new_tokens,
            batch_size=wb.suite.training.generation_batch_size,
            stop_strings=wb.stop,
        )
    ]
    tops = teacher.score_topk(wb.teacher.model, t_prompts, tgts, k=k, temperature=1.0, batch_size=16, pad_id=wb.pad_id)
    rows = zip(s_prompts, tgts, tops, t_prompts, strict=True)
    return [Example(p, t, top, tp) for p, t, top, tp in rows], generation.common_prefix_length(t_prompts)


def bench_student(wb: Workbench, env: TeacherInputs, n: int, repeats: int, k: int) -> tuple[list[dict[str, Any]], Any]:
    """forward_kl student steps on examples whose teacher saw the suite's c vs its demonstrations only."""
    queries = env.train_queries(n)
    full, short = wb.context, Context(None, wb.context.n_demos)
    student = copy.deepcopy(wb.teacher.model).float().requires_grad_(True)
    steppers: dict[str, Callable[[], float]] = {}
    rows: list[dict[str, Any]] = []
    batch = wb.suite.hyperparameters.batch_size
    batch_size = batch if isinstance(batch, int) else 8
    for name, ctx in (("c = demonstrations only", short), ("c = the suite's full context", full)):
        ex, ctx_tokens = _examples(wb, queries, ctx, k)
        steppers[name] = SteppedTrain(
            student, ex, "forward_kl", wb.pad_id, total=1 + repeats, batch_size=batch_size
        ).step
        rows.append(
            {
                "part": "student step",
                "arm": name,
                "setting": f"{n} train inputs, batch {batch_size}, forward_kl top-{k}, student c' = empty",
                "teacher prompt shared tokens": ctx_tokens,
                "student prompt tokens (mean)": sum(len(e.prompt) for e in ex) / len(ex),
                "target tokens (mean)": sum(len(e.target) for e in ex) / len(ex),
            }
        )
    for step in steppers.values():  # the first step allocates the optimizer's state
        step()
    t = interleaved(steppers, repeats)
    for r, timing in zip(rows, t.values(), strict=True):
        r.update(repeats=len(timing.seconds), min_s=timing.min, median_s=timing.median, unit="s/step")
    short_t, full_t = t.values()
    rs = ratio(full_t, short_t)
    rows[-1]["ratio"] = rs[0]
    g = goal(
        f"student step: c of {rows[1]['teacher prompt shared tokens']} tokens / of "
        f"{rows[0]['teacher prompt shared tokens']}",
        rs,
        at_most=1.15,
        repeats=repeats,
    )
    return rows, g


def main(argv: list[str] | None = None) -> int:
    """Bad input: one line, exit 1 (as `python -m harness.perf`)."""
    args = _parser().parse_args(argv)
    try:
        suite = load_suite(args.suite)
        console.setup(verbose=False)
        command = shlex.join(["python", "-m", "harness.perf.self_study", *(sys.argv[1:] if argv is None else argv)])
        started, load_before, mach = time.time(), load_average(), machine()  # the commit measured, not the one after
        torch.manual_seed(0)
        wb = Workbench(suite)
        env = TeacherInputs(
            wb.task, wb.teacher, wb.store, wb.context, list(wb.splits.values()), suite.training.generation_batch_size
        )
        train_inputs = suite.hyperparameters.train_inputs
        n = args.prompts or (int(train_inputs) * 3 // 2 if isinstance(train_inputs, int) else 48)
        rows, g, note = bench_generation(wb, env, n, args.repeats, args.max_new_tokens)
        goals = [g]
        if not args.skip_student:
            srows, sg = bench_student(wb, env, args.student_inputs, args.student_repeats, args.top_k)
            rows += srows
            goals.append(sg)
    except (SuiteError, TaskError, models.ModelError) as e:
        print(f"harness.perf.self_study: error: {e}", file=sys.stderr)
        return 1
    write(Path(args.out), command, started, load_before, mach, suite.name, rows, goals, note)
    print((Path(args.out) / "self_study.md").read_text())
    return 0


def write(
    out: Path,
    command: str,
    started: float,
    load_before: str,
    mach: dict[str, str],
    suite: str,
    rows: list[dict[str, Any]],
    goals: list[Any],
    note: str,
) -> None:
    """self_study.md (setting, goals, every arm) and self_study.csv (every arm)."""
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "self_study.csv", index=False)
    lines = [
        f"# Self-study inputs with the prefix reuse, and the student's step against |c| (`{suite}`)",
        "",
        f"- Command: `{command}`",
        f"- Machine: {mach['cpu']}, {mach['cpu_count']} cores ({mach['torch_threads']} torch threads), "
        f"GPU {mach['gpu']}, torch {mach['torch']}, Python {mach['python']}",
        f"- Code: git commit {mach['git_commit']} (HEAD when the run started)",
        f"- Load average (1, 5, 15 min) before: {load_before}; after: {load_average()}",
        f"- Wall time: {(time.time() - started) / 60:.1f} min",
        "- Arms interleave, order rotating; a ratio is the median over rounds of the two arms' ratio in the same "
        "round (min, max beside it); 'ratio of mins' divides the fastest rounds.",
        "",
        "## Goals",
        "",
        _table([g.as_row() for g in goals], ".2f", index=False),
        "",
        note,
        "",
        "## Every arm",
        "",
        _table(rows, index=False),
        "",
    ]
    (out / "self_study.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
