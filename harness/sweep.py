"""The Optuna study over a suite's axes and hyperparameters, each trial an MLflow run.

The study lives in Optuna storage (SQLite by default, any RDB URL for several
machines); rerunning the same suite resumes it and only runs the trials still
missing. A trial that fails for a reason its configuration can cause (divergence,
an invalid axis combination, out of memory, an undefined objective) is recorded
as failed with its reason and the study goes on; any other exception is a bug:
the trial is marked failed and the study stops with the traceback.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import optuna
import torch

from harness import stores, tracking
from harness.config import HyperParams, TrialConfig
from harness.metrics import HELDOUT_KL, METRICS, TrialMetrics
from harness.results import TrialResult
from harness.spec import Choices, Range, Suite
from harness.train import TrainingDiverged
from harness.trial import InvalidCombination, Workbench, per_item_table, run_trial

log = logging.getLogger(__name__)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


class ObjectiveUndefined(ArithmeticError):
    """The trial ran, but an objective has no value (gap closure when teacher and baseline score the same)."""


# What a configuration can legitimately cause (pruning is Optuna's own TrialPruned); nothing broader.
EXPECTED_FAILURES = (TrainingDiverged, InvalidCombination, torch.OutOfMemoryError, ObjectiveUndefined)


def direction(objective: str) -> Literal["maximize", "minimize"]:
    """The study direction of an objective, from the metric's definition."""
    d = METRICS[objective].direction
    if d is None:
        raise ValueError(f"sweep.objectives: metric '{objective}' has no direction to optimise")
    return d


def open_storage(url: str) -> optuna.storages.BaseStorage | str:
    """RDB storages get a heartbeat: a trial whose process died (kill, power loss) is marked FAIL on the
    next run instead of staying RUNNING forever and counting as unfinished."""
    if url.startswith(("sqlite", "postgresql", "mysql")):
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=30, grace_period=90, heartbeat_stale_trial_callback=_mark_stale
        )
    return url


def _mark_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    log.warning("trial %d stopped sending heartbeats (its process died); recorded as FAIL", trial.number)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        tracking.TrialRun(run_id).end("FAILED", "process died during the trial (no heartbeat)")


def grid_space(suite: Suite) -> dict[str, list[Any]]:
    """The exhaustive grid: every axis value × every hyperparameter choice (ranges are not griddable)."""
    space: dict[str, list[Any]] = {
        "target": [v.label for v in suite.axes.targets],
        "context": [v.label for v in suite.axes.contexts],
        "loss": [v.label for v in suite.axes.losses],
    }
    for name, v in suite.hyperparameters.searched().items():
        if isinstance(v, Range):
            raise ValueError(f"hyperparameters.{name}: the grid sampler needs `choices`, not a range")
        space[name] = list(v.choices)
    return space


def make_sampler(suite: Suite) -> optuna.samplers.BaseSampler:
    kind = suite.sweep.sampler
    if len(suite.sweep.objectives) == 2 and kind == "tpe":
        kind = "nsga2"
    if kind == "grid":
        return optuna.samplers.GridSampler(grid_space(suite), seed=suite.seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=suite.seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=suite.seed)
    return optuna.samplers.TPESampler(seed=suite.seed)


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


def suggest(trial: optuna.Trial, suite: Suite) -> TrialConfig:
    """Draw one configuration: the three categorical axes plus the searched hyperparameters."""
    ax = suite.axes
    by_label = {
        "target": {v.label: v for v in ax.targets},
        "context": {v.label: v for v in ax.contexts},
        "loss": {v.label: v for v in ax.losses},
    }
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
    return TrialConfig(chosen["target"], chosen["context"], chosen["loss"], HyperParams.from_values(hp))


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
    vals = []
    for name in suite.sweep.objectives:
        v = getattr(metrics, name)
        if v is None or math.isnan(v):
            raise ObjectiveUndefined(f"objective {name} is undefined (NaN): teacher and baseline score the same")
        vals.append(float(v))
    return vals


def make_objective(suite: Suite, bench: Workbench, exp_id: str, parent_id: str, base_tags: dict[str, str]) -> Any:
    maximize = METRICS[suite.sweep.objectives[0]].direction == "maximize"
    prune = prunes(suite)

    def objective(trial: optuna.Trial) -> float | list[float]:
        cfg = suggest(trial, suite)
        tags = {**base_tags, "optuna.trial_number": str(trial.number)}
        try:
            name = tracking.run_name(cfg.target.label, cfg.context.label, cfg.loss.label, suite.seed)
            with tracking.trial_run(exp_id, parent_id, name, tags) as run:
                trial.set_user_attr("mlflow_run_id", run.run_id)
                run.log_params(cfg.params())
                reporter = _Reporter(trial, run, maximize, prune)
                result = run_trial(bench, cfg, reporter)
                run.log_metrics(result.metrics)
                _log_artifacts(run, bench, result)
                log.debug(
                    "trial %d (%s / %s / %s):\n%s",
                    trial.number,
                    cfg.target.label,
                    cfg.context.label,
                    cfg.loss.label,
                    "\n".join(f"  {k:<28} {v:.4g}" for k, v in result.metrics.logged().items()),
                )
                values = objective_values(suite, result.metrics)
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


def _tag_state(trial: optuna.Trial, state: str) -> None:
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        tracking.TrialRun(run_id).set_tags({"optuna.trial_state": state})


def _log_artifacts(run: tracking.TrialRun, bench: Workbench, result: TrialResult) -> None:
    s = bench.suite
    run.log_text(s.resolved_yaml(), "suite.yaml")
    run.log_table(per_item_table(result), "per_item.json")
    inputs = [dataclasses.asdict(i) for i in result.inputs]
    run.log_inputs(inputs, name=f"{bench.task.name}-train-{len(inputs)}", context="training")
    run.log_dict({arm: a.raw for arm, a in result.arms.present().items()}, "lm_eval_results.json")
    ctx = result.student_context
    run.log_dict(
        {
            "teacher_context": {"system": bench.context.system, "demos": bench.context.n_demos},
            "student_context": {"system": ctx.system, "demos": ctx.n_demos},
        },
        "contexts.json",
    )


def run(suite: Suite, *, n_trials: int | None = None, timeout: float | None = None) -> optuna.Study:
    """Run (or resume) the suite's study until it holds `n_trials` finished trials; returns the study."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own log line says why a trial failed
    directions = [direction(o) for o in suite.sweep.objectives]
    storage = stores.storage_url(suite)
    name = stores.study_name(suite)
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(storage),
        sampler=make_sampler(suite),
        pruner=make_pruner(suite),
        directions=directions,
        load_if_exists=True,
    )
    target = n_trials if n_trials is not None else suite.sweep.n_trials
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    todo = max(0, target - done)
    log.info("study %s in %s: %d finished, %d to run", name, stores.display_url(storage), done, todo)
    exp_id = tracking.setup(suite)
    base_tags = {
        "harness.suite": suite.name,
        "harness.suite_hash": suite.content_hash(),
        "harness.study": name,
        "git.commit": tracking.git_commit(),
        "teacher": suite.models.teacher,
        "student": suite.models.student,
        "task": suite.task.name,
        "machine": platform.platform(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    parent = tracking.parent_run_id(exp_id, name, base_tags)
    tracking.save_trials_view(exp_id, view_metrics(suite), view_params(suite), directions[0] == "maximize")
    if todo:
        bench = Workbench(suite)
        with tracking.study_running(parent):
            study.optimize(
                make_objective(suite, bench, exp_id, parent, base_tags),
                n_trials=todo,
                timeout=timeout or suite.sweep.timeout,
                catch=EXPECTED_FAILURES,
                gc_after_trial=True,
                callbacks=[Progress(suite.sweep.objectives, target)],
            )
    return study


# Columns of the saved MLflow runs view after the objectives: the arms' scores and what a trial cost.
VIEW_METRICS = ("gap_closure", "gap_closure_stderr", "student_score", "teacher_score", "baseline_score", "heldout_kl")


def view_metrics(suite: Suite) -> list[str]:
    """The runs view's metric columns: the objectives first (the view sorts by the first), then the headline ones."""
    names = [*suite.sweep.objectives, *(m for m in VIEW_METRICS if m in METRICS)]
    return list(dict.fromkeys(names))


def view_params(suite: Suite) -> list[str]:
    """The runs view's parameter columns: the three axes and the searched hyperparameters."""
    return ["target", "context", "loss", *(f"hp.{h}" for h in suite.hyperparameters.searched())]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:02.0f} min"


class Progress:
    """Optuna callback: one line per finished trial, the study's progress in words, e.g.
    `trial 3/8 greedy|empty|forward_kl done (gap_closure 0.970) — elapsed 6 min, ETA 10 min`.
    k counts every finished trial of the study (a resumed study starts past 0); the ETA extrapolates this
    process's own pace over the trials still missing."""

    def __init__(self, objectives: Sequence[str], target: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.objectives, self.target, self.clock = objectives, target, clock
        self.start = clock()
        self.ran = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.ran += 1
        k = len(study.get_trials(deepcopy=False, states=FINISHED))
        level, line = self.line(trial, k)
        log.log(level, line)

    def line(self, trial: optuna.trial.FrozenTrial, k: int) -> tuple[int, str]:
        p = trial.params
        what = tracking.run_name(str(p.get("target")), str(p.get("context")), str(p.get("loss")))
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
        timing = f"elapsed {_duration(elapsed)}" + (f", ETA {_duration(elapsed / self.ran * left)}" if left else "")
        return level, f"trial {k}/{self.target} {what} {outcome} — {timing}"


def plan(suite: Suite) -> list[str]:
    """What `harness run` would do, for `--dry-run`: the grid's every point, or the axes and ranges a sampler
    draws from; the fixed hyperparameters. Reads the suite only (no model, no study)."""
    sw = suite.sweep
    lines = [
        f"suite '{suite.name}': study {stores.study_name(suite)}, {sw.n_trials} trials, "
        f"objectives {', '.join(sw.objectives)}, sampler {make_sampler(suite).__class__.__name__}, "
        f"pruner {make_pruner(suite).__class__.__name__}, seed {suite.seed}"
    ]
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
            hp = " ".join(f"{k}={values[k]}" for k in space if k not in ("target", "context", "loss"))
            lines.append(f"  {i:>3}. {tracking.run_name(values['target'], values['context'], values['loss'])} {hp}")
    else:
        for axis, values in (
            ("target", suite.axes.targets),
            ("context", suite.axes.contexts),
            ("loss", suite.axes.losses),
        ):
            lines.append(f"  {axis:<14} {', '.join(v.label for v in values)}")
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
    """One line for the study, then one per trial: state, objective values, axes, why it failed."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        done = t.values is not None and t.state == optuna.trial.TrialState.COMPLETE
        vals = ", ".join(f"{v:.3f}" for v in t.values) if done else ""
        rows.append(
            f"  #{t.number:<3} {t.state.name:<8} {vals:<16} target={t.params.get('target')} "
            f"context={t.params.get('context')} loss={t.params.get('loss')} "
            f"{t.user_attrs.get('reason', '')}"
        )
    return [f"study {study.study_name}: {len(rows)} trials", *rows]
