"""Plain helpers for the tests (imported as a normal module; fixtures stay in conftest.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from harness.config import HyperParams, train_settings
from harness.spec import Hyperparameters, Training
from harness.train import TrainSettings

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "suites"
PARITY = SUITES / "tasks" / "parity"


def write_suite(folder: Path, base: str = "smoke.yaml", **overrides: object) -> Path:
    """A copy of a shipped suite with its task path made absolute, work_dir in `folder`, fields overridden."""
    raw = yaml.safe_load((SUITES / base).read_text())
    raw["task"]["path"] = str((SUITES / raw["task"]["path"]).resolve())
    raw["work_dir"] = str(folder / ".harness")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def settings(**overrides: object) -> TrainSettings:
    """The training loop's settings from the suite defaults (they live only in spec.py), some overridden."""
    hp = HyperParams.from_values(dict(Hyperparameters()))
    return dataclasses.replace(train_settings(hp, Training(), seed=0), **overrides)
