"""Plain helpers for the tests (imported as a normal module; fixtures stay in conftest.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import yaml

from harness import models
from harness.config import HyperParams, train_settings
from harness.contexts import Context
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


# Inputs of different lengths after one shared chat context, so padding and the prefix reuse are exercised.
CAPITAL_QUERIES = ["Germany", "Italy", "Spain and Portugal", "UK", "Peru", "a", "Chile", "Mali and Niger"]


def sharpen(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Larger random weights (in place), so the tiny model's distributions are far from uniform and outputs
    depend on the prompt; a check that passes on near-uniform logits proves little."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def sharp_tiny() -> models.LoadedModel:
    """A private tiny model, sharpened (seed 1)."""
    m = models.load("tiny-random", device="cpu")
    sharpen(m.model)
    return m


def capital_messages(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The capitals chat context: a system instruction, then one user/assistant turn per demonstration."""
    msgs = [{"role": "system", "content": "Answer with the capital city only."}]
    for a, b in pairs:
        msgs += [{"role": "user", "content": a}, {"role": "assistant", "content": b}]
    return msgs


PARITY_INSTRUCTION = "Answer E if the number is even and O if it is odd."


def parity_prompts(tok: Any, parity: Any, n: int) -> tuple[list[list[int]], list[list[int]], list[Any]]:
    """The first n parity train docs as the teacher sees them (instruction + 4 demos), as the student sees them
    (c' empty), and the docs themselves."""
    docs = parity.train_docs(n)
    t_prompts = [
        tok.encode(parity.render(d, Context(PARITY_INSTRUCTION, 4), tok), add_special_tokens=False) for d in docs
    ]
    s_prompts = [tok.encode(parity.render(d, Context(None, 0), tok), add_special_tokens=False) for d in docs]
    return t_prompts, s_prompts, docs
