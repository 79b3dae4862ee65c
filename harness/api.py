"""The library API: run a suite and get its trials as a pandas DataFrame, load a kept student.

    import harness
    df = harness.run("suites/smoke.yaml")             # the trials, one row per configuration
    model, tok, ctx = harness.load_student("suites/smoke.yaml")
    model.generate(**tok(ctx.prompt("Number 17"), return_tensors="pt", add_special_tokens=ctx.add_special_tokens))

The same study, stores and report as `harness run` (minus the report files): a suite already run is resumed,
not rerun. A bad suite raises `harness.spec.SuiteError` listing every problem.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from harness import commands, export, sweep
from harness.keep import StudentContext
from harness.report.runs import load_runs, trial_table
from harness.spec import Suite, load_suite


def _suite(suite: str | Path | Suite, fast: bool = False, resources: bool = False) -> Suite:
    s = suite if isinstance(suite, Suite) else load_suite(suite, resources=resources)
    return s.fast() if fast else s


def run(suite: str | Path | Suite, *, n_trials: int | None = None, fast: bool = False) -> pd.DataFrame:
    """Run (or resume) a suite's study; its trials as `harness.report.runs.trial_table` gives them: one row per
    configuration with its state, parameters, metrics (means over seeds) and MLflow run id."""
    s = _suite(suite, fast, resources=True)
    study = sweep.run(s, n_trials=n_trials)
    commands.summarise_study(s, None)
    runs, _ = load_runs(s)
    return trial_table(runs, study)


def load_student(
    suite: str | Path | Suite, trial: int | None = None, *, fast: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, StudentContext]:
    """The kept student of `trial` (default: the best configuration on validation) with its context c'."""
    return export.load_student(_suite(suite, fast), trial)
