"""summary.md: the quotable sentence, provenance, the comparison on test, reference scores, per-axis tables,
all trials, plots."""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness import stats
from harness.report import cost
from harness.report.comparison import TITLE, Comparison
from harness.report.runs import axes_of
from harness.report.tables import axis_table, ci, fmt, fmt_metric, fmt_param, md_table, varying_hps
from harness.spec import Suite

FOREST = "forest.png"


def _provenance_md(p: dict[str, Any], df: pd.DataFrame) -> list[str]:
    states = df["state"].value_counts()
    counts = ", ".join(f"{n} {s.lower()}" for s, n in states.items())
    m = p["report_machine"]
    rows = [
        ["suite", f"`{p['suite']}` (content hash `{p['suite_hash']}`)"],
        [
            "study",
            f"`{p['study']}`, objective{'s' if len(p['objectives']) > 1 else ''}: {', '.join(p['objectives'])} "
            "(mean over seeds on the validation split)",
        ],
        ["training seeds", ", ".join(map(str, p["seeds"]))],
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


def _comparison_md(c: Comparison | None) -> list[str]:
    out = ["## Comparison on test", ""]
    if c is None:
        return [*out, "No completed configuration with per-item scores yet.", ""]
    t = c.table
    name = TITLE[c.statistic]
    m = int((t["verdict"] != "best").sum())
    out += [
        f"Validation chooses, test reports. The reference is the configuration best on validation "
        f"(`{t.attrs['best']}`); every other one is compared with it on the same {c.items} test items × "
        f"{len(c.seeds)} seeds. Test {name}: mean with a 95% interval from a bootstrap that resamples items "
        f"and seeds together ({c.n_boot} resamples); Δ: this configuration minus the reference, paired on "
        f"items × seeds, with its 95% interval and a two-sided p from the same paired bootstrap, "
        f"Holm-corrected over the {m} comparison{'s' if m != 1 else ''}. Verdict: better / worse when the "
        f"corrected p < {stats.ALPHA} and the interval of Δ excludes 0, else tie (not distinguishable).",
        "",
    ]
    if c.fallback:
        out += [f"Note: {c.fallback}.", ""]
    rows = [
        [
            r["configuration"],
            fmt(r["trial"]),
            fmt(r["validation"]),
            ci(r["test"], r["test_low"], r["test_high"]),
            "–" if r["verdict"] == "best" else ci(r["delta"], r["delta_low"], r["delta_high"]),
            "–" if r["verdict"] == "best" else _p(r["p_holm"]),
            r["verdict"],
        ]
        for _, r in t.iterrows()
    ]
    val = "validation " + ("student score" if c.statistic == "score" else "gap closure")
    headers = ["configuration", "trial", val, f"test {name} [95% CI]", "Δ vs best [95% CI]", "p (Holm)", "verdict"]
    out += [md_table(headers, rows), ""]
    out += [f"- {split}: {note}" for split, note in c.notes.items() if note] + [""]
    return out


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _references_md(df: pd.DataFrame, c: Comparison | None) -> list[str]:
    out = ["## Reference scores", ""]
    if c is None or not c.references:
        return [*out, "No configuration completed.", ""]
    teacher = c.references["teacher"]
    val = df[df["state"] == "COMPLETE"]
    val_teacher = val.get("validation_teacher_score", pd.Series(dtype=float)).dropna()
    out += [
        f"Teacher (base model with the full context c), test: **{ci(teacher.estimate, teacher.low, teacher.high)}**"
        + (f"; validation: {fmt(val_teacher.iloc[0])}" if len(val_teacher) else ""),
        "",
        "Baseline (base model with the shorter context c', no training), per context modification:",
        "",
    ]
    rows = []
    for ctx, b in c.references["baselines"].items():
        mine = val[val["context"].astype(str) == ctx]
        rows.append(
            [
                ctx,
                ci(b.estimate, b.low, b.high),
                fmt(mine["validation_baseline_score"].iloc[0]) if len(mine) else "–",
                fmt_metric("context_tokens_saved", mine["context_tokens_saved"].iloc[0]) if len(mine) else "–",
            ]
        )
    headers = ["context", "test score [95% CI]", "validation score", "context tokens saved per query"]
    return [*out, md_table(headers, rows), ""]


def _trials_md(df: pd.DataFrame) -> list[str]:
    vary, fixed = varying_hps(df)
    out = [
        "## All trials",
        "",
        "One row per configuration (an Optuna trial: every seed inside); figures are means over seeds.",
        "",
    ]
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
        *axes_of(df),
        *(v.removeprefix("hp.") for v in vary),
        "validation gap closure",
        "test gap closure [95% CI]",
        "test student score [95% CI]",
        *(["forgetting on the control task [95% CI]"] if control else []),
        "context tokens saved",
        "wall time per seed (s)",
    ]
    rows = [
        [
            fmt(r["trial"]),
            r["state"],
            *(r.get(a) for a in axes_of(df)),
            *(fmt_param(r[v]) for v in vary),
            fmt(r.get("validation_gap_closure")),
            ci(r.get("test_gap_closure"), r.get("test_gap_closure_low"), r.get("test_gap_closure_high")),
            ci(r.get("test_student_score"), r.get("test_student_score_low"), r.get("test_student_score_high")),
            *(
                [ci(r.get("control_forgetting"), r.get("control_forgetting_low"), r.get("control_forgetting_high"))]
                if control
                else []
            ),
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
                        " / ".join(str(r.get(a)) for a in axes_of(df)),
                        r["reason"] or "(no reason recorded)",
                    ]
                    for _, r in bad.iterrows()
                ],
            ),
            "",
        ]
    return out


def summary_md(
    suite: Suite, df: pd.DataFrame, prov: dict[str, Any], plots: dict[str, str | None], comparison: Comparison | None
) -> str:
    """The human-readable report: the sentence to quote, provenance, the comparison on test, references,
    per-axis tables, all trials, plots."""
    out = [f"# Context distillation report: `{suite.name}`", ""]
    if comparison is not None:
        name = TITLE[comparison.statistic]
        out += [
            f"> **{comparison.sentence}**",
            f"> (test {name}, {len(comparison.seeds)} seeds × {comparison.items} items, 95% intervals, "
            "Holm-corrected paired bootstrap; see the comparison below)",
            "",
        ]
    if suite.description:
        out += [suite.description.strip(), ""]
    out += _provenance_md(prov, df) + [""]
    out += _comparison_md(comparison)
    skipped = plots.get(FOREST)
    out += [f"- forest plot: *skipped: {skipped}*" if skipped else f"![forest plot]({FOREST})", ""]
    out += _references_md(df, comparison)
    out += [
        "## By axis",
        "",
        "Over completed configurations: the spread of their mean gap closures (each configuration's own "
        "interval is in the comparison above).",
        "",
    ]
    for axis in axes_of(df):
        if axis in df:
            out += [f"### {axis}", "", axis_table(df, axis), ""]
    out += _trials_md(df)
    out += cost.cost_md(df, plots.get(cost.PLOT))
    out += ["## Plots", ""]
    for name, skip in plots.items():
        if name in (FOREST, cost.PLOT):
            continue
        title = name.removesuffix(".png").replace("_", " ")
        out += [f"- {title}: *skipped: {skip}*" if skip else f"![{title}]({name})", ""]
    return "\n".join(out)
