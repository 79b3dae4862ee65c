"""Suite spec: a YAML file → typed, validated objects.

Everything downstream receives these objects, never raw dicts, so a typo in a
suite fails here with the file and the field path instead of deep in a trial.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import contexts, losses, targets


class SuiteError(ValueError):
    """A suite file that cannot be used; the message is one line naming file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Models(_Strict):
    teacher: str = "smollm2-135m"
    student: str = Field("same", description="'same' = self-distillation from the teacher's weights")
    device: str = "auto"


class ControlTask(_Strict):
    """An unrelated task scored for the base model and each student: did distillation cost other skills?"""

    name: str = Field(description="lm-eval task name (local under `path`, or a registered lm-eval task)")
    path: str | None = Field(None, description="folder holding the local task YAML, relative to the suite file")
    metric: str | None = Field(None, description="main metric; default: the task's first metric")
    eval_limit: int | None = Field(None, ge=1, description="items scored per model (None = all)")
    demos: int = Field(0, ge=0, description="demonstrations from the control task's own few-shot split")
    instruction: str | None = Field(None, description="system instruction for the control task")


class Task(_Strict):
    name: str = Field(description="lm-eval task name (local under `path`, or a registered lm-eval task)")
    path: str | None = Field(None, description="folder holding the local task YAML, relative to the suite file")
    metric: str | None = Field(None, description="main metric; default: the task's first metric")
    eval_limit: int | None = Field(None, ge=1, description="held-out items scored per arm (None = all)")
    control: ControlTask | None = Field(None, description="an unrelated task scored to show forgetting")


class ContextSpec(_Strict):
    """The teacher's full context c: a system instruction plus the first `demos` demonstrations."""

    instruction: str | None = None
    demos: int = Field(4, ge=0)


class AxisValue(BaseModel):
    """One value of a sweep axis: a registry name plus its parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def label(self) -> str:
        """Short human id, e.g. `fewer_demos(k=1)`: used as the categorical choice in sweeps."""
        p = self.params
        return self.name if not p else f"{self.name}(" + ",".join(f"{k}={p[k]}" for k in sorted(p)) + ")"


class Axes(_Strict):
    targets: list[AxisValue] = Field(default_factory=lambda: [AxisValue(name="greedy")], min_length=1)
    contexts: list[AxisValue] = Field(default_factory=lambda: [AxisValue(name="empty")], min_length=1)
    losses: list[AxisValue] = Field(default_factory=lambda: [AxisValue(name="self_target_nll")], min_length=1)

    @model_validator(mode="after")
    def _registered(self) -> Axes:
        for field, registry in (
            ("targets", targets.TARGETS),
            ("contexts", contexts.MODIFICATIONS),
            ("losses", losses.LOSSES),
        ):
            seen = set()
            for i, v in enumerate(getattr(self, field)):
                if v.name not in registry:
                    raise ValueError(f"{field}.{i}.name: unknown '{v.name}' (known: {', '.join(sorted(registry))})")
                allowed = set(registry[v.name].params) | ({"temperature", "top_k"} if field == "losses" else set())
                extra = set(v.params) - allowed
                if extra:
                    raise ValueError(
                        f"{field}.{i}: '{v.name}' takes no parameter {sorted(extra)} "
                        f"(allowed: {sorted(allowed) or 'none'})"
                    )
                if v.label in seen:
                    raise ValueError(f"{field}.{i}: duplicate value '{v.label}'")
                seen.add(v.label)
        return self


class Range(_Strict):
    """A hyperparameter searched by the sweep."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    int_: bool = Field(False, alias="int")

    @model_validator(mode="after")
    def _order(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class Choices(_Strict):
    choices: list[float | int | str] = Field(min_length=1)


HyperValue = float | int | str | Range | Choices


class Hyperparameters(_Strict):
    """Each value is fixed, a `{low, high, log}` range, or `{choices: [...]}`; the sweep samples them."""

    learning_rate: HyperValue = 1e-4
    epochs: HyperValue = 2
    batch_size: HyperValue = 8
    lora_rank: HyperValue = Field(0, description="0 = full fine-tune; > 0 = LoRA of that rank")
    train_inputs: HyperValue = Field(64, description="number of distillation inputs z from the train split")
    warmup_ratio: HyperValue = 0.1
    weight_decay: HyperValue = 0.0

    def searched(self) -> dict[str, Range | Choices]:
        return {k: v for k, v in self if isinstance(v, Range | Choices)}


class Training(_Strict):
    max_new_tokens: int = Field(24, ge=1, description="teacher target length limit")
    stop_strings: list[str] = Field(default_factory=lambda: ["\n"])
    top_k: int = Field(64, ge=1, description="teacher log-probs kept per position in the cache")
    grad_accum: int = Field(1, ge=1)
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = 1.0
    eval_every: int = Field(0, ge=0, description="steps between held-out KL checks (0 = once per epoch)")
    generation_batch_size: int = Field(16, ge=1)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


class Evaluation(_Strict):
    batch_size: int = Field(16, ge=1)
    heldout_inputs: int = Field(32, ge=1, description="held-out inputs for KL and greedy agreement")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for the gap-closure stderr")


Objective = Literal["gap_closure", "student_score", "train_tokens", "wall_time_s"]


class Sweep(_Strict):
    sampler: Literal["tpe", "grid", "nsga2", "random"] = "tpe"
    n_trials: int = Field(4, ge=1)
    timeout: float | None = None
    objectives: list[Objective] = Field(
        default_factory=lambda: list[Objective](["gap_closure"]), min_length=1, max_length=2
    )
    pruner: Literal["auto", "median", "none"] = Field(
        "auto",
        description="median: stop trials whose held-out KL is worse than the median at the same step; "
        "auto = median, except none for the grid sampler (an exhaustive grid wants every point finished)",
    )
    storage: str | None = Field(None, description="Optuna storage URL; default SQLite under work_dir")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default SQLite under work_dir")

    @field_validator("objectives")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("objectives repeat")
        return v


class Suite(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = 0
    models: Models = Models()
    task: Task
    context: ContextSpec = ContextSpec()
    axes: Axes = Field(default_factory=Axes)
    hyperparameters: Hyperparameters = Hyperparameters()
    training: Training = Training()
    evaluation: Evaluation = Evaluation()
    sweep: Sweep = Sweep()
    work_dir: str = Field(".harness", description="caches, study and MLflow stores (relative to the cwd)")

    # Filled by load_suite, not by the user.
    source: str | None = Field(None, exclude=True)

    @property
    def suite_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()

    def task_dir(self) -> Path | None:
        return (self.suite_dir / self.task.path).resolve() if self.task.path else None

    def control_dir(self) -> Path | None:
        c = self.task.control
        return (self.suite_dir / c.path).resolve() if c and c.path else None

    def content_hash(self) -> str:
        """Hash of the resolved suite: two runs with the same hash asked for the same thing."""
        blob = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


def _loc(err: Mapping[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(top level)"


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite; any problem becomes one SuiteError line naming file and field."""
    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"{p}: no such suite file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SuiteError(f"{p}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{p}: a suite must be a mapping of fields, got {type(raw).__name__}")
    try:
        suite = Suite.model_validate({**raw, "source": str(p.resolve())})
    except ValidationError as e:
        first = e.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        loc = _loc(first)
        # Errors raised inside a validator carry their own field path in the message.
        if ":" in msg.split(" ")[0]:
            loc, msg = (loc + "." + msg.split(":", 1)[0]).strip("."), msg.split(":", 1)[1].strip()
        more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise SuiteError(f"{p}: {loc}: {msg}{more}") from None
    task_dir = suite.task_dir()
    if suite.task.path and not (task_dir and task_dir.is_dir()):
        raise SuiteError(f"{p}: task.path: folder {suite.task.path} not found next to the suite")
    control = suite.task.control
    control_dir = suite.control_dir()
    if control and control.path and not (control_dir and control_dir.is_dir()):
        raise SuiteError(f"{p}: task.control.path: folder {control.path} not found next to the suite")
    return suite
