"""summary.md: provenance, reference scores, best configuration, per-axis tables, all trials, plots."""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.metrics import METRICS
from harness.report.runs import AXES, TAGS, best_trials
from harness.report.tables import axis_table, fmt, fmt_metric, fmt_param, md_table, pm, varying_hps
from harness.spec import Suite


def _provenance_md(p: dict[str, Any], df: pd.DataFrame) -> list[str]:
    states = df["state"].value_counts()
    counts = ", ".join(f"{n} {s.lower()}" for s, n in states.items())
    m = p["report_machine"]
    rows = [
        ["suite", f"`{p['suite']}` (content hash `{p['suite_hash']}`)"],
        ["study", f"`{p['study']}`, objective{'s' if len(p['objectives']) > 1 else ''}: {', '.join(p['objectives'])}"],
        ["task / teacher / student", f"{p['task']} / {p['teacher']} / {p['student']}"],
        ["trials", f"{len(df)} recorded ({counts})"],
        ["trials ran", f"{p['trials_first_start'] or '?'} → {p['trials_last_end'] or '?'}"],
        ["git commit (trials)", ", ".join(f"`{c}`" for c in p["git_commit_trials"]) or "unknown"],
        ["git commit (report)", f"`{p['git_commit_report']}`"],
        [
            "trials machine / device",
            f"{', '.join(p['trials_machine']) or '?'} / {', '.join(p['trials_device']) or '?'}",
        ],
        ["report date (UTC)", p["report_date"]],
        ["report machine", f"{m['cpu']} ({m['cpu_count']} cores), GPU: {m['gpu']}, {m['platform']}"],
        ["python", p["python"]],
        ["packages", ", ".join(f"{k} {v}" for k, v in p["packages"].items())],
        ["MLflow store", f"`{p['mlflow_tracking_uri']}`"],
        ["Optuna storage", f"`{p['optuna_storage']}`"],
    ]
    return [md_table(["", ""], rows)]


def _references_md(df: pd.DataFrame) -> list[str]:
    out = ["## Reference scores", ""]
    have = df[df.get("teacher_score", pd.Series(dtype=float)).notna()] if "teacher_score" in df else df.iloc[0:0]
    if have.empty:
        return [*out, "No trial reached scoring.", ""]
    t = have.iloc[0]
    out += [
        f"Teacher (base model with the full context c): **{pm(t['teacher_score'], t.get('teacher_stderr'))}**",
        "",
        "Baseline (base model with the shorter context c', no training), per context modification:",
        "",
    ]
    rows = []
    for ctx, grp in sorted(have.groupby(have["context"].astype(str)), key=lambda g: g[0]):
        r = grp.iloc[0]
        rows.append(
            [
                ctx,
                pm(r.get("baseline_score"), r.get("baseline_stderr")),
                fmt_metric("context_tokens_saved", r.get("context_tokens_saved")),
            ]
        )
    return [*out, md_table(["context", "baseline score", "context tokens saved per query"], rows), ""]


def _best_md(df: pd.DataFrame) -> list[str]:
    out = ["## Best configuration", ""]
    best = best_trials(df, 1)
    if best.empty:
        return [*out, "No completed trial with a defined gap closure yet.", ""]
    b = best.iloc[0]
    out += [
        f"Trial **#{fmt(b['trial'])}**: target `{b['target']}`, context `{b['context']}`, loss `{b['loss']}` — "
        f"gap closure **{pm(b['gap_closure'], b.get('gap_closure_stderr'))}** "
        f"(student {pm(b.get('student_score'), b.get('student_stderr'))}, "
        f"teacher {pm(b.get('teacher_score'), b.get('teacher_stderr'))}, "
        f"baseline {pm(b.get('baseline_score'), b.get('baseline_stderr'))}).",
        "",
    ]
    params = [c for c in df.columns if c in AXES or "." in c and c.split(".")[0] in (*AXES, "hp")]
    params = [c for c in params if c not in TAGS and not c.startswith("harness.")]
    out += [md_table(["parameter", "value"], [[p, fmt_param(b[p])] for p in params if not pd.isna(b[p])]), ""]
    metrics = [m for m in METRICS if m in df and not pd.isna(b[m])]
    out += [md_table(["metric", "value"], [[m, fmt(b[m], METRICS[m].digits)] for m in metrics]), ""]
    return out


def _trials_md(df: pd.DataFrame) -> list[str]:
    vary, fixed = varying_hps(df)
    out = ["## All trials", ""]
    if fixed:
        out += [
            "Fixed hyperparameters: "
            + ", ".join(f"`{k.removeprefix('hp.')}` = {fmt_param(v)}" for k, v in fixed.items()),
            "",
        ]
    control = "control_forgetting" in df and df["control_forgetting"].notna().any()
    headers = [
        "#",
        "state",
        *AXES,
        *(v.removeprefix("hp.") for v in vary),
        "gap closure",
        "student score",
        *(["forgetting on the control task"] if control else []),
        "context tokens saved",
        "wall time (s)",
    ]
    rows = [
        [
            fmt(r["trial"]),
            r["state"],
            *(r.get(a) for a in AXES),
            *(fmt_param(r[v]) for v in vary),
            pm(r.get("gap_closure"), r.get("gap_closure_stderr")),
            fmt_metric("student_score", r.get("student_score")),
            *([pm(r.get("control_forgetting"), r.get("control_forgetting_stderr"))] if control else []),
            fmt_metric("context_tokens_saved", r.get("context_tokens_saved")),
            fmt_metric("wall_time_s", r.get("wall_time_s")),
        ]
        for _, r in df.iterrows()
    ]
    out += [md_table(headers, rows), ""]
    bad = df[df["state"] != "COMPLETE"]
    out += ["## Failed and pruned trials", ""]
    if bad.empty:
        out += ["None.", ""]
    else:
        out += [
            md_table(
                ["#", "state", "configuration", "reason"],
                [
                    [
                        fmt(r["trial"]),
                        r["state"],
                        " / ".join(str(r.get(a)) for a in AXES),
                        r["reason"] or "(no reason recorded)",
                    ]
                    for _, r in bad.iterrows()
                ],
            ),
            "",
        ]
    return out


def summary_md(suite: Suite, df: pd.DataFrame, prov: dict[str, Any], plots: dict[str, str | None]) -> str:
    """The human-readable report: provenance, references, best configuration, per-axis tables, all trials, plots."""
    out = [f"# Context distillation report: `{suite.name}`", ""]
    if suite.description:
        out += [suite.description.strip(), ""]
    out += _provenance_md(prov, df) + [""]
    out += _references_md(df)
    out += _best_md(df)
    out += [
        "## By axis",
        "",
        "Gap closure over completed trials: best trial ± its bootstrap stderr; mean ± stderr across trials "
        "(a single trial shows its own bootstrap stderr).",
        "",
    ]
    for axis in AXES:
        if axis in df:
            out += [f"### {axis}", "", axis_table(df, axis), ""]
    out += _trials_md(df)
    out += ["## Plots", ""]
    for name, skipped in plots.items():
        title = name.removesuffix(".png").replace("_", " ")
        out += [f"- {title}: *skipped: {skipped}*" if skipped else f"![{title}]({name})", ""]
    return "\n".join(out)
