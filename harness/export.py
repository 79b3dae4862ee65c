"""Getting a kept student back: `harness export SUITE [--trial N] OUT/` and `harness.load_student`.

The trial is the study's best configuration on validation unless `--trial` names one (chosen as the report
chooses, never on test), and the student is its first training seed's: the one `harness.keep` logged. OUT/ is
a plain transformers folder (`AutoModelForCausalLM.from_pretrained(OUT)`) with the tokenizer and its chat
template, `student_context.json` (the context c' the student must be prompted with), and for LoRA students
the adapter in `adapter/` (peft format, on the suite's base model); for a learned c' (soft_prompt) the base
model and `soft_prompt.safetensors`, the virtual tokens `load_student` attaches in front of every input.
Weights come from the model MLflow's transformers flavour logged, else from the base model with the seed run's
adapter merged (the same fp32 merge the trial scored).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from harness import console, keep, models, softprompt, stores, tracking
from harness.keep import StudentContext
from harness.report.runs import best_trials, load_runs, load_study, seed_runs, trial_table
from harness.spec import Suite
from harness.train import quiet_peft

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """No student to export (nothing run, no such trial, not kept): one line for the user."""


@dataclass(frozen=True)
class Exported:
    """What `export` wrote and where it came from."""

    folder: Path
    trial: int
    configuration: str
    seed_run_id: str
    source: str  # "model" (the logged transformers model), "adapter" (base + the seed run's adapter) or
    # "soft_prompt" (the base model, and the seed run's virtual tokens in OUT/soft_prompt.safetensors)
    context: StudentContext
    metrics: dict[str, float]  # the seed run's own metrics: what this very student scored


def choose(suite: Suite, trial: int | None) -> tuple[pd.Series, str]:
    """The configuration's row of the trial table (the validation-best when `trial` is None) and the run id of
    its first seed, whose student is the one kept."""
    runs, _ = load_runs(suite)
    if runs.empty:
        hint = f"`{console.command('run', suite)}` first"
        if not suite.name.endswith(console.FAST_SUFFIX):  # the newcomer's `nox -s benchmark -- --fast` study
            fast = suite.model_copy(update={"name": suite.name + console.FAST_SUFFIX})
            hint += f", or after a `--fast` run: `{console.command('export', fast, 'OUT')}`"
        raise ExportError(f"suite '{suite.name}': no trials recorded ({hint})")
    table = trial_table(runs, load_study(suite))
    if trial is None:
        best = best_trials(table, 1)
        if best.empty:
            raise ExportError(f"suite '{suite.name}': no completed configuration to export")
        row = best.iloc[0]
    else:
        rows = table[table["trial"] == trial]
        if rows.empty:
            known = ", ".join(str(t) for t in table["trial"].dropna())
            raise ExportError(f"suite '{suite.name}': no trial {trial} (trials: {known})")
        row = rows.iloc[0]
        if row["state"] != "COMPLETE":
            raise ExportError(f"suite '{suite.name}': trial {trial} is {row['state']}, no student to export")
    seeds = seed_runs(runs).get(str(row["run_id"]))
    if not seeds:
        raise ExportError(f"suite '{suite.name}': trial {row['trial']} has no seed runs")
    return row, seeds[0]


def check_out(out: str | Path, force: bool = False) -> Path:
    """OUT as a folder export may write: new or empty, or any folder with `force` (its files are replaced).

    Checked before anything is loaded, so a mistyped OUT (a home folder, a system folder) costs nothing and
    loses nothing."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"OUT {folder}: exists and is not a folder; choose a new or empty folder")
    if force or not folder.exists():
        return folder
    try:
        occupied = next(folder.iterdir(), None) is not None
    except OSError as e:
        raise ExportError(f"OUT {folder}: cannot be read ({e.strerror}); choose a new or empty folder") from e
    if occupied:
        raise ExportError(
            f"OUT {folder}: folder is not empty and export would overwrite its files; "
            "choose a new or empty folder, or pass --force to replace them"
        )
    return folder


def read_context(suite: Suite, trial: int, path: Path, stored: Path | None = None) -> StudentContext:
    """The kept c' read from `path` (a download of the artifact stored at `stored`, when that is a local file),
    or one ExportError naming the file: a truncated or edited artifact must not end in a JSONDecodeError."""
    try:
        return StudentContext.from_json(path.read_text())
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        where = stored / keep.CONTEXT_FILE if stored is not None else path
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise ExportError(
            f"{where}: trial {trial}'s kept context c' is damaged ({first}); this student cannot be exported: "
            f"export another trial with --trial N, or rerun suite '{suite.name}' with a new work_dir to retrain it"
        ) from e


def export(suite: Suite, out: str | Path, trial: int | None = None, force: bool = False) -> Exported:
    """Write the student of `trial` (default: the validation-best configuration) to `out` as a plain folder.

    `out` must be new or empty unless `force` (ExportError first thing otherwise: the user's files are never
    overwritten by accident)."""
    check_out(out, force)
    row, seed_run = choose(suite, trial)
    number, name = int(row["trial"]), str(row["run_name"])
    client = MlflowClient()
    where = stores.Artifacts(suite)
    with tracking.guard():
        run = client.get_run(seed_run)
        base = where.locate(run.info.artifact_uri)
        kept = {a.path for a in mlflow.artifacts.list_artifacts(artifact_uri=f"{base}/{keep.ARTIFACTS}")}
    if keep.CONTEXT_FILE not in {Path(p).name for p in kept}:
        raise ExportError(
            f"suite '{suite.name}': trial {number} kept no student (it ran with tracking.save_student: none)"
        )
    adapter = any(Path(p).name == "adapter" for p in kept)
    learned = any(Path(p).name == "soft_prompt" for p in kept)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        context_file = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/{keep.ARTIFACTS}/{keep.CONTEXT_FILE}", dst_path=tmp
        )
        context = read_context(suite, number, Path(context_file), where.local(f"{base}/{keep.ARTIFACTS}"))
        model_id = run.data.tags.get(keep.MODEL_TAG)
        if learned:  # a learned c' on frozen weights: the base model, its virtual tokens beside it
            loaded = models.load(keep.base_name(suite), "cpu")
            model, tok = loaded.model, loaded.tokenizer
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{base}/{keep.ARTIFACTS}/soft_prompt/{softprompt.FILE}", dst_path=str(folder)
            )
            source = "soft_prompt"
        elif model_id:
            with tracking.guard():
                location = where.locate(client.get_logged_model(model_id).artifact_location)
            model, tok = _logged(location)
            source = "model"
        elif adapter:
            path = mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{keep.ARTIFACTS}/adapter", dst_path=tmp)
            model, tok = _merged(suite, path)
            source = "adapter"
        else:
            raise ExportError(
                f"suite '{suite.name}': trial {number} ({name}) is a full fine-tune whose weights were not kept "
                f"(tracking.save_student: {suite.tracking.save_student} keeps them for the best configuration "
                "only; `all` keeps every one)"
            )
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        if adapter:
            shutil.rmtree(folder / "adapter", ignore_errors=True)
            mlflow.artifacts.download_artifacts(  # lands as OUT/adapter
                artifact_uri=f"{base}/{keep.ARTIFACTS}/adapter", dst_path=str(folder)
            )
    (folder / keep.CONTEXT_FILE).write_text(context.to_json())
    metrics = {k: float(v) for k, v in run.data.metrics.items() if not k.startswith("system/")}
    return Exported(folder, number, name, seed_run, source, context, metrics)


def _logged(location: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        with tracking.guard():
            parts: dict[str, Any] = mlflow.transformers.load_model(location, return_type="components")
    except (MlflowException, OSError) as e:
        raise ExportError(f"cannot load the logged student at {location}: {str(e).splitlines()[0]}") from e
    return parts["model"], parts["tokenizer"]


def _merged(suite: Suite, adapter: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    base = models.load(keep.base_name(suite), "cpu")
    with quiet_peft():
        merged = PeftModel.from_pretrained(base.model, adapter).merge_and_unload()
    return merged, base.tokenizer


def load_student(
    suite: Suite, trial: int | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, StudentContext]:
    """The student of `trial` (default: the validation-best configuration) as plain transformers objects, with
    the context c' it must be prompted with (`context.prompt(text)`)."""
    with tempfile.TemporaryDirectory() as tmp:
        done = export(suite, tmp, trial)
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(tmp)
        if (Path(tmp) / softprompt.FILE).is_file():
            softprompt.bind(model, softprompt.load(Path(tmp) / softprompt.FILE))
    model.eval()
    return model, tok, done.context
