"""The Optuna study over a suite's axes and hyperparameters, each trial an MLflow run.

One trial is one configuration trained once per seed (`sweep.seeds`), each seed in its own MLflow
run nested under the configuration's; the objective is the configuration's mean over seeds on the
validation split, and only the first seed reports held-out KL (on validation items) to the pruner.

The study lives in Optuna storage (SQLite by default, any RDB URL for several
machines); rerunning the same suite resumes it and only runs the trials still
missing, and any number of workers may run it at once (`harness.workers`). A
trial that fails for a reason its configuration can cause (divergence, an
invalid axis combination, out of memory, an undefined objective) is recorded as
failed with its reason and the study goes on; any other exception is a bug: the
trial is marked failed, its configuration requeued, and the study stops with
the traceback. A tracking store lost mid-trial requeues the trial and stops
this worker with one line (TrackingUnavailable).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import optuna
import torch

from harness import aggregate, disk, keep, ledger, stores, tracking, workers
from harness.config import HyperParams, TrialConfig
from harness.contexts import Context
from harness.metrics import HELDOUT_KL, METRICS, OBJECTIVES, TrialMetrics
from harness.redact import portable
from harness.results import TrialResult
from harness.spec import Choices, Range, Suite
from harness.train import TrainingDiverged
from harness.trial import InvalidCombination, Workbench, check_combination, per_item_table, run_trial

log = logging.getLogger(__name__)


class ObjectiveUndefined(ArithmeticError):
    """The trial ran, but an objective has no value (gap closure when teacher and baseline score the same)."""


# What a configuration can legitimately cause (pruning is Optuna's own TrialPruned); nothing broader.
EXPECTED_FAILURES = (TrainingDiverged, InvalidCombination, torch.OutOfMemoryError, ObjectiveUndefined)


def direction(objective: str) -> Literal["maximize", "minimize"]:
    """The study direction of an objective, from the definition of the metric it optimises."""
    d = METRICS[OBJECTIVES[objective]].direction
    if d is None:
        raise ValueError(f"sweep.objectives: metric '{objective}' has no direction to optimise")
    return d


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage, its schema created safely if several workers start together, with heartbeats: a
    trial whose process died (kill, power loss) is failed and its configuration requeued by whichever
    worker notices first (`workers.requeue_stale`), instead of staying RUNNING forever."""

    def rdb() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=workers.HEARTBEAT_S,
                grace_period=workers.GRACE_S,
                heartbeat_stale_trial_callback=workers.requeue_stale,
            )

    return stores.open_store(url, "Optuna storage", rdb)


def grid_space(suite: Suite) -> dict[str, list[Any]]:
    """The exhaustive grid: every axis value × every hyperparameter choice (ranges are not griddable)."""
    space: dict[str, list[Any]] = {
        "target": [v.label for v in suite.axes.targets],
        "context": [v.label for v in suite.axes.contexts],
        "loss": [v.label for v in suite.axes.losses],
    }
    if len(suite.axes.inputs) > 1:  # one source: not a dimension (a study from before the axis stays the same)
        space["inputs"] = [v.label for v in suite.axes.inputs]
    for name, v in suite.hyperparameters.searched().items():
        if isinstance(v, Range):
            raise ValueError(f"hyperparameters.{name}: the grid sampler needs `choices`, not a range")
        space[name] = list(v.choices)
    return space


def make_sampler(suite: Suite) -> workers.PerTrialSeed:
    """The suite's sampler, made afresh for every trial with a seed from the suite's seed and the trial's
    number: workers never replay each other's draws, a study in one process is reproducible."""
    kind = suite.sweep.sampler
    if len(suite.sweep.objectives) == 2 and kind == "tpe":
        kind = "nsga2"
    space = grid_space(suite) if kind == "grid" else {}

    def make(seed: int) -> optuna.samplers.BaseSampler:
        if kind == "grid":
            return workers.seeded_grid(space, suite.seed, seed)
        if kind == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed)

    return workers.PerTrialSeed(make, suite.seed)


def prunes(suite: Suite) -> bool:
    """Pruning needs one objective; a grid is exhaustive, so by default its points all run to the end."""
    sw = suite.sweep
    if len(sw.objectives) > 1 or sw.pruner == "none":
        return False
    return sw.pruner == "median" or sw.sampler != "grid"


def make_pruner(suite: Suite) -> optuna.pruners.BasePruner:
    if not prunes(suite):
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def suggest(trial: optuna.Trial | optuna.trial.FixedTrial, suite: Suite) -> TrialConfig:
    """Draw one configuration: the three categorical axes plus the searched hyperparameters."""
    ax = suite.axes
    by_label = {
        "target": {v.label: v for v in ax.targets},
        "context": {v.label: v for v in ax.contexts},
        "loss": {v.label: v for v in ax.losses},
    }
    if len(ax.inputs) > 1:
        by_label["inputs"] = {v.label: v for v in ax.inputs}
    chosen = {axis: values[trial.suggest_categorical(axis, list(values))] for axis, values in by_label.items()}
    hp: dict[str, Any] = {}
    for name, value in suite.hyperparameters:
        if isinstance(value, Range):
            if value.int_:
                hp[name] = trial.suggest_int(
                    name, int(value.low), int(value.high), log=value.log, step=int(value.step or 1)
                )
            else:
                hp[name] = trial.suggest_float(name, value.low, value.high, log=value.log, step=value.step)
        elif isinstance(value, Choices):
            hp[name] = trial.suggest_categorical(name, value.choices)
        else:
            hp[name] = value
    inputs = chosen.get("inputs", ax.inputs[0])
    return TrialConfig(chosen["target"], chosen["context"], chosen["loss"], HyperParams.from_values(hp), inputs)


class _Reporter:
    """Bridges the trial's reports to Optuna (pruning) and MLflow (step metrics)."""

    def __init__(self, trial: optuna.Trial, run: tracking.TrialRun, maximize: bool, prune: bool) -> None:
        self.trial, self.run, self.sign, self.prune = trial, run, (-1.0 if maximize else 1.0), prune

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log_step(step, metrics)

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log_step(step, metrics)
        kl = metrics[HELDOUT_KL.name]
        if not self.prune:
            return
        self.trial.report(self.sign * kl, step)  # lower KL is better; flip sign for a maximised study
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"held-out KL {kl:.4f} at step {step} is worse than the median of earlier trials")


def objective_values(suite: Suite, metrics: TrialMetrics) -> list[float]:
    """The study's objective values: each objective's metric (a validation score, or a cost), mean over seeds."""
    vals = []
    for name in suite.sweep.objectives:
        metric = OBJECTIVES[name]
        v = getattr(metrics, metric)
        if v is None or math.isnan(v):
            raise ObjectiveUndefined(
                f"objective {name} is undefined ({metric} is NaN): teacher and baseline score the same "
                "on the validation split"
            )
        vals.append(float(v))
    return vals


def make_objective(suite: Suite, bench: Workbench, exp_id: str, parent_id: str, base_tags: dict[str, str]) -> Any:
    maximize = direction(suite.sweep.objectives[0]) == "maximize"
    prune = prunes(suite)
    seeds = suite.training_seeds()

    keeper = keep.Keeper(suite, bench, exp_id)
    first = [True]  # this process's first configuration pays for the work later trials find cached

    def configuration(
        trial: optuna.Trial, run: tracking.TrialRun, cfg: TrialConfig, tags: dict[str, str]
    ) -> TrialMetrics:
        """Every seed of the configuration in its own nested run; the configuration's metrics over them."""
        name = run_name(cfg)
        results = []
        try:
            for i, seed in enumerate(seeds):
                seed_tags = {**tags, "harness.seed": str(seed)}
                with tracking.trial_run(exp_id, run.run_id, run_name(cfg, seed), seed_tags, kind="seed") as seed_run:
                    reporter = _Reporter(trial, seed_run, maximize, prune and i == 0)
                    seed_run.log_params({**cfg.params(), "seed": seed})
                    if first[0]:
                        log.info(seed_phase_line(trial.number, name, i, len(seeds)))
                    result = run_trial(bench, cfg, seed, reporter, keeper.hook(seed_run.run_id, i == 0))
                    if first[0]:
                        log.info(seed_done_line(trial.number, i, len(seeds), result.metrics))
                    _log_seed(seed_run, bench, result)
                    trained = {"number": trial.number, "configuration": name, "seed": seed}
                    keeper.seed_done(seed_run, result.student_context, cfg.context.label, trained)
                    results.append(result)
            first[0] = False
            metrics = aggregate.combine(results, n_boot=suite.evaluation.bootstrap, seed=suite.seed)
            run.log_metrics(metrics)
            run.log_ledger(ledger.combine([r.ledger for r in results]))
            _log_artifacts(run, bench, results)
            keeper.configuration_done(run, cfg, trial.number, metrics)
            return metrics
        finally:
            keeper.clear()

    def objective(trial: optuna.Trial) -> float | list[float]:
        cfg = suggest(trial, suite)
        tags = {**base_tags, "optuna.trial_number": str(trial.number)}
        try:
            with tracking.trial_run(exp_id, parent_id, run_name(cfg), tags) as run:
                trial.set_user_attr("mlflow_run_id", run.run_id)
                run.log_params({**cfg.params(), "training_seeds": ",".join(map(str, seeds))})
                metrics = configuration(trial, run, cfg, tags)
                log.debug(
                    "trial %d (%s / %s / %s), %d seeds:\n%s",
                    trial.number,
                    cfg.target.label,
                    cfg.context.label,
                    cfg.loss.label,
                    len(seeds),
                    "\n".join(f"  {k:<28} {v:.4g}" for k, v in metrics.logged().items()),
                )
                values = objective_values(suite, metrics)
                run.set_tags({"optuna.trial_state": "COMPLETE"})
        except optuna.TrialPruned as e:
            trial.set_user_attr("reason", str(e))
            _tag_state(trial, "PRUNED")
            raise
        except EXPECTED_FAILURES as e:
            trial.set_user_attr("reason", f"{type(e).__name__}: {e}")
            _tag_state(trial, "FAIL")  # the study's progress line says why
            raise
        except Exception as e:  # not a result but a bug: Optuna marks the trial FAIL and re-raises, stopping the study
            full = disk.full(e)
            if full is not None:  # no bug either: the command says so in one line, the configuration is requeued
                trial.set_user_attr("reason", f"interrupted: {full}")
                _tag_state(trial, "FAIL")
                raise
            trial.set_user_attr("reason", f"{type(e).__name__}: {e} (stopped the study)")
            _tag_state(trial, "FAIL")
            log.error(
                "trial %d raised %s, which no configuration explains; stopping the study",
                trial.number,
                type(e).__name__,
            )
            raise
        return values[0] if len(values) == 1 else values

    return objective


def run_name(cfg: TrialConfig, seed: int | None = None) -> str:
    return tracking.run_name(cfg.target.label, cfg.context.label, cfg.loss.label, seed, cfg.inputs_label)


def _log_seed(run: tracking.TrialRun, bench: Workbench, result: TrialResult) -> None:
    """One seed of a configuration, logged to its own run: the seed's metrics, its per-item answers, its inputs."""
    run.log_metrics(result.metrics)
    run.log_ledger(result.ledger)
    run.log_table(per_item_table(result), "per_item.json")
    inputs = [dataclasses.asdict(i) for i in result.inputs]
    run.log_inputs(inputs, name=f"{bench.task.name}-train-{len(inputs)}", context="training")
    run.log_table(inputs, "training_inputs.json")  # the rows themselves: MLflow's dataset keeps only a digest
    run.log_dict(
        {
            f"{split}/{arm}": a.raw
            for split in ("validation", "test")
            for arm, a in getattr(result, split).present().items()
        },
        "lm_eval_results.json",
    )


def _tag_state(trial: optuna.Trial, state: str) -> None:
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        tracking.TrialRun(run_id).set_tags({"optuna.trial_state": state})


def _log_artifacts(run: tracking.TrialRun, bench: Workbench, results: list[TrialResult]) -> None:
    """The configuration run's artifacts: the resolved suite, its contexts, and the per-item scores of every
    arm, split and seed (`item_scores.json`), from which the report pairs configurations."""
    s = bench.suite
    run.log_text(s.resolved_yaml(), "suite.yaml")
    run.log_dict(aggregate.item_scores(results, bench.metric, bench.split_notes()), aggregate.SCORES_ARTIFACT)
    ctx = results[0].student_context
    run.log_dict(
        {
            "teacher_context": {"system": bench.context.system, "demos": bench.context.n_demos},
            "student_context": {"system": ctx.system, "demos": ctx.n_demos},
        },
        "contexts.json",
    )


# How often a worker with nothing to start looks again (another worker's trial may be interrupted).
POLL_S = 2.0


@dataclasses.dataclass(frozen=True)
class Joined:
    """A worker's handle on the shared study: the study, its MLflow experiment and parent run, run tags."""

    study: optuna.Study
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]


def join(suite: Suite) -> Joined:
    """Open (creating them on first use, safely when several workers start at once) the suite's study, its
    MLflow experiment and its one parent run."""
    study, created = workers.create_or_load(
        stores.study_name(suite),
        open_storage(stores.storage_url(suite)),
        sampler=make_sampler(suite),
        pruner=make_pruner(suite),
        directions=[direction(o) for o in suite.sweep.objectives],
    )
    exp_id = tracking.setup(suite)
    tags = {
        "harness.suite": suite.name,
        "harness.suite_hash": suite.content_hash(),
        "harness.study": study.study_name,
        "git.commit": tracking.git_commit(),
        "teacher": suite.models.teacher,
        "student": suite.models.student,
        "task": suite.task.name,
        "machine": platform.platform(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    return Joined(study, exp_id, workers.parent_run(study, created, exp_id, tags), tags)


def run(suite: Suite, *, n_trials: int | None = None, timeout: float | None = None) -> optuna.Study:
    """Run (or resume, or join) the suite's study until it holds `n_trials` counted trials; returns the study.

    Any number of processes may run this at once on the same stores. Each start first fails and requeues
    the trials of dead workers; a worker with nothing left to start waits while others run the last trials,
    to take over any of them that is interrupted."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own log line says why a trial failed
    tracking.reset_outage()
    joined = join(suite)
    study, exp_id = joined.study, joined.experiment_id
    target = n_trials if n_trials is not None else suite.sweep.n_trials
    tracking.save_trials_view(
        exp_id, view_metrics(suite), view_params(suite), direction(suite.sweep.objectives[0]) == "maximize"
    )
    progress = Progress(suite.sweep.objectives, target)
    limit = timeout or suite.sweep.timeout
    deadline = time.monotonic() + limit if limit else None
    workers.recover(study, exp_id)
    t = workers.tally(study)
    log.info(
        "study %s in %s (worker %s): %d of %d trials done, %d running, %d queued",
        study.study_name,
        portable(stores.storage_url(suite)),
        workers.worker_id(),
        t.counted,
        target,
        t.running,
        t.waiting,
    )
    with tracking.study_running(joined.parent_run_id):
        _work(suite, joined, target, deadline, progress)
    return study


def _work(suite: Suite, joined: Joined, target: int, deadline: float | None, progress: Progress) -> None:
    """Start trials one at a time until the study holds `target` counted trials (or the deadline passes)."""
    study, exp_id = joined.study, joined.experiment_id
    objective = None
    waiting = False
    while True:
        workers.recover(study, exp_id)
        t = workers.tally(study)
        if t.counted >= target:
            break
        if deadline is not None and time.monotonic() >= deadline:
            log.info("timeout: no new trial is started (%d of %d trials done)", t.counted, target)
            break
        if t.counted + t.running >= target:
            if not waiting:
                log.info("the last %d trial(s) run in other workers; waiting to take over any interrupted", t.running)
            waiting = True
            time.sleep(POLL_S)
            continue
        waiting = False
        if objective is None:
            bench = Workbench(suite)
            objective = workers.guarded(
                make_objective(suite, bench, exp_id, joined.parent_run_id, joined.tags), target, EXPECTED_FAILURES
            )
        study.optimize(
            objective,
            n_trials=1,
            catch=(*EXPECTED_FAILURES, workers.Surplus),
            gc_after_trial=True,
            callbacks=[progress],
        )


# Columns of the saved MLflow runs view after the objectives: test figures with their interval, the arms' test
# scores and held-out KL (all defined in harness/metrics.py; a test keeps them so).
VIEW_METRICS = (
    "validation_gap_closure",
    "test_gap_closure",
    "test_gap_closure_low",
    "test_gap_closure_high",
    "test_student_score",
    "test_teacher_score",
    "test_baseline_score",
    "heldout_kl",
)


def view_metrics(suite: Suite) -> list[str]:
    """The runs view's metric columns: the objectives' metrics first (the view sorts by the first, a validation
    figure), then the headline ones."""
    names = [*(OBJECTIVES[o] for o in suite.sweep.objectives), *VIEW_METRICS]
    return list(dict.fromkeys(names))


def view_params(suite: Suite) -> list[str]:
    """The runs view's parameter columns: the three axes and the searched hyperparameters."""
    sources = ["inputs"] if [v.name for v in suite.axes.inputs] != ["train_split"] else []
    return ["target", "context", "loss", *sources, *(f"hp.{h}" for h in suite.hyperparameters.searched())]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:02.0f} min"


def seed_phase_line(number: int, name: str, i: int, n: int) -> str:
    """What the first configuration of a process is doing, before its seeds' only other line (the trial's, at the
    end): on a loaded machine the teacher's and the baseline's work can take many minutes."""
    what = (
        "teacher targets, then teacher and baseline scores on both splits (cached: later trials reuse them), "
        "then training and the student's scores"
        if i == 0
        else "training and the student's scores (teacher and baseline cached)"
    )
    return f"trial #{number} {name}: seed {i + 1}/{n} started — {what}"


def seed_done_line(number: int, i: int, n: int, m: TrialMetrics) -> str:
    """Where the first configuration's seed spent its time: the phases that later trials find cached or not."""
    spent = f"teacher targets {_duration(m.teacher_time_s)}, lm-eval scoring {_duration(m.eval_time_s)}"
    spent += f", training {_duration(m.train_time_s)}"
    return f"trial #{number}: seed {i + 1}/{n} done in {_duration(m.wall_time_s)} ({spent})"


class Progress:
    """Optuna callback: one line per finished trial, the study's progress in words, e.g.
    `trial 3/8 greedy|empty|forward_kl done (gap_closure 0.970) — elapsed 6 min, ETA 10 min`.
    k counts every finished trial of the study (a resumed study starts past 0); the ETA extrapolates this
    process's own pace over the trials still missing. The first trial of a process also loads the models and
    makes the teacher's targets and the fixed arms' scores that the others find cached, so once a second trial
    has finished the pace is that of the trials after the first; until then the ETA is an upper bound (`≤`)."""

    def __init__(self, objectives: Sequence[str], target: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.objectives, self.target, self.clock = objectives, target, clock
        self.start = clock()
        self.ran = 0
        self.first_done: float | None = None  # clock when this process's first trial finished

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.ran += 1
        if self.first_done is None:
            self.first_done = self.clock()
        k = workers.tally(study).counted
        level, line = self.line(trial, k)
        log.log(level, line)

    def line(self, trial: optuna.trial.FrozenTrial, k: int) -> tuple[int, str]:
        p = trial.params
        what = tracking.run_name(str(p.get("target")), str(p.get("context")), str(p.get("loss")), None, p.get("inputs"))
        level = logging.INFO
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.values is not None:
            outcome = (
                "done (" + ", ".join(f"{o} {v:.3f}" for o, v in zip(self.objectives, trial.values, strict=True)) + ")"
            )
        else:
            reason = str(trial.user_attrs.get("reason", ""))[:160]
            outcome = f"{trial.state.name.lower().replace('fail', 'failed')} ({reason})"
            level = logging.INFO if trial.state == optuna.trial.TrialState.PRUNED else logging.WARNING
        elapsed = self.clock() - self.start
        left = max(0, self.target - k)
        timing = f"elapsed {_duration(elapsed)}"
        if left:
            timing += f", ETA {self.eta(elapsed, left)}"
        return level, f"trial {k}/{self.target} {what} {outcome} — {timing}"

    def eta(self, elapsed: float, left: int) -> str:
        """Time for `left` more trials at the pace of the trials after the first (which paid for the cache)."""
        if self.first_done is not None and self.ran >= 2:
            after_first = (self.start + elapsed - self.first_done) / (self.ran - 1)
            return _duration(after_first * left)
        return "≤ " + _duration(elapsed / max(self.ran, 1) * left)


def _sampler_kind(sampler: optuna.samplers.BaseSampler) -> str:
    return sampler.kind if isinstance(sampler, workers.PerTrialSeed) else type(sampler).__name__


def context_lines(suite: Suite, width: int = 600) -> list[str]:
    """c as `--dry-run` shows it: its parts and the system message they make (long ones cut in the middle),
    and how many demonstrations follow it as chat turns."""
    c, texts = suite.context, suite.context_texts()
    full = Context(c.instruction, c.demos, texts.get("system_prompt"), texts.get("document"))
    parts = [f"instruction ({len(c.instruction)} chars)"] if c.instruction else []
    for part in ("system_prompt", "document"):
        src = getattr(c, part)
        if src is not None:
            where = src.file if src.file else "inline"
            cut = f", first {src.max_tokens} tokens" if getattr(src, "max_tokens", None) else ""
            parts.append(f"{part} ({where}, {len(texts[part])} chars{cut})")
    parts.append(f"{c.demos} demonstration{'s' if c.demos != 1 else ''} (chat turns from the task's few-shot split)")
    lines = ["context c: " + " + ".join(parts)]
    system = full.system
    if system:
        shown = (
            system
            if len(system) <= width
            else f"{system[: width // 2]} [... {len(system) - width} chars ...] " + (system[-width // 2 :])
        )
        lines += ["  system message:", *(f"    | {line}" for line in shown.splitlines())]
    return lines


def plan(suite: Suite) -> list[str]:
    """What `harness run` would do, for `--dry-run`: the grid's every point, or the axes and ranges a sampler
    draws from; the fixed hyperparameters. Reads the suite only (no model, no study)."""
    sw = suite.sweep
    lines = [
        f"suite '{suite.name}': study {stores.study_name(suite)}, {sw.n_trials} trials, "
        f"objectives {', '.join(sw.objectives)}, sampler {_sampler_kind(make_sampler(suite))}, "
        f"pruner {make_pruner(suite).__class__.__name__}, seed {suite.seed}"
    ]
    lines += context_lines(suite)
    searched = suite.hyperparameters.searched()
    if sw.sampler == "grid":
        space = grid_space(suite)
        points = list(itertools.product(*space.values()))
        lines.append(
            f"grid: {len(points)} points"
            + ("" if sw.n_trials >= len(points) else f", of which {sw.n_trials} run (the sampler picks which)")
            + "; a resumed study runs only the missing ones"
        )
        for i, point in enumerate(points, 1):
            values = dict(zip(space, point, strict=True))
            hp = " ".join(f"{k}={values[k]}" for k in space if k not in ("target", "context", "loss", "inputs"))
            why = ""
            try:
                check_combination(suggest(optuna.trial.FixedTrial(values), suite))
            except InvalidCombination as e:
                why = f"  (fails at once: {e})"
            name = tracking.run_name(
                values["target"],
                values["context"],
                values["loss"],
                None,
                values.get("inputs", suite.axes.inputs[0].label),
            )
            lines.append(f"  {i:>3}. {name} {hp}{why}")
    else:
        for axis, axis_values in (
            ("target", suite.axes.targets),
            ("context", suite.axes.contexts),
            ("loss", suite.axes.losses),
            ("inputs", suite.axes.inputs),
        ):
            lines.append(f"  {axis:<14} {', '.join(v.label for v in axis_values)}")
        for name, v in searched.items():
            if isinstance(v, Range):
                scale = ", log scale" if v.log else ""
                step = f", step {v.step}" if v.step else ""
                lines.append(f"  {name:<14} {'integer' if v.int_ else 'float'} in [{v.low}, {v.high}]{scale}{step}")
            else:
                lines.append(f"  {name:<14} {', '.join(str(c) for c in v.choices)}")
    fixed = {k: v for k, v in suite.hyperparameters if k not in searched}
    lines.append("fixed: " + " ".join(f"{k}={v}" for k, v in fixed.items()))
    return lines


def summary(study: optuna.Study) -> list[str]:
    """One line for the study, then one per trial: state, objective values, axes, why it failed or reran."""
    trials = study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        done = t.values is not None and t.state == optuna.trial.TrialState.COMPLETE
        vals = ", ".join(f"{v:.3f}" for v in t.values) if done else ""
        rows.append(
            f"  #{t.number:<3} {t.state.name:<8} {vals:<16} target={t.params.get('target')} "
            f"context={t.params.get('context')} loss={t.params.get('loss')} "
            f"{workers.explain(t, trials)}"
        )
    return [f"study {study.study_name}: {len(rows)} trials", *rows]
