"""Suite spec: a YAML file → typed, validated objects.

Everything downstream receives these objects, never raw dicts, so a typo in a
suite fails here with the file and the field path instead of deep in a trial.
`load_suite(..., resources=True)` also resolves the model names and the task
names, without loading either, so `harness validate` catches what `run` would
trip on. Nothing here imports torch, transformers, lm-eval, MLflow or Optuna
(lm-eval only to look up a registered task name): validation answers in well
under a second.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeAlias, TypeVar, cast

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from harness import sources
from harness.contexts import MODIFICATIONS
from harness.inputs import INPUTS
from harness.losses import LOSSES, teacher_needs
from harness.redact import redact
from harness.registry import (
    Integer,
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    Registry,
    UnitInterval,
    error_detail,
)
from harness.targets import TARGETS

# The model aliases `models.resolve` knows (models.EMBEDDED, models.TINY; a test keeps them in step).
# Listed here because importing `models` means importing torch and transformers.
MODEL_ALIASES = ("smollm2-135m", "tiny-random")


class SuiteError(ValueError):
    """A suite file that cannot be used: one line per problem, each naming the file and the field."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


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
    eval_limit: Integer | None = Field(None, ge=1, description="items scored per model (None = all)")
    demos: Integer = Field(0, ge=0, description="demonstrations from the control task's own few-shot split")
    instruction: str | None = Field(None, description="system instruction for the control task")


class Task(_Strict):
    name: str = Field(description="lm-eval task name (local under `path`, or a registered lm-eval task)")
    path: str | None = Field(None, description="folder holding the local task YAML, relative to the suite file")
    metric: str | None = Field(None, description="main metric; default: the task's first metric")
    eval_limit: Integer | None = Field(None, ge=1, description="test items scored per arm (None = all)")
    validation_limit: Integer | None = Field(
        None,
        ge=1,
        description="validation items scored per arm (None = all); for a task without its own validation split, "
        "the size of the seeded slice carved from its test items (default: a fifth of them, at most 200)",
    )
    control: ControlTask | None = Field(None, description="an unrelated task scored to show forgetting")
    allow_code: StrictBool = Field(
        False,
        description="let lm-eval run the Python a local task YAML names with `!function` (this task's and the "
        "control's); off, such a task is refused before any of its code is imported",
    )


class Text(_Strict):
    """A text of c, inline (`text`) or from a UTF-8 file next to the suite (`file`); a plain string is `text`."""

    file: str | None = Field(None, description="a UTF-8 file, relative to the suite file")
    text: str | None = Field(None, description="the text itself")

    @model_validator(mode="before")
    @classmethod
    def _plain_string(cls, v: Any) -> Any:
        return {"text": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_source(self) -> Text:
        if (self.file is None) == (self.text is None):
            raise ValueError("give exactly one of `file` and `text`")
        return self


class Document(Text):
    """A document whose knowledge c carries (facts, a manual, a codebase's notes)."""

    max_tokens: Integer | None = Field(
        None,
        ge=1,
        description="keep the document's first N tokens (None: all of it; a document longer than the model's "
        "window fails before any trial)",
    )


class ContextSpec(_Strict):
    """The teacher's full context c: an instruction, a system prompt and a document (each optional, joined in
    that order into the system message) plus the first `demos` demonstrations."""

    instruction: str | None = None
    system_prompt: Text | None = Field(None, description="a long system prompt: a persona, a rule sheet")
    document: Document | None = Field(None, description="a document c carries, its facts to be distilled")
    demos: Integer = Field(4, ge=0)


class AxisValue(BaseModel):
    """One value of a sweep axis: a registry name plus its parameters (checked against the registry entry)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def label(self) -> str:
        """Short human id, e.g. `fewer_demos(k=1)`, `mix(a=self_target_nll,b=jsd(beta=0.5),weight=0.3)`: used as
        the categorical choice in sweeps."""
        return _label(self.name, self.params)


def _label(name: str, params: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, dict) and isinstance(v.get("name"), str):  # a value nested in another (a part of mix)
            return _label(v["name"], {k: x for k, x in v.items() if k != "name"})
        return str(v)

    return name if not params else f"{name}(" + ",".join(f"{k}={show(params[k])}" for k in sorted(params)) + ")"


def _axis(registry: Registry) -> Any:
    """A list of axis values whose names and parameters `registry` checks (errors land on the value's
    own path, e.g. `axes.losses.1.beta`), with no two values meaning the same thing."""

    def entry(v: AxisValue) -> AxisValue:
        registry.validate(v.name, v.params)
        return v

    def distinct(values: Any, handler: Any) -> list[AxisValue]:
        """Per-value errors plus duplicates among the values that are valid, all in one report."""
        try:
            return _no_duplicates(handler(values))
        except ValidationError as e:
            errors = [error_detail(err["type"], err["loc"], err["msg"], err["input"]) for err in e.errors()]
        if isinstance(values, list):
            bad = {err["loc"][0] for err in errors if err["loc"]}
            valid = [AxisValue.model_validate(v) if i not in bad else None for i, v in enumerate(values)]
            errors += _duplicates(valid)
        raise ValidationError.from_exception_data("axis", errors)

    def _no_duplicates(values: list[AxisValue]) -> list[AxisValue]:
        errors = _duplicates(values)
        if errors:
            raise ValidationError.from_exception_data("axis", errors)
        return values

    def _duplicates(values: Sequence[AxisValue | None]) -> list[InitErrorDetails]:
        seen: dict[str, int] = {}
        errors: list[InitErrorDetails] = []
        for i, v in enumerate(values):
            if v is None:
                continue
            key = json.dumps([v.name, registry.validate(v.name, v.params)], sort_keys=True, default=str)
            if key in seen:
                first = values[seen[key]]
                label = first.label if first is not None else "?"
                msg = f"duplicate: same {registry.kind} and effective parameters as item {seen[key]} ('{label}')"
                errors.append(error_detail("duplicate", (i,), msg, v.label))
            seen.setdefault(key, i)
        return errors

    return Annotated[list[Annotated[AxisValue, AfterValidator(entry)]], WrapValidator(distinct), Field(min_length=1)]


if TYPE_CHECKING:  # what the fields hold; pydantic builds the checking types below at run time
    TargetAxis: TypeAlias = list[AxisValue]
    ContextAxis: TypeAlias = list[AxisValue]
    LossAxis: TypeAlias = list[AxisValue]
    InputsAxis: TypeAlias = list[AxisValue]
else:
    TargetAxis, ContextAxis, LossAxis = _axis(TARGETS), _axis(MODIFICATIONS), _axis(LOSSES)
    InputsAxis = _axis(INPUTS)


def _uses_references(t: AxisValue) -> bool:
    """A target value that reads the dataset's answers: ground_truth, or a schedule with it as a phase."""
    if t.name == "ground_truth":
        return True
    return any(isinstance(v, dict) and v.get("name") == "ground_truth" for v in t.params.values())


class Axes(_Strict):
    targets: TargetAxis = Field(default_factory=lambda: [AxisValue(name="greedy")])
    contexts: ContextAxis = Field(default_factory=lambda: [AxisValue(name="empty")])
    losses: LossAxis = Field(default_factory=lambda: [AxisValue(name="self_target_nll")])
    inputs: InputsAxis = Field(
        default_factory=lambda: [AxisValue(name="train_split")],
        description="where the inputs z come from: train_split, self_study, paraphrase, mixed",
    )

    @model_validator(mode="before")
    @classmethod
    def _teacher_kind_needs_on_policy(cls, data: Any) -> Any:
        """`teacher: ema` moves the teacher during training, so only targets it scores during training take it."""
        values = data.get("targets") if isinstance(data, dict) else None

        def why(name: str) -> str:
            if TARGETS[name].phases is not None:
                return (
                    f"'{name}' takes the teacher kind in its on-policy phase: then: {{name: on_policy, teacher: ema}}"
                )
            return (
                f"'{name}' targets are precomputed once by the frozen teacher; the teacher kind (base, ema) belongs "
                "to targets it scores during training: on_policy, or a schedule's then: {name: on_policy, teacher: ema}"
            )

        errors = [
            error_detail("value_error", ("targets", i, "teacher"), why(v["name"]), v["teacher"])
            for i, v in enumerate(values if isinstance(values, list) else [])
            if isinstance(v, dict) and "teacher" in v and v.get("name") in TARGETS and v["name"] != "on_policy"
        ]
        if errors:
            raise ValidationError.from_exception_data("axes", errors)
        return data

    @model_validator(mode="after")
    def _references_need_train_items(self) -> Axes:
        """`ground_truth` trains on the dataset's answers, which generated inputs do not have."""
        generated = [f"inputs.{i} '{v.label}'" for i, v in enumerate(self.inputs) if INPUTS[v.name].generated]
        errors = [
            error_detail(
                "value_error",
                ("targets", i),
                f"{t.label} trains on the dataset's answers, which generated inputs have none of: "
                f"{', '.join(generated)}; use greedy or sample targets",
                t.label,
            )
            for i, t in enumerate(self.targets)
            if generated and _uses_references(t)
        ]
        if errors:
            raise ValidationError.from_exception_data("axes", errors)
        return self

    @model_validator(mode="after")
    def _sampled_needs_on_policy(self) -> Axes:
        """The axes cross: a loss that reads the teacher's log-probs of student-sampled tokens has nothing to
        read under a target strategy that never samples from the student."""
        off = [f"targets.{i} '{t.label}'" for i, t in enumerate(self.targets) if not TARGETS[t.name].uses_student]
        errors = [
            error_detail(
                "value_error",
                ("losses", i),
                f"{loss.label} estimates the KL on tokens the student samples, so every target value must sample "
                f"from the student (on_policy, or a schedule ending in it); not {', '.join(off)}",
                loss.label,
            )
            for i, loss in enumerate(self.losses)
            if off and teacher_needs(loss.name, loss.params).sampled_logprobs
        ]
        if errors:
            raise ValidationError.from_exception_data("axes", errors)
        return self


T = TypeVar("T")


class Range(_Strict, Generic[T]):
    """A hyperparameter searched by the sweep over [low, high]; the bounds obey the field's own limits."""

    low: T
    high: T
    log: bool = False
    step: Positive | None = None
    int_: bool = Field(False, alias="int")

    @model_validator(mode="after")
    def _order(self) -> Range:
        low, high = cast(float, self.low), cast(float, self.high)  # T is a number type (see _hyper)
        if low > high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("a range takes `log` or `step`, not both (Optuna cannot step on a log scale)")
        return self


class IntRange(Range[T], Generic[T]):
    """The range of an integer hyperparameter: always sampled as integers."""

    step: PositiveInt | None = None
    int_: bool = Field(True, alias="int")

    @field_validator("int_")
    @classmethod
    def _always_int(cls, v: bool) -> bool:
        if not v:
            raise ValueError("this hyperparameter is an integer, so its range is always sampled as integers")
        return v


class Choices(_Strict, Generic[T]):
    """A hyperparameter the sweep picks from a list; each choice obeys the field's own limits."""

    choices: list[T] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, v: list[T]) -> list[T]:
        """`1.0e-3` and `0.001` are one value: a repeat would weight it twice in the sweep."""
        seen: list[T] = []
        for x in v:
            if x in seen:
                raise ValueError(f"choices repeat: {x} is given twice; keep one")
            seen.append(x)
        return v


def _hyper(value: Any, rng: Any = Range) -> Any:
    """A hyperparameter: a fixed `value`, a `{low, high, log, int, step}` range or `{choices: [...]}`.

    The shape picks the model (a mapping with `choices` → Choices, another mapping → Range, else a fixed
    value), so a typo inside a range is an unknown field, not three failed guesses at a union."""
    ranged, chosen = rng[value], Choices[value]
    fixed_of, range_of, choices_of = TypeAdapter(value), TypeAdapter(ranged), TypeAdapter(chosen)

    def pick(v: Any, _handler: Any) -> Any:
        if isinstance(v, BaseModel):
            v = v.model_dump(by_alias=True)
        if not isinstance(v, dict):
            return fixed_of.validate_python(v)
        model, adapter = (chosen, choices_of) if "choices" in v else (ranged, range_of)
        try:
            return adapter.validate_python(v)
        except ValidationError as e:  # name the fields of the shape that was picked
            known = ", ".join(f.alias or n for n, f in model.model_fields.items())
            errors = [
                error_detail(err["type"], err["loc"], f"unknown field (known: {known})", err["input"])
                if err["type"] == "extra_forbidden"
                else error_detail(err["type"], err["loc"], err["msg"], err["input"])
                for err in e.errors()
            ]
            raise ValidationError.from_exception_data(model.__name__, errors) from None

    return Annotated[value | ranged | chosen, WrapValidator(pick)]


if TYPE_CHECKING:  # what the fields hold; pydantic builds the checking types below at run time
    PositiveHyper: TypeAlias = float | Range[Any] | Choices[Any]
    UnitHyper: TypeAlias = float | Range[Any] | Choices[Any]
    NonNegativeHyper: TypeAlias = float | Range[Any] | Choices[Any]
    PositiveIntHyper: TypeAlias = int | Range[Any] | Choices[Any]
    NonNegativeIntHyper: TypeAlias = int | Range[Any] | Choices[Any]
else:
    PositiveHyper, UnitHyper, NonNegativeHyper = _hyper(Positive), _hyper(UnitInterval), _hyper(NonNegative)
    PositiveIntHyper, NonNegativeIntHyper = _hyper(PositiveInt, IntRange), _hyper(NonNegativeInt, IntRange)


class Hyperparameters(_Strict):
    """Each value is fixed, a `{low, high, log}` range, or `{choices: [...]}`; the sweep samples them."""

    learning_rate: PositiveHyper = 1e-4
    epochs: PositiveIntHyper = 2
    batch_size: PositiveIntHyper = 8
    lora_rank: NonNegativeIntHyper = Field(0, description="0 = full fine-tune; > 0 = LoRA of that rank")
    train_inputs: PositiveIntHyper = Field(64, description="number of distillation inputs z from the train split")
    warmup_ratio: UnitHyper = 0.1
    weight_decay: NonNegativeHyper = 0.0

    def searched(self) -> dict[str, Range | Choices]:
        return {k: v for k, v in self if isinstance(v, Range | Choices)}


class Training(_Strict):
    max_new_tokens: Integer = Field(24, ge=1, description="teacher target length limit")
    stop_strings: list[str] | None = Field(
        None,
        description="where teacher targets and greedy answers end; None = the task's own generation_kwargs.until "
        "(what lm-eval generates to); a list overrides it",
    )
    top_k: Integer = Field(64, ge=1, description="teacher log-probs kept per position in the cache")
    grad_accum: Integer = Field(1, ge=1)
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "cosine"
    max_grad_norm: Positive = 1.0
    eval_every: Integer = Field(0, ge=0, description="steps between held-out KL checks (0 = once per epoch)")
    generation_batch_size: Integer = Field(16, ge=1)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


class Evaluation(_Strict):
    batch_size: Integer = Field(16, ge=1)
    heldout_inputs: Integer = Field(
        32, ge=1, description="validation inputs for held-out KL and greedy agreement (the pruner's signal)"
    )
    bootstrap: Integer = Field(
        1000, ge=100, description="bootstrap resamples (items x seeds) for the 95% intervals and paired tests"
    )


# Seeds are 32-bit unsigned (numpy's limit); more than 100 per configuration is a typo, not a study.
MAX_SEED = 2**32 - 1
MAX_SEEDS = 100

Objective = Literal["gap_closure", "student_score", "train_tokens", "wall_time_s"]


class Sweep(_Strict):
    sampler: Literal["tpe", "grid", "nsga2", "random"] = "tpe"
    n_trials: Integer = Field(4, ge=1, description="configurations to run (one Optuna trial each, all seeds inside)")
    seeds: Integer = Field(
        3,
        ge=1,
        le=MAX_SEEDS,
        description="training seeds per configuration: suite.seed, suite.seed + 1, ...; a seed changes data order, "
        "LoRA init, sampled targets and on-policy draws, nothing else; the objective is the mean over seeds",
    )
    timeout: Positive | None = Field(None, description="seconds after which no new trial starts")
    objectives: list[Objective] = Field(
        default_factory=lambda: list[Objective](["gap_closure"]),
        min_length=1,
        max_length=2,
        description="what the sweep optimises: a score's mean over seeds on the validation split, or a cost",
    )
    pruner: Literal["auto", "median", "none"] = Field(
        "auto",
        description="median: stop trials whose held-out KL is worse than the median at the same step; "
        "auto = median, except none for the grid sampler (an exhaustive grid wants every point finished)",
    )
    storage: str | None = Field(
        None, description="Optuna storage URL; default $HARNESS_STORAGE, else SQLite under work_dir"
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else SQLite under work_dir"
    )
    cache_dir: str | None = Field(
        None,
        description="teacher cache folder, may be shared by several machines (NFS); "
        "default $HARNESS_CACHE_DIR, else work_dir/cache",
    )

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, v: str | None) -> str | None:
        """An RDB URL Optuna can open: its scheme a SQLAlchemy dialect, its driver installed; nothing connects."""
        if v is not None:
            _check_database_url(v)
        return v

    @field_validator("objectives")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("objectives repeat")
        return v


def _check_database_url(url: str) -> None:
    """Raise ValueError (one line, no password) unless SQLAlchemy can build an engine for `url`.

    SQLAlchemy is imported only here, for a suite that names a storage: validate stays fast without one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError("not a database URL (e.g. sqlite:///optuna.db, postgresql://user@host/db)") from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        from sqlalchemy.dialects import __all__ as known

        scheme = parsed.drivername
        close = difflib.get_close_matches(parsed.get_backend_name(), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown database '{scheme}' in the URL (known: {', '.join(sorted(known))}){hint}") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise ValueError(
            f"the driver for '{parsed.drivername}' is not installed ({e.name or e}); install it or name another"
        ) from None


SaveStudent = Literal["none", "adapter", "best", "all"]


class Tracking(_Strict):
    save_student: SaveStudent = Field(
        "best",
        description="which trained students are kept: none; adapter = each seed's LoRA adapter as a run artifact; "
        "best = that, plus the study's best configuration (on validation) logged with MLflow's transformers flavour "
        "and registered as <suite>-student; all = every seed's student logged with the transformers flavour",
    )


class Suite(_Strict):
    name: str = Field(
        description="one safe path component (it names folders, the MLflow experiment and the registered model): "
        "letters, digits, _ . -, not starting with a dot, at most 100 characters",
    )
    description: str = ""
    seed: Integer = Field(0, ge=0, le=MAX_SEED, description="the first training seed (a 32-bit unsigned integer)")
    models: Models = Models()
    task: Task
    context: ContextSpec = ContextSpec()
    axes: Axes = Field(default_factory=Axes)
    hyperparameters: Hyperparameters = Hyperparameters()
    training: Training = Training()
    evaluation: Evaluation = Evaluation()
    sweep: Sweep = Sweep()
    tracking: Tracking = Tracking()
    work_dir: str = Field(".harness", description="caches, study and MLflow stores (relative to the cwd)")

    # Filled by load_suite, not by the user.
    source: str | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        """The name becomes a folder: `..`, `a/b` or a leading dot would put it somewhere else."""
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}", v):
            shown = repr(v) if len(v) <= 40 else repr(v[:37]) + "..."
            raise ValueError(
                "must be one path component: letters, digits, _ . -, not starting with a dot, "
                f"at most 100 characters (got {shown})"
            )
        return v

    @model_validator(mode="after")
    def _last_seed_fits(self) -> Suite:
        """The seeds run are seed .. seed + sweep.seeds - 1: the last must still be a 32-bit seed."""
        if self.seed + self.sweep.seeds - 1 > MAX_SEED:
            raise ValidationError.from_exception_data(
                "suite",
                [error_detail("value_error", ("seed",), f"seed + sweep.seeds - 1 is above {MAX_SEED}", self.seed)],
            )
        return self

    @model_validator(mode="after")
    def _learned_contexts_need_frozen_weights(self) -> Suite:
        """A learned c' (soft_prompt) trains virtual tokens on frozen weights: refused where every lora_rank the
        sweep can pick is > 0. Where it can also pick 0, the other points fail fast as invalid combinations."""
        rank = self.hyperparameters.lora_rank
        lowest = rank if isinstance(rank, int) else min(rank.choices) if isinstance(rank, Choices) else rank.low
        if lowest <= 0:
            return self
        errors = [
            error_detail(
                "value_error",
                ("axes", "contexts", i),
                f"{mod.label} trains virtual tokens on frozen weights, so it needs hyperparameters.lora_rank 0 "
                f"(it is {lowest if isinstance(rank, int) else f'at least {lowest}'})",
                mod.label,
            )
            for i, mod in enumerate(self.axes.contexts)
            if MODIFICATIONS[mod.name].learned
        ]
        if errors:
            raise ValidationError.from_exception_data("suite", errors)
        return self

    @model_validator(mode="after")
    def _demo_seeded_inputs_need_demos(self) -> Suite:
        """`self_study` (or `mixed`) with `seed_prompt: demos` continues a list of c's demonstration inputs."""
        errors = [
            error_detail(
                "value_error",
                ("axes", "inputs", i, "seed_prompt"),
                f"{v.label} continues a list of c's demonstration inputs, so it needs context.demos >= 1 (it is 0)",
                "demos",
            )
            for i, v in enumerate(self.axes.inputs)
            if v.params.get("seed_prompt") == "demos" and self.context.demos == 0
        ]
        if errors:
            raise ValidationError.from_exception_data("suite", errors)
        return self

    @property
    def suite_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()

    def task_dir(self) -> Path | None:
        return (self.suite_dir / self.task.path).resolve() if self.task.path else None

    def control_dir(self) -> Path | None:
        c = self.task.control
        return (self.suite_dir / c.path).resolve() if c and c.path else None

    def content_hash(self) -> str:
        """Hash of what decides the trials' results: same hash, same study (resumed, not restarted).

        Leaves out what only says how long to run or where to store (n_trials, timeout, storage,
        tracking URI, cache_dir, work_dir, device, which students are kept) and the description."""
        data = self.model_dump(mode="json", by_alias=True, exclude=_NOT_HASHED)
        for part in ("system_prompt", "document"):  # absent parts leave the hash of a suite written before them
            if data["context"][part] is None:
                del data["context"][part]
        if data["axes"]["inputs"] == [{"name": "train_split"}]:
            del data["axes"]["inputs"]
        if any(data["context"].get(part) for part in ("system_prompt", "document")):
            data["context_texts"] = sources.digest(self.context_texts())  # the files' bytes, not their names
        blob = json.dumps(data, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def context_texts(self) -> dict[str, str]:
        """The system prompt and document of c as text (read from their files); a SourceError names the field."""
        base = self.suite_dir
        c = self.context
        return {
            part: sources.read(src, f"context.{part}", base)
            for part, src in (("system_prompt", c.system_prompt), ("document", c.document))
            if src is not None
        }

    def resolved_yaml(self) -> str:
        """The suite with every default filled in, as logged with each trial: store passwords redacted."""
        return redact(yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False))

    def training_seeds(self) -> list[int]:
        """The seeds every configuration is trained with: `seed`, `seed + 1`, ... (`sweep.seeds` of them)."""
        return [self.seed + i for i in range(self.sweep.seeds)]

    def fast(self) -> Suite:
        """The `--fast` variant: the same axes and statistics on fewer items, seeds and configurations.

        Capped, never raised: 2 seeds (intervals and paired tests still need more than one), FAST items
        scored per split, FAST held-out inputs and configurations. Named `<name>-fast`, so its study, MLflow
        experiment and results folder never mix with the full suite's.
        """
        cap = lambda v, n: n if v is None else min(v, n)  # noqa: E731
        return self.model_copy(
            update={
                "name": f"{self.name}-fast",
                "task": self.task.model_copy(
                    update={
                        "eval_limit": cap(self.task.eval_limit, FAST["test_items"]),
                        "validation_limit": cap(self.task.validation_limit, FAST["validation_items"]),
                    }
                ),
                "evaluation": self.evaluation.model_copy(
                    update={"heldout_inputs": min(self.evaluation.heldout_inputs, FAST["heldout_inputs"])}
                ),
                "sweep": self.sweep.model_copy(
                    update={
                        "seeds": min(self.sweep.seeds, FAST["seeds"]),
                        "n_trials": min(self.sweep.n_trials, FAST["configurations"]),
                    }
                ),
            }
        )


# What `--fast` caps a suite to (Suite.fast): enough for intervals and a paired test, in minutes.
FAST = {"seeds": 2, "test_items": 80, "validation_items": 40, "heldout_inputs": 16, "configurations": 4}


_NOT_HASHED: dict[str, Any] = {
    "description": True,
    "tracking": True,  # what is kept of a trial, not what it measures
    "work_dir": True,
    "models": {"device"},
    "task": {"allow_code"},  # permission to run the task's code, not what it measures
    "sweep": {"n_trials", "timeout", "storage", "tracking_uri", "cache_dir"},
}


# ----------------------------------------------------------------------------- reading a suite file


def load_suite(path: str | Path, *, resources: bool = False) -> Suite:
    """Read and validate a suite; every problem becomes one line of the SuiteError, naming file and field.

    `resources=True` also checks that the model names and the task names resolve (no weights loaded):
    what `validate` and `run` need before anything is started."""
    p = Path(path)
    raw = _read_yaml(p)
    try:
        suite = Suite.model_validate({**raw, "source": str(p.resolve())})
    except ValidationError as e:
        raise SuiteError([f"{p}: {line}" for line in _error_lines(e)]) from None
    problems = _folder_problems(suite)
    if resources and not problems:
        problems = _model_problems(suite) + _task_problems(suite)
    if problems:
        raise SuiteError([f"{p}: {line}" for line in problems])
    return suite


def _duplicate_keys(node: yaml.Node | None, path: tuple[str, ...] = ()) -> list[str]:
    """PyYAML keeps the last of two equal keys without a word; a suite must say which it means."""
    problems = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                where = f"lines {seen[key]} and {line}" if line != seen[key] else f"twice on line {line}"
                problems.append(f"{'.'.join((*path, key))}: duplicate key ({where}); keep one")
            seen.setdefault(key, line)
            problems += _duplicate_keys(value_node, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, (*path, str(i)))
    return problems


# A suite is a few kilobytes; the caps keep a hostile or mistaken file from costing minutes or memory.
MAX_SUITE_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
MAX_YAML_VALUES = 20_000  # a suite holds a few hundred; the cap bounds what is composed and validated
# libyaml when PyYAML has it: a 1 MiB suite then parses in milliseconds (the pure-Python parser takes seconds).
_SuiteLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_shape_problem(text: str, *, suite: bool = True) -> str | None:
    """Anchors, aliases and deep nesting, found from the parser's events before anything is composed.

    An alias can expand a few hundred bytes into billions of nodes (or refer to itself) and the composer
    recurses once per level; a suite needs neither, so both are refused with the line they are on.
    `suite=False` (a task YAML, lm-eval's format): only the nesting is capped."""
    depth = values = 0
    for event in yaml.parse(text, Loader=_SuiteLoader):
        line = event.start_mark.line + 1 if event.start_mark else 0
        if suite and isinstance(event, yaml.NodeEvent):
            values += 1
            if values > MAX_YAML_VALUES:
                return f"line {line}: more than {MAX_YAML_VALUES} YAML values; a suite holds a few hundred"
        if suite and (isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None):
            return (
                f"line {line}: YAML anchors and aliases (&name, *name, <<) are not allowed in a suite; "
                "write the values out"
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                return f"line {line}: nested more than {MAX_YAML_DEPTH} levels deep"
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _read_yaml(p: Path) -> dict[str, Any]:
    if p.is_dir():
        raise SuiteError(f"{p}: is a folder; give a suite YAML file")
    try:
        size = p.stat().st_size
        if size > MAX_SUITE_BYTES:
            raise SuiteError(f"{p}: {size} bytes; a suite file is at most {MAX_SUITE_BYTES} bytes (1 MiB)")
        with p.open("rb") as f:  # at most the cap: a device or pipe (size 0) may never end
            data = f.read(MAX_SUITE_BYTES + 1)
        if len(data) > MAX_SUITE_BYTES:
            raise SuiteError(f"{p}: more than {MAX_SUITE_BYTES} bytes; a suite file is at most 1 MiB")
    except FileNotFoundError:
        raise SuiteError(f"{p}: no such suite file") from None
    except OSError as e:
        raise SuiteError(f"{p}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SuiteError(f"{p}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8") from None
    try:
        shape = _yaml_shape_problem(text)
        if shape:
            raise SuiteError(f"{p}: {shape}")
        loader = _SuiteLoader(text)  # composed once: the duplicate-key check reads the nodes it is built from
        try:
            node = loader.get_single_node()
            duplicates = _duplicate_keys(node)
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise SuiteError(f"{p}:{where} invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if duplicates:
        raise SuiteError([f"{p}: {line}" for line in duplicates])
    if raw is None:
        raise SuiteError(f"{p}: empty file; a suite needs at least `name` and `task`")
    if not isinstance(raw, dict):
        raise SuiteError(f"{p}: a suite must be a mapping of fields, got {type(raw).__name__}")
    return raw


# Errors whose message already says what was wrong with the value.
_NO_VALUE = {"missing", "value_error", "extra_forbidden", "unknown_parameter", "unknown_name", "duplicate"}


def _error_lines(e: ValidationError) -> list[str]:
    """One `field.path: message` line per error, with the offending value where it helps."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and not msg.startswith("unknown field"):
            known = _known_fields(err["loc"][:-1])
            msg = "unknown field" + (f" (known: {', '.join(known)})" if known else "")
        elif isinstance(err["input"], str | int | float) and err["type"] not in _NO_VALUE:
            shown = repr(err["input"])
            msg += f" (got {shown if len(shown) <= 40 else shown[:37] + '...'})"
        lines.append(f"{loc}: {msg}")
    return lines


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model at `loc` (for "unknown field" errors), when one model sits there."""
    model: Any = Suite
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return []
        model = _only_model(model.model_fields[part].annotation)
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or model.model_config.get("extra") != "forbid":
        return []
    return [f.alias or name for name, f in model.model_fields.items() if name != "source"]


def _only_model(annotation: Any) -> Any:
    """The one pydantic model inside `annotation` (through Optional, list, Annotated), else None."""
    found = []
    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            found.append(a)
        else:
            stack.extend(getattr(a, "__args__", ()) or ())
            if hasattr(a, "__origin__") and getattr(a, "__metadata__", None) is not None:
                stack.append(a.__origin__)
    return found[0] if len(found) == 1 else None


def _folder_problems(suite: Suite) -> list[str]:
    problems = []
    for part in ("system_prompt", "document"):
        src = getattr(suite.context, part)
        if src is not None:
            try:
                sources.read(src, f"context.{part}", suite.suite_dir)
            except sources.SourceError as e:
                problems.append(str(e))
    task_dir, control_dir = suite.task_dir(), suite.control_dir()
    if suite.task.path and not (task_dir and task_dir.is_dir()):
        problems.append(f"task.path: folder {suite.task.path} not found next to the suite")
    control = suite.task.control
    if control and control.path and not (control_dir and control_dir.is_dir()):
        problems.append(f"task.control.path: folder {control.path} not found next to the suite")
    return problems


# ----------------------------------------------------------------------------- models and tasks exist


def _model_problems(suite: Suite) -> list[str]:
    problems = []
    for field, name in (("models.teacher", suite.models.teacher), ("models.student", suite.models.student)):
        if field == "models.student" and name == "same":
            continue
        if name in MODEL_ALIASES or os.path.isdir(os.path.expanduser(name)) or _in_hf_cache(name):
            continue
        close = difflib.get_close_matches(name, MODEL_ALIASES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.append(
            f"{field}: unknown model '{name}': not an alias ({', '.join(MODEL_ALIASES)}), a local folder, "
            f"or a hub id in the local Hugging Face cache (nothing is downloaded){hint}"
        )
    return problems


def _in_hf_cache(repo_id: str) -> bool:
    """A hub id whose config is in the local Hugging Face cache (offline: the cache is all there is)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id (HFValidationError)
        return False


class TaskYamlLoader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs far enough to see their `task:` name: `!function` tags become None, so a
    stray YAML in a task folder never runs its Python."""


TaskYamlLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _task_problems(suite: Suite) -> list[str]:
    problems = []
    control = suite.task.control
    for field, task, folder in (("task", suite.task, suite.task_dir()), ("task.control", control, suite.control_dir())):
        if task is None:
            continue
        if folder is not None:
            problems += _local_task_problems(field, task, folder, allow_code=suite.task.allow_code)
        else:
            problems += _registered_task_problems(field, task.name)
    return problems


def code_in_task_yaml(path: Path, _seen: frozenset[Path] = frozenset()) -> str | None:
    """Where a task YAML (or a YAML it includes) names Python with `!function`, e.g. `parity.yaml line 4:
    !function`; None if it names none. Read from the parser's events: nothing runs. A file that cannot be
    read is lm-eval's to report."""
    path = path.resolve()
    if path in _seen or not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
        # The resolved tags of the parser lm-eval uses (libyaml when present), not the tokens: `!<!function>`
        # and a `%TAG` shorthand spell it too.
        for event in yaml.parse(text, Loader=_SuiteLoader):
            if getattr(event, "tag", None) == "!function":
                line = f" line {event.start_mark.line + 1}" if event.start_mark else ""
                return f"{path.name}{line}: !function"
        cfg = yaml.load(text, Loader=TaskYamlLoader)  # noqa: S506 (runs nothing)
    except (yaml.YAMLError, UnicodeDecodeError, OSError, RecursionError):
        return None
    includes = cfg.get("include") if isinstance(cfg, dict) else None
    for inc in includes if isinstance(includes, list) else [includes] if includes else []:
        if isinstance(inc, str):
            found = code_in_task_yaml(path.parent / inc, _seen | {path})
            if found:
                return found
    return None


def code_refused(field: str, where: str) -> str:
    """The one line for a task whose YAML names Python the suite has not allowed to run."""
    return f"{field}.path: {where} names Python that lm-eval would run; to allow it, set `task.allow_code: true`"


def _local_task_problems(field: str, task: Task | ControlTask, folder: Path, *, allow_code: bool = False) -> list[str]:
    """The folder must hold a task YAML with `task: name` (what `tasks.task_config` will load), a
    metric the suite names must be one the task declares, and Python it names must be allowed."""
    name, names = task.name, []
    for f in sorted(folder.glob("*.yaml")):
        try:
            text = f.read_text(encoding="utf-8")
            deep = _yaml_shape_problem(text, suite=False)  # 3,000 levels took 5 s to end in a RecursionError
            if deep:
                return [f"{field}.path: {f.name}: {deep}"]
            cfg = yaml.load(text, Loader=TaskYamlLoader)  # noqa: S506
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            return [f"{field}.path: {f.name}: cannot read the task YAML ({str(e).splitlines()[0]})"]
        if not isinstance(cfg, dict):
            continue
        if cfg.get("task") == name:
            code = None if allow_code else code_in_task_yaml(f)
            if code:
                return [code_refused(field, code)]
            if "num_fewshot" in cfg:
                return [f"{field}.path: {f.name}: num_fewshot: remove it; the suite's context sets the demonstrations"]
            declared = [m.get("metric") for m in cfg.get("metric_list") or [] if isinstance(m, dict)]
            if task.metric and declared and task.metric not in declared:
                known = ", ".join(map(str, declared))
                return [f"{field}.metric: '{task.metric}' is not a metric of task {name} (it declares: {known})"]
            return []
        if isinstance(cfg.get("task"), str):
            names.append(cfg["task"])
    return [f"{field}.name: no task YAML with 'task: {name}' in {task.path} (found: {', '.join(names) or 'none'})"]


@functools.lru_cache(maxsize=1)
def lm_eval_index() -> Any:
    """lm-eval's TaskManager over its registered tasks, built once per process (~10 s); `tasks` reuses it.

    lm-eval is imported here, not at the top, so that validating a suite of local tasks never loads it."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _registered_task_problems(field: str, name: str) -> list[str]:
    """A registered lm-eval task: lm-eval's own index knows the name."""
    tm = lm_eval_index()
    if name in tm.all_subtasks:
        return []
    if name in tm.all_tasks:
        return [f"{field}.name: '{name}' is an lm-eval group or tag; name one task"]
    close = difflib.get_close_matches(name, tm.all_subtasks, n=3)
    hint = f" (close: {', '.join(close)})" if close else ""
    return [f"{field}.name: unknown lm-eval task '{name}' and no `path` to a local task folder{hint}"]
