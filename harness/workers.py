"""Several `harness run` processes on one study: how they share it without stepping on each other.

Optuna's RDB storage is the coordinator, nothing home-made beside it: trial numbers
are handed out by the storage, so they seed each trial's sampler (workers diverge,
one process stays reproducible); the global count is read from the storage before
and after a trial is claimed; a trial whose process died stops sending heartbeats
and is failed and requeued (`enqueue_trial` with its parameters) by whichever worker
notices first; the worker that created the study creates its MLflow parent run and
publishes the id in the study for the others.

Which trials count toward `n_trials`: completed and pruned ones, and configuration
failures (a result: this configuration diverges). Interrupted trials (killed,
Ctrl-C, tracking store lost) and trials stopped by a bug do not count and are
requeued; a surplus trial (claimed at the very moment the study filled up) is
closed without running.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GridSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.trial import FrozenTrial, TrialState

from harness import disk, stores, tracking

log = logging.getLogger(__name__)

# A trial's process records a heartbeat every HEARTBEAT_S; one silent for GRACE_S is taken as dead.
HEARTBEAT_S = 5
GRACE_S = 20
# How long a worker that did not create the study waits for the creator to publish the parent run.
PARENT_WAIT_S = 60.0
PARENT_ATTR = "mlflow_parent_run_id"

CONFIGURATION, INTERRUPTED, BUG, SURPLUS = "configuration", "interrupted", "bug", "surplus"


def worker_id() -> str:
    """host:pid, recorded on each trial (which worker ran it, and which one to look at when it died)."""
    return f"{platform.node()}:{os.getpid()}"


# ----------------------------------------------------------------------------- samplers


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number` in a study seeded `seed`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "big")


class PerTrialSeed(BaseSampler):
    """A sampler made afresh for each trial, seeded from the suite's seed and the trial's number.

    The storage numbers trials uniquely across workers, so two workers never draw the same sequence, a
    resumed study does not replay its first draws, and a study run in one process is reproducible. The
    samplers Optuna ships read the history from the storage, so a fresh one per trial loses nothing."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._live: dict[int, BaseSampler] = {}

    @property
    def kind(self) -> str:
        """The wrapped sampler's class name (TPESampler, RandomSampler, ...), for messages."""
        return type(self._make(0)).__name__

    def for_number(self, number: int) -> BaseSampler:
        """The sampler that trial `number` uses (made on first use)."""
        if number not in self._live:
            self._live[number] = self._make(trial_seed(self._seed, number))
        return self._live[number]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.for_number(trial.number).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.for_number(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.for_number(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.for_number(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        sampler = self.for_number(trial.number)
        self._live.pop(trial.number, None)
        sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's seed comes from its number."""


def seeded_grid(space: Mapping[str, Sequence[Any]], grid_seed: int, pick_seed: int) -> GridSampler:
    """A GridSampler for one trial: the grid shuffled by `grid_seed` (the suite's: a grid id is the same point in
    every trial and worker, so every point runs once), the pick among unvisited points drawn with `pick_seed`
    (the trial's: two workers starting together rarely take the same point). Optuna draws both from one
    generator, so the pick's is replaced once the shuffle is done."""
    sampler = GridSampler(dict(space), seed=grid_seed)
    sampler._rng = LazyRandomState(pick_seed)
    return sampler


# ----------------------------------------------------------------------------- counting


def failure(t: FrozenTrial) -> str | None:
    """Why a FAIL trial failed: configuration, interrupted, bug or surplus (None for other states).

    A FAIL without the mark is a trial whose process died (failed by the heartbeat check), or one
    recorded before the mark existed: then a reason means a configuration failure."""
    if t.state != TrialState.FAIL:
        return None
    mark = t.user_attrs.get("failure")
    if mark:
        return str(mark)
    reason = str(t.user_attrs.get("reason", ""))
    if not reason:
        return INTERRUPTED
    return BUG if reason.endswith("(stopped the study)") else CONFIGURATION


def counts(t: FrozenTrial) -> bool:
    """Whether a trial counts toward n_trials: a result, good or bad, of its configuration."""
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or failure(t) == CONFIGURATION


@dataclass(frozen=True)
class Tally:
    counted: int  # toward n_trials
    running: int
    waiting: int  # requeued, not yet picked up


def tally(study: optuna.Study) -> Tally:
    trials = study.get_trials(deepcopy=False)
    return Tally(
        counted=sum(counts(t) for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
        waiting=sum(t.state == TrialState.WAITING for t in trials),
    )


class Surplus(Exception):
    """This trial was claimed when the study already had its n_trials (two workers claimed the last one)."""


def claim(trial: optuna.Trial, target: int) -> None:
    """Go on only if fewer than `target` trials are counted or running ahead of this one.

    Trial numbers order the claims: of two workers that start the last trial at the same moment, the
    higher number is the surplus one, so the study never holds more than `target` counted trials."""
    ahead = sum(
        counts(t) or (t.state == TrialState.RUNNING and t.number < trial.number)
        for t in trial.study.get_trials(deepcopy=False)
        if t.number != trial.number
    )
    if ahead >= target:
        trial.set_user_attr("failure", SURPLUS)
        trial.set_user_attr("reason", f"not run: the study reached its {target} trials as this worker started it")
        raise Surplus(f"trial {trial.number}: the study already has its {target} trials")


# ----------------------------------------------------------------------------- interruptions


def requeue(study: optuna.Study, trial: FrozenTrial | optuna.Trial, why: str) -> None:
    """Queue the trial's configuration again (its parameters fixed), to be run by the next free worker."""
    if not trial.params:
        return  # stopped before drawing anything: the sampler draws afresh
    study.enqueue_trial(dict(trial.params), user_attrs={"requeued_from": trial.number, "requeued_because": why})


def requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's callback for a trial failed for lost heartbeats: requeue it and end its MLflow run KILLED."""
    who = trial.user_attrs.get("worker", "a worker")
    why = f"interrupted: {who} stopped sending heartbeats for {GRACE_S} s (killed or lost)"
    requeue(study, trial, why)
    log.warning("trial %d %s; its configuration was requeued", trial.number, why.removeprefix("interrupted: "))
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        try:
            run = tracking.TrialRun(run_id)
            run.set_tags({"optuna.trial_state": "FAIL"})
            run.end("KILLED", why + "; the configuration was requeued")
        except tracking.TrackingUnavailable:
            pass  # ended later by end_orphans


def _interrupted(trial: optuna.Trial, why: str) -> None:
    trial.set_user_attr("failure", INTERRUPTED)
    trial.set_user_attr("reason", why)
    requeue(trial.study, trial, why)


def guarded(
    objective: Callable[[optuna.Trial], Any], target: int, expected: tuple[type[Exception], ...]
) -> Callable[[optuna.Trial], Any]:
    """The objective with the workers' rules around it: claim a slot, mark what a failure means, requeue
    an interrupted configuration (Ctrl-C, SIGTERM, tracking store lost, a bug) before Optuna fails it."""
    worker = worker_id()

    def run(trial: optuna.Trial) -> Any:
        trial.set_user_attr("worker", worker)
        claim(trial, target)
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except expected:
            trial.set_user_attr("failure", CONFIGURATION)
            raise
        except KeyboardInterrupt:
            _interrupted(trial, "interrupted (Ctrl-C or SIGTERM)")
            raise
        except Exception as e:
            full = disk.full(e)
            if full is not None:  # not the configuration's doing, nor a bug: rerun it once there is room
                _interrupted(trial, f"interrupted: {full}")
                raise
            lost = stores.in_chain(e, tracking.TrackingUnavailable)
            if lost is not None:
                _interrupted(trial, f"interrupted: {lost}")
                raise tracking.TrackingUnavailable(str(lost)) from e
            trial.set_user_attr("failure", BUG)
            requeue(trial.study, trial, f"stopped by a bug: {type(e).__name__}")
            raise

    return run


def recover(study: optuna.Study, experiment_id: str) -> None:
    """Fail and requeue trials whose process died; end the MLflow runs nobody will end (any worker, any time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # calls requeue_stale for each trial it fails
    live = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    ended = tracking.end_orphans(
        experiment_id,
        study.study_name,
        live,
        "interrupted: its worker stopped before ending this run (killed, or the tracking store was unreachable); "
        "the configuration was requeued",
    )
    if ended:
        log.warning("ended %d MLflow run(s) left RUNNING by an interrupted worker: KILLED", len(ended))


# ----------------------------------------------------------------------------- one study, one parent run


def create_or_load(name: str, storage: optuna.storages.BaseStorage, **kwargs: Any) -> tuple[optuna.Study, bool]:
    """The study, and whether this worker created it (the storage lets only one worker do that)."""
    try:
        return optuna.create_study(study_name=name, storage=storage, **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        kwargs.pop("directions", None)
        return optuna.load_study(study_name=name, storage=storage, **kwargs), False


def parent_run(study: optuna.Study, created: bool, experiment_id: str, tags: dict[str, str]) -> str:
    """The study's one MLflow parent run: made by the worker that created the study, read by the others."""
    if not created:
        deadline = time.monotonic() + PARENT_WAIT_S
        while True:
            run_id = study.user_attrs.get(PARENT_ATTR)
            if run_id and tracking.run_in_experiment(run_id, experiment_id):
                return str(run_id)
            if run_id or study.get_trials(deepcopy=False) or time.monotonic() > deadline:
                break  # another tracking store, a study older than the attribute, or a creator that died
            time.sleep(0.5)
    run_id = tracking.parent_run_id(experiment_id, study.study_name, tags)
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id


# ----------------------------------------------------------------------------- what happened


def explain(t: FrozenTrial, trials: Sequence[FrozenTrial]) -> str:
    """Why a trial is what it is, in a few words (for the summary)."""
    bits = []
    if "requeued_from" in t.user_attrs:
        bits.append(f"rerun of #{t.user_attrs['requeued_from']}")
    reason = str(t.user_attrs.get("reason", ""))
    if t.state == TrialState.FAIL and failure(t) == INTERRUPTED and not reason:
        reason = "interrupted (its worker died)"
    if reason:
        bits.append(reason)
    reruns = [u.number for u in trials if u.user_attrs.get("requeued_from") == t.number]
    if reruns:
        bits.append(f"rerun as #{reruns[0]}")
    return "; ".join(bits)


def no_result(study: optuna.Study) -> str | None:
    """None if a trial completed; else one line saying how the trials ended."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.COMPLETE for t in trials):
        return None
    if not trials:
        return "no trial completed: the study has no trials"
    why: dict[str, int] = {}
    for t in trials:
        label = t.state.name if t.state != TrialState.FAIL else str(t.user_attrs.get("reason") or "interrupted")
        label = label.split(": ", 1)[0] if t.state == TrialState.FAIL and ": " in label else label
        why[label] = why.get(label, 0) + 1
    parts = ", ".join(f"{n} × {label}" for label, n in sorted(why.items(), key=lambda kv: -kv[1]))
    return f"no trial completed ({len(trials)} trials: {parts})"
