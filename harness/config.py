"""One point of the sweep: a value per axis plus typed hyperparameters, and the training settings they make.

The defaults live only in the suite spec (spec.py); these types hold the values a trial actually uses.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.spec import AxisValue, Suite, Training
from harness.train import TrainSettings


@dataclass(frozen=True)
class HyperParams:
    """One trial's hyperparameters, each a single value. The names are the suite's `hyperparameters` (a test
    keeps the two in step); the defaults live only in the spec."""

    learning_rate: float
    epochs: int
    batch_size: int
    lora_rank: int
    train_inputs: int
    warmup_ratio: float
    weight_decay: float

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> HyperParams:
        """Fixed or sampled values (YAML and Optuna give int, float or str) → each field's type."""
        hints = typing.get_type_hints(cls)
        if set(values) != set(hints):
            raise ValueError(f"hyperparameters: expected {sorted(hints)}, got {sorted(values)}")
        out: dict[str, Any] = {}
        for name, value in values.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"hyperparameters.{name}: {value!r} is not a number") from None
            if hints[name] is int:
                if not number.is_integer():
                    raise ValueError(f"hyperparameters.{name}: {value!r} is not a whole number")
                out[name] = int(number)
            else:
                out[name] = number
        return cls(**out)


def train_settings(hp: HyperParams, training: Training, seed: int) -> TrainSettings:
    """The training loop's settings: this trial's hyperparameters plus the suite's fixed `training` block."""
    return TrainSettings(
        learning_rate=hp.learning_rate,
        epochs=hp.epochs,
        batch_size=hp.batch_size,
        warmup_ratio=hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        grad_accum=training.grad_accum,
        scheduler=training.scheduler,
        max_grad_norm=training.max_grad_norm,
        eval_every=training.eval_every,
        dtype=training.dtype,
        seed=seed,
    )


DEFAULT_INPUTS = AxisValue(name="train_split")


@dataclass(frozen=True)
class TrialConfig:
    """One point of the sweep: a value per axis plus concrete hyperparameters."""

    target: AxisValue
    context: AxisValue
    loss: AxisValue
    hp: HyperParams
    inputs: AxisValue = DEFAULT_INPUTS  # where z comes from; the train split unless the suite says otherwise

    @property
    def inputs_label(self) -> str | None:
        """The inputs axis value where it is not the default train split (run names and labels show it then)."""
        return None if self.inputs == DEFAULT_INPUTS else self.inputs.label

    def params(self) -> dict[str, Any]:
        """Flat parameter names for tracking: axis.* labels, axis params, and hp.*; `inputs` where it is not
        the train split (a study written before the axis keeps its parameters)."""
        out: dict[str, Any] = {"target": self.target.label, "context": self.context.label, "loss": self.loss.label}
        axes = [("target", self.target), ("context", self.context), ("loss", self.loss)]
        if self.inputs_label is not None:
            out["inputs"] = self.inputs_label
            axes.append(("inputs", self.inputs))
        for axis, v in axes:
            out[f"{axis}.name"] = v.name
            for k, p in v.params.items():
                out[f"{axis}.{k}"] = p
        out.update({f"hp.{k}": v for k, v in dataclasses.asdict(self.hp).items()})
        return out


def fixed_config(suite: Suite) -> TrialConfig:
    """The single configuration of a suite that fixes one value per axis and every hyperparameter."""
    ax = suite.axes
    if any(len(v) != 1 for v in (ax.targets, ax.contexts, ax.losses, ax.inputs)) or suite.hyperparameters.searched():
        raise ValueError("suite sweeps several values; run it as a study")
    return TrialConfig(
        ax.targets[0], ax.contexts[0], ax.losses[0], HyperParams.from_values(dict(suite.hyperparameters)), ax.inputs[0]
    )
