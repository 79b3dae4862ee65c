"""Optuna's own plots of the study (optimization history, fANOVA importances), titled and sized for the report."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.importance import FanovaImportanceEvaluator
from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

from harness.metrics import OBJECTIVES
from harness.report.plots import SkipPlot
from harness.spec import Suite


def _optuna_target(suite: Suite, study: optuna.Study) -> dict[str, Any]:
    name = OBJECTIVES[suite.sweep.objectives[0]].replace("_", " ")  # e.g. "validation gap closure": what Optuna saw
    if len(study.directions) > 1:
        return {"target": lambda t: t.values[0], "target_name": name}
    return {"target_name": name}


def _optuna_plot(path: Path, draw: Callable[[], Any], title: str, integer_x: bool = False) -> None:
    with warnings.catch_warnings(), matplotlib.rc_context():  # optuna switches the global style; keep it local
        warnings.simplefilter("ignore", ExperimentalWarning)
        try:
            ax = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            plt.close("all")
            raise SkipPlot(f"optuna could not draw it ({type(e).__name__}: {e})") from e
        fig = ax.figure
        fig.set_size_inches(8.0, 4.8)
        for loc in ("left", "right"):
            ax.set_title("", loc=loc)  # optuna's own title sits left and would overlap ours
        ax.set_title(title)
        if integer_x:
            ax.xaxis.get_major_locator().set_params(integer=True)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _complete_optuna(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def plot_optuna_history(suite: Suite, study: optuna.Study | None, path: Path) -> None:
    """Optuna's optimization history: is the sampler still finding better configurations?"""
    if study is None:
        raise SkipPlot("the Optuna study is not in its storage")
    if len(_complete_optuna(study)) < 2:
        raise SkipPlot("needs at least 2 completed Optuna trials")
    kw = _optuna_target(suite, study)
    n = len(_complete_optuna(study))
    _optuna_plot(
        path,
        lambda: plot_optimization_history(study, **kw),
        f"Optimization history of {kw['target_name']} ({n} completed trials)",
        integer_x=True,
    )


def plot_optuna_importances(suite: Suite, study: optuna.Study | None, path: Path) -> None:
    """Optuna's parameter importances (fANOVA): which axis or hyperparameter moves the objective most."""
    if study is None:
        raise SkipPlot("the Optuna study is not in its storage")
    trials = _complete_optuna(study)
    if len(trials) < 2:
        raise SkipPlot("needs at least 2 completed Optuna trials")
    varied = {k for k in trials[0].params if len({repr(t.params.get(k)) for t in trials}) > 1}
    if not varied:
        raise SkipPlot("no parameter varies between the completed trials")
    kw = _optuna_target(suite, study)
    evaluator = FanovaImportanceEvaluator(seed=suite.seed)  # same study → same picture
    _optuna_plot(
        path,
        lambda: plot_param_importances(study, evaluator=evaluator, **kw),
        f"Parameter importances for {kw['target_name']}\n(fANOVA over {len(trials)} completed trials)",
    )
