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


def pm(v: Any, se: Any, digits: int = 3) -> str:
    """value ± stderr, or just the value where the stderr is unknown."""
    if not _isnum(v):
        return "–"
    return f"{v:.{digits}f} ± {se:.{digits}f}" if _isnum(se) else f"{v:.{digits}f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table written by hand (tabulate is not one of our dependencies)."""

    def cell(v: Any) -> str:
        return (v if isinstance(v, str) else fmt(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def mean_se(values: pd.Series, own_se: pd.Series) -> tuple[float, float]:
    """Mean and its stderr across trials; one trial → that trial's own bootstrap stderr."""
    v = values.astype(float).dropna()
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v.iloc[0]), float(own_se.astype(float).loc[v.index[0]])
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


def _col_mean(df: pd.DataFrame, col: str) -> float:
    return float(df[col].astype(float).mean()) if col in df and len(df) and df[col].notna().any() else math.nan


def axis_table(df: pd.DataFrame, axis: str) -> str:
    """Per value of one axis: how many trials completed and how well they closed the gap, at what cost."""
    done = completed(df)
    rows = []
    for value in sorted(df[axis].dropna().astype(str).unique()):
        mine, ok = df[df[axis].astype(str) == value], done[done[axis].astype(str) == value]
        best = ok.loc[ok["gap_closure"].astype(float).idxmax()] if len(ok) else None
        m, se = mean_se(ok["gap_closure"], ok.get("gap_closure_stderr", pd.Series(math.nan, index=ok.index)))
        rows.append(
            [
                value,
                f"{len(ok)} / {len(mine)}",
                pm(best["gap_closure"], best.get("gap_closure_stderr")) if best is not None else "–",
                pm(m, se),
                fmt_metric("student_score", _col_mean(ok, "student_score")),
                fmt_metric("context_tokens_saved", _col_mean(ok, "context_tokens_saved")),
                fmt_metric("train_tokens", _col_mean(ok, "train_tokens")),
                fmt_metric("wall_time_s", _col_mean(ok, "wall_time_s")),
            ]
        )
    headers = [
        axis,
        "completed / trials",
        "best gap closure",
        "mean gap closure",
        "mean student score",
        "mean context tokens saved",
        "mean training tokens",
        "mean wall time (s)",
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
