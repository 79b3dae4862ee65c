"""Cells and markdown tables: how numbers are printed, and the per-axis comparison table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.metrics import METRICS
from harness.report.runs import AXES, completed


def _isnum(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v: Any, digits: int = 3) -> str:
    """One table cell: '–' for missing, integers without decimals, other numbers to `digits` places."""
    if v is None or (isinstance(v, float | np.floating) and not math.isfinite(v)) or v is pd.NA:
        return "–"
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return str(int(v))
    if _isnum(v):
        return f"{int(v)}" if float(v).is_integer() and abs(v) >= 1 else f"{float(v):.{digits}f}"
    return str(v)


def fmt_metric(name: str, v: Any) -> str:
    """A metric's value to the decimals its definition gives."""
    return fmt(v, METRICS[name].digits)


def fmt_param(v: Any) -> str:
    """A parameter as the user wrote it: 0.001, 3e-05, 8; not 0.001000."""
    if _isnum(v):
        return str(int(v)) if float(v).is_integer() else f"{float(v):g}"
    return fmt(v)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table written by hand (tabulate is not one of our dependencies)."""

    def cell(v: Any) -> str:
        return (v if isinstance(v, str) else fmt(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def ci(v: Any, low: Any, high: Any, digits: int = 3) -> str:
    """value [low, high]: a figure with its 95% interval, or just the value where the interval is unknown."""
    if not _isnum(v):
        return "–"
    v = float(v) + 0.0  # -0.0 → 0.0
    if _isnum(low) and _isnum(high):
        return f"{v:.{digits}f} [{float(low) + 0.0:.{digits}f}, {float(high) + 0.0:.{digits}f}]"
    return f"{v:.{digits}f}"


def _col_mean(df: pd.DataFrame, col: str) -> float:
    return float(df[col].astype(float).mean()) if col in df and len(df) and df[col].notna().any() else math.nan


def _spread(df: pd.DataFrame, col: str) -> str:
    """mean (min – max) over configurations: a description of the axis value's trials, not an interval."""
    v = df[col].astype(float).dropna() if col in df else pd.Series(dtype=float)
    if v.empty:
        return "–"
    return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ({v.min():.3f} – {v.max():.3f})"


def axis_table(df: pd.DataFrame, axis: str) -> str:
    """Per value of one axis: how many configurations completed, their validation and test gap closure, cost."""
    done = completed(df)
    rows = []
    for value in sorted(df[axis].dropna().astype(str).unique()):
        mine, ok = df[df[axis].astype(str) == value], done[done[axis].astype(str) == value]
        rows.append(
            [
                value,
                f"{len(ok)} / {len(mine)}",
                _spread(ok, "validation_gap_closure"),
                _spread(ok, "test_gap_closure"),
                fmt_metric("test_student_score", _col_mean(ok, "test_student_score")),
                fmt_metric("context_tokens_saved", _col_mean(ok, "context_tokens_saved")),
                fmt_metric("train_tokens", _col_mean(ok, "train_tokens")),
                fmt_metric("wall_time_s", _col_mean(ok, "wall_time_s")),
            ]
        )
    headers = [
        axis,
        "completed / configurations",
        "validation gap closure, mean (min – max)",
        "test gap closure, mean (min – max)",
        "mean test student score",
        "mean context tokens saved",
        "mean training tokens",
        "mean wall time per seed (s)",
    ]
    return md_table(headers, rows)


def varying_hps(df: pd.DataFrame) -> tuple[list[str], dict[str, Any]]:
    """Hyperparameter columns that differ between trials, and the fixed ones with their value."""
    hps = [c for c in df.columns if c.startswith("hp.")]
    vary = [c for c in hps if df[c].astype(str).nunique(dropna=False) > 1]
    fixed = {c: df[c].dropna().iloc[0] for c in hps if c not in vary and df[c].notna().any()}
    return vary, fixed


def trial_label(row: pd.Series) -> str:
    return f"#{fmt(row['trial'])} " + " / ".join(str(row.get(a, "?")) for a in AXES)
