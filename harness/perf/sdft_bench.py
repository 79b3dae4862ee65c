"""Part `sdft`: per trial and per study, TRL's SDFTTrainer against harness trials on the same job; sdft.md.

Per |c|, every round runs one whole trial of each arm (order rotating, `timing.interleave`): SDFT; the harness
on-policy (mix = 1, the matched job) with a cold teacher cache (a new folder) and with a warm one (filled
before the rounds); and the harness with its default off-policy targets (greedy, the teacher's top-k read
from the cache), cold and warm: a different target kind, shown for what a harness study usually runs.

A study is a grid of configurations x seeds. SDFT recomputes everything in every trial; the harness computes
the teacher's work in its first trial and reads it from the cache in the others (the keys do not depend on the
learning rate or, for these strategies, on the seed). Its time is composed per round as
n_trials x SDFT against cold + (n_trials - 1) x warm; `--sdft-study C S` also runs a real C x S study at the
first |c|, trial by trial for both arms, to check the composition.
"""

from __future__ import annotations

import importlib
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness import models
from harness.perf import plots
from harness.perf.timing import Goal, Timing, goal, interleave, ratio
from harness.perf.trl_sdft import DIFFERENCES, HarnessArm, Job, SDFTArm, TrialTime, fresh_store, make_job
from harness.perf.write import _table, load_average, machine
from harness.spec import load_suite

log = logging.getLogger(__name__)

SDFT = "trl sdft"
ON_COLD, ON_WARM = "harness on_policy, cold cache", "harness on_policy, warm cache"
OFF_COLD, OFF_WARM = "harness greedy (off-policy), cold cache", "harness greedy (off-policy), warm cache"
STUDY_LRS = (1e-4, 3e-5, 3e-4, 1e-5)  # the grid's configurations: learning rates around the quickstart's


@dataclass
class SDFTReport:
    rows: list[dict[str, Any]] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    study: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    trials_per_study: int = 12
    steps: int = 0
    repeats: int = 0


def _arms(
    m: models.LoadedModel, job: Job, out_dir: str, off_policy: bool
) -> tuple[dict[str, Callable[[], TrialTime]], list[Callable[[], None]]]:
    """Each arm as one whole trial; the warm arms' caches are filled here, before any round."""
    sdft = SDFTArm(m, job, out_dir)
    cleanups: list[Callable[[], None]] = []

    def cold(arm: HarnessArm) -> Callable[[], TrialTime]:
        def run() -> TrialTime:
            store, clean = fresh_store()
            try:
                return arm.trial(store)
            finally:
                clean()

        return run

    def warm(arm: HarnessArm) -> Callable[[], TrialTime]:
        store, clean = fresh_store()
        cleanups.append(clean)
        arm.warm(store)  # the study's first trial did this
        return lambda: arm.trial(store)

    on = HarnessArm(m, job, on_policy=True)
    arms: dict[str, Callable[[], TrialTime]] = {SDFT: sdft.trial, ON_COLD: cold(on), ON_WARM: warm(on)}
    if off_policy:
        off = HarnessArm(m, job, on_policy=False)
        arms |= {OFF_COLD: cold(off), OFF_WARM: warm(off)}
    return arms, cleanups


def _timing(name: str, runs: list[TrialTime], what: str) -> Timing:
    return Timing(name, [getattr(r, what) for r in runs])


def bench_sdft(
    m: models.LoadedModel,
    suite_path: str,
    *,
    demos: list[int],
    steps: int,
    repeats: int,
    out_dir: str | None = None,
    study_grid: tuple[int, int] | None = None,
    trials_per_study: int = 12,
    off_policy: bool = True,
) -> SDFTReport:
    """Per |c| (demonstrations in c): `repeats` interleaved rounds of whole trials, then the ratios."""
    importlib.import_module("trl.experimental.sdft")  # imported before the first round: not a trial's cost
    out_dir = out_dir or os.path.join(tempfile.gettempdir(), "harness-perf-sdft")
    suite = load_suite(suite_path)
    rep = SDFTReport(trials_per_study=trials_per_study, steps=steps, repeats=repeats)
    medians: dict[int, dict[str, float]] = {}
    for n_demos in demos:
        job = make_job(m.tokenizer, suite, demos=n_demos, steps=steps)
        t_len = len(job.teacher_ids(m.tokenizer)[0])
        s_len = len(job.student_ids(m.tokenizer)[0])
        ctx = t_len - s_len
        rep.jobs.append(
            {"demos": n_demos, "ctx_tokens": ctx, "teacher_prompt_tokens": t_len, "student_prompt_tokens": s_len}
        )
        arms, cleanups = _arms(m, job, out_dir, off_policy)
        try:
            runs = interleave({n: _logged(n, ctx, a) for n, a in arms.items()}, repeats)
        finally:
            for clean in cleanups:
                clean()
        setting = f"{ctx} ctx tokens, {steps} steps of batch {job.batch_size}, top-k {job.top_k}"
        for name, rs in runs.items():
            total, tr = _timing(name, rs, "total_s"), _timing(name, rs, "train_s")
            rep.rows.append(
                {
                    "part": "sdft",
                    "arm": name,
                    "ctx_tokens": ctx,
                    "setting": setting,
                    "repeats": len(rs),
                    "trial_min_s": total.min,
                    "trial_median_s": total.median,
                    "train_min_s": tr.min,
                    "train_median_s": tr.median,
                    "sampled_tokens": statistics.median(r.generated_tokens for r in rs),
                }
            )
        medians[n_demos] = {n: statistics.median(r.total_s for r in rs) for n, rs in runs.items()}
        sd = _timing(SDFT, runs[SDFT], "total_s")
        per_trial_goal = {"at_least": 3.0} if 768 <= ctx <= 1536 else {}
        for cold, warm, label in ((ON_COLD, ON_WARM, "on_policy"), (OFF_COLD, OFF_WARM, "greedy, off-policy")):
            if cold not in runs:
                continue
            c, w = _timing(cold, runs[cold], "total_s"), _timing(warm, runs[warm], "total_s")
            matched = label == "on_policy"
            rep.goals.append(
                goal(
                    f"sdft: per trial, SDFT / harness {label} (cold cache), {ctx} ctx tokens",
                    ratio(sd, c),
                    repeats=repeats,
                    **(per_trial_goal if matched else {}),
                )
            )
            rep.goals.append(
                goal(
                    f"sdft: per trial, SDFT / harness {label} (warm cache), {ctx} ctx tokens",
                    ratio(sd, w),
                    repeats=repeats,
                )
            )
            if matched:
                tr_s, tr_h = _timing(SDFT, runs[SDFT], "train_s"), _timing(warm, runs[warm], "train_s")
                rep.goals.append(
                    goal(
                        f"sdft: training loop only, SDFT / harness {label}, {ctx} ctx tokens",
                        ratio(tr_s, tr_h),
                        repeats=repeats,
                    )
                )
            n = trials_per_study
            study_sd = Timing("sdft study", [n * s for s in sd.seconds])
            study_h = Timing("harness study", [a + (n - 1) * b for a, b in zip(c.seconds, w.seconds, strict=True)])
            rep.goals.append(
                goal(
                    f"sdft: per study ({n} trials, composed), SDFT / harness {label}, {ctx} ctx tokens",
                    ratio(study_sd, study_h),
                    repeats=repeats,
                    **({"at_least": 10.0} if matched else {}),
                )
            )
        if study_grid and n_demos == demos[0]:
            rep.study = _real_study(m, job, out_dir, study_grid, medians[n_demos], ctx)
    return rep


def _logged(name: str, ctx: int, arm: Callable[[], TrialTime]) -> Callable[[], TrialTime]:
    def call() -> TrialTime:
        r = arm()
        log.info("sdft %5d ctx tokens  %-42s trial %.1f s (training %.1f s)", ctx, name, r.total_s, r.train_s)
        return r

    return call


def _real_study(
    m: models.LoadedModel, job: Job, out_dir: str, grid: tuple[int, int], med: dict[str, float], ctx: int
) -> list[dict[str, Any]]:
    """A real configurations x seeds study for SDFT and the harness on-policy (one cache for all its trials),
    trial by trial, arms alternating; against what the composition predicts from the per-trial medians."""
    n_cfg, n_seeds = grid
    if n_cfg > len(STUDY_LRS):
        raise ValueError(f"--sdft-study: at most {len(STUDY_LRS)} configurations (learning rates {STUDY_LRS})")
    sdft, harness = SDFTArm(m, job, out_dir), HarnessArm(m, job, on_policy=True)
    store, clean = fresh_store()
    sd_s = h_s = 0.0
    try:
        for i, (lr, seed) in enumerate((lr, s) for lr in STUDY_LRS[:n_cfg] for s in range(n_seeds)):
            first, second = (sdft, harness) if i % 2 == 0 else (harness, sdft)
            for arm in (first, second):
                r = arm.trial(store, seed, lr) if isinstance(arm, HarnessArm) else arm.trial(seed, lr)
                if isinstance(arm, HarnessArm):
                    h_s += r.total_s
                else:
                    sd_s += r.total_s
                log.info("sdft study trial %d (lr %g, seed %d) %s: %.1f s", i, lr, seed, type(arm).__name__, r.total_s)
        hits, misses = store.hits, store.misses
    finally:
        clean()
    n = n_cfg * n_seeds
    predicted = n * med[SDFT] / (med[ON_COLD] + (n - 1) * med[ON_WARM])
    return [
        {
            "ctx_tokens": ctx,
            "configurations": n_cfg,
            "seeds": n_seeds,
            "sdft_study_s": sd_s,
            "harness_study_s": h_s,
            "measured_ratio": sd_s / h_s,
            "composed_ratio (per-trial medians)": predicted,
            "harness cache hits": hits,
            "harness cache misses": misses,
        }
    ]


def write_sdft(out: Path, rep: SDFTReport, *, command: str, started: float, load_before: str, peers: list[Goal]) -> str:
    """results/perf/sdft.md, sdft.csv (every arm) and sdft_ratios.csv / .png; returns sdft.md's text."""
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rep.rows).to_csv(out / "sdft.csv", index=False)
    goal_rows = [g.as_row() for g in rep.goals]
    pd.DataFrame(goal_rows).to_csv(out / "sdft_ratios.csv", index=False)
    files = ["sdft.csv", "sdft_ratios.csv"]
    if rep.goals:
        files.append(plots.ratios(out, rep.goals, name="sdft.png"))
    mach = machine()
    lines = [
        "# The real peer: TRL's SDFTTrainer against harness trials, the same job",
        "",
        f"- Command: `{command}`",
        f"- Machine: {mach['cpu']}, {mach['cpu_count']} cores ({mach['torch_threads']} torch threads), "
        f"GPU {mach['gpu']}, torch {mach['torch']}, Python {mach['python']}",
        f"- Code: git commit {mach['git_commit']}",
        f"- Load average (1, 5, 15 min) before: {load_before}; after: {load_average()}",
        f"- Wall time of this part: {(time.time() - started) / 60:.1f} min",
        f"- Sized small on purpose: {rep.steps} optimizer steps per trial (one epoch of the quickstart's 32 train"
        f" inputs at batch 8) and {rep.repeats} rounds per |c|; a round runs one whole trial of every arm, the"
        " order rotating. A ratio is the median over rounds of the two arms' same-round ratio, min and max beside"
        " it; 'met' is judged on the median.",
        f"- **Per study is composed, not measured** (unless the last table says otherwise): a study of"
        f" {rep.trials_per_study} trials (4 configurations x 3 seeds) costs {rep.trials_per_study} x an SDFT trial"
        f" (SDFT recomputes everything) against one cold + {rep.trials_per_study - 1} warm harness trials (the"
        " harness's teacher cache is keyed by neither learning rate nor, for these strategies, seed); composed per"
        " round from that round's trials.",
        "",
        "## The job (identical token ids in both arms)",
        "",
        "The quickstart's instruction and its first 32 train inputs; c = the instruction as the system turn plus n"
        " demonstrations as chat turns (generated nouns, so |c| can grow); c' = empty (the user turn). SDFT gets"
        " c as `privileged_context` with `teacher_prompt_template='{privileged_context}{prompt}'`, so its teacher"
        " prompt is the harness's (c, z) token for token. Both: the smollm2-135m embedded model, student = a copy,"
        " teacher = the frozen initial weights (SDFT `teacher_model_kind='base'`), on-policy samples from the"
        " student at temperature 1 (top_p 1, no top-k filter, ≤ 8 new tokens, ending at eos), forward KL on the"
        " top-k + a tail bucket (SDFT `topk_logits`, alpha 0, `distillation_add_tail`; harness `forward_kl` with"
        " `on_policy` mix 1), fp32, no gradient checkpointing, constant learning rate 1e-4, clip 1.0, batch 8.",
        "",
        _table(rep.jobs, index=False),
        "",
        "What still differs:",
        "",
        *[f"- {d}" for d in DIFFERENCES],
        "",
        "A trial = setup (student copy; SDFT: its trainer and its teacher loaded from the model's folder) + teacher"
        " work (harness only, through the cache: targets and top-k off-policy, c's KV cache on-policy) + training;"
        " evaluation is left out of both.",
        "",
        "## Ratios",
        "",
        _table(goal_rows, ".2f", index=False) if goal_rows else "(none run)",
        "",
    ]
    if not peers:
        lines += [
            "The second peer, TRL's GKDTrainer step, is the `train` part (perf.md); `--parts train,sdft` puts it here.",
            "",
        ]
    else:
        lines += [
            "The second peer, TRL's GKDTrainer (one training step, full-vocabulary teacher forward each step; from"
            " the `train` part of the same run, see perf.md):",
            "",
            _table([g.as_row() for g in peers], ".2f", index=False),
            "",
        ]
    lines += [
        "## Every arm (seconds per whole trial and per training loop)",
        "",
        _table(rep.rows, ".1f", index=False),
        "",
    ]
    if rep.study:
        pd.DataFrame(rep.study).to_csv(out / "sdft_study.csv", index=False)
        files.append("sdft_study.csv")
        lines += [
            "## A real study, to check the composition",
            "",
            "Configurations (learning rates) x seeds, trial by trial, arms alternating; the harness's trials share one"
            " teacher cache from empty. 'composed' is what the per-trial medians above predict for this grid.",
            "",
            _table(rep.study, ".2f", index=False),
            "",
        ]
    lines += ["## Files", "", *[f"- `{f}`" for f in files], ""]
    text = "\n".join(lines)
    (out / "sdft.md").write_text(text)
    return text
