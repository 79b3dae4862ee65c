"""Benchmark harness for context distillation (distribution `context-distill-harness`, import name `harness`).

`harness.run(suite)` and `harness.load_student(suite)` (see `harness.api`) are imported on first use: `import
harness` stays light, so `harness validate` and `harness --version` never pay for torch, lm-eval or MLflow.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_student", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "load_student"):
        from harness import api

        return getattr(api, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
