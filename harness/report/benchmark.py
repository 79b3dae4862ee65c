"""The cross-task benchmark: several suites' comparisons in one table (`harness report A.yaml B.yaml --out DIR`).

Each suite gets its own report under `DIR/<suite>/`; `DIR/benchmark.md` and `DIR/benchmark.csv` then
hold, per configuration, its verdict on every task and its mean test rank across tasks with the spread
(`stats.aggregate_tasks`). Configurations are matched across suites by their label (axis values plus
the hyperparameters that vary in the study): the same label in two suites is the same configuration.
Ranks, not raw scores, are averaged, so tasks with different metrics and scales weigh the same.
`DIR/quality_per_compute.png` puts each suite's configurations in a panel of test gap closure against the
estimated FLOPs of the cost ledger, the Pareto front marked; suites run before the ledger get a skip note.

A suite whose study is not in this work folder (its MLflow runs live on another machine) but whose report is
already under `DIR/<suite>/` for the same study (`provenance.json`'s study name: same suite file, same hash)
enters the table from that report, as committed, with a warning and a line in `benchmark.md` saying so; without
such a report it is the usual error ("run it first").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from harness import stats, stores
from harness.report import cost
from harness.report.comparison import labels
from harness.report.plots import SkipPlot
from harness.report.runs import load_runs
from harness.report.tables import fmt, md_table
from harness.report.write import COMPARISON, write_report
from harness.spec import Suite, SuiteError

BENCHMARK = "benchmark"
COMPUTE_PLOT = cost.PLOT
log = logging.getLogger(__name__)
NO_LEDGER = "no completed configuration with a cost ledger (runs from before `harness/ledger.py`)"


def write_benchmark(suites: Sequence[Suite], out: str | Path) -> Path:
    """Each suite's report under `out/<suite>/`, then `out/benchmark.md` and `out/benchmark.csv` across them."""
    names = [s.name for s in suites]
    if len(set(names)) != len(names):
        raise SuiteError(f"benchmark: two suites share a name ({', '.join(names)}); each task needs its own")
    out = Path(out)
    tables: dict[str, pd.DataFrame] = {}
    frames: dict[str, pd.DataFrame] = {}
    kept: dict[str, str] = {}
    for suite in suites:
        folder = out / suite.name
        kept_from = kept_report(suite, folder)
        if kept_from is None:
            folder = write_report(suite, out)
        else:
            kept[suite.name] = kept_from
            log.warning("suite '%s': no runs in this work folder; the benchmark reads its %s", suite.name, kept_from)
        if not (folder / COMPARISON).is_file():
            raise SuiteError(f"suite '{suite.name}': no completed configuration to compare; run it first")
        tables[suite.name] = same_default_inputs(pd.read_csv(folder / COMPARISON))
        frames[suite.name] = pd.read_csv(folder / "summary.csv")
    agg = stats.aggregate_tasks(tables, seed=suites[0].seed)
    agg.to_csv(out / f"{BENCHMARK}.csv", index=False)
    compute = compute_md(frames, out / COMPUTE_PLOT)
    notes = [f"- `{name}`: {why}" for name, why in kept.items()]
    if notes:
        notes = [
            "Reports kept as they were (no MLflow runs of the study in the work folder that wrote this):",
            "",
            *notes,
            "",
        ]
    (out / f"{BENCHMARK}.md").write_text(benchmark_md(agg, tables, [*notes, *compute]))
    return out


def same_default_inputs(table: pd.DataFrame) -> pd.DataFrame:
    """A suite that sweeps inputs names the default source (`... / train_split`); one that does not leaves it
    out. Both are the same configuration, so the benchmark matches them under the shorter label."""
    out = table.copy()
    out["configuration"] = out["configuration"].str.replace(r" / train_split(?=$|,| #)", "", regex=True)
    return out


def kept_report(suite: Suite, folder: Path) -> str | None:
    """A note on the report already in `folder`, which the benchmark then reads as it is, when the suite's study
    has no trials in this work folder and that report is of the same study; else None: the report is rewritten
    from MLflow (and a study run nowhere, or changed since its report, fails there with "run it first")."""
    runs, _ = load_runs(suite)
    kinds = runs.get("tags.harness.kind", pd.Series(dtype=object))
    if not runs.empty and (kinds == "trial").any():
        return None
    prov_file = folder / "provenance.json"
    study = stores.study_name(suite)
    try:
        prov = json.loads(prov_file.read_text())
    except (OSError, ValueError):
        prov = None
    if not isinstance(prov, dict) or prov.get("study") != study:
        return None  # nothing of this study to keep: write_report says to run it
    if not all((folder / f).is_file() for f in (COMPARISON, "summary.csv")):
        return None
    commits = prov.get("git_commit_trials") or ["?"]
    return (
        f"report of study `{study}` kept from `{folder.name}/` (trials at commit "
        f"{', '.join(str(c)[:7] for c in commits)}, report at {str(prov.get('git_commit_report', '?'))[:7]})"
    )


def plot_quality_per_compute(frames: dict[str, pd.DataFrame], path: Path) -> dict[str, str]:
    """One panel per suite whose configurations logged a cost ledger (test gap closure against FLOPs, its
    Pareto front marked); the suites left out, with why. No file (and a stale one removed) when none has one."""
    path.unlink(missing_ok=True)
    points: dict[str, pd.DataFrame] = {}
    skipped: dict[str, str] = {}
    for name, df in frames.items():
        try:
            points[name] = cost.ledger_points(df)
        except SkipPlot:
            skipped[name] = NO_LEDGER
    if not points:
        return skipped
    matplotlib.use("Agg")  # files only, never a window
    n = len(points)
    fig, axs = plt.subplots(1, n, figsize=(5.5 * n + 1.0, 5.0), sharey=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (ax, (name, done)) in enumerate(zip(axs[0], points.items(), strict=True)):
        cost.draw_quality_per_compute(ax, done, color=colours[i % len(colours)])
        ax.set_title(name)
    axs[0][0].set_ylabel("test gap closure (0 = baseline, 1 = teacher)")
    fig.suptitle("Quality per compute across tasks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return skipped


def compute_md(frames: dict[str, pd.DataFrame], path: Path) -> list[str]:
    """The benchmark's `## Quality per compute` lines: the plot (written to `path`), each suite's Pareto front
    by configuration, and a skip note per suite with no ledger."""
    skipped = plot_quality_per_compute(frames, path)
    out = ["## Quality per compute", ""]
    if path.is_file():
        out += [
            f"![quality per compute]({path.name})",
            "",
            "FLOPs are the ledger's estimate per seed (teacher + student, 2·N per token forward, 6·N per token "
            "trained; see each task's `## Cost`). Pareto front (fewer FLOPs, more test gap closure), by FLOPs:",
            "",
        ]
    for name, df in frames.items():
        if name in skipped:
            out.append(f"- `{name}`: *skipped: {skipped[name]}*")
            continue
        done = cost.ledger_points(df)
        names = labels(done)
        front = cost.front_rows(done)
        cells = [
            f"#{fmt(r['trial'])} `{names[i]}` ({float(r[cost.FLOPS]):.2e} FLOPs, {float(r['test_gap_closure']):.3f})"
            for i, r in front.iterrows()
        ]
        out.append(f"- `{name}`: {'; '.join(cells)}")
    return [*out, ""]


def headline(agg: pd.DataFrame) -> str:
    """The quotable line: which configuration ranks best across tasks (all of them, when tied), and how many
    others it cannot be told from."""
    top = agg.iloc[0]
    tied = agg[agg["rank_mean"] == top["rank_mean"]]
    total = sum(str(c).startswith("verdict[") for c in agg.columns) or int(agg["tasks"].max())
    ran = [int(n) for n in tied["tasks"]]
    if min(ran) == total:
        tasks = f"{total} task{'s' if total != 1 else ''}"
    else:  # a configuration ranked on fewer tasks than the table holds: say so, its mean is over those only
        span = str(min(ran)) if min(ran) == max(ran) else f"{min(ran)}–{max(ran)}"
        tasks = f"the {span} of {total} tasks {'it' if len(tied) == 1 else 'they'} ran on"
    others = agg.iloc[len(tied) :]
    overlap = others[others["rank_low"] <= tied["rank_high"].max()]
    if len(tied) > 1:
        spans = ", ".join(f"{r['rank_low']:.2f}–{r['rank_high']:.2f}" for _, r in tied.iterrows())
        body = (
            f"{' and '.join(f'`{c}`' for c in tied['configuration'])} tie for the best mean test rank across "
            f"{tasks}: {top['rank_mean']:.2f} (95% intervals over tasks {spans})"
        )
    else:
        body = (
            f"`{top['configuration']}` has the best mean test rank across {tasks}: {top['rank_mean']:.2f} (95% "
            f"interval over tasks {top['rank_low']:.2f}–{top['rank_high']:.2f}, range {fmt(top['rank_min'])}–"
            f"{fmt(top['rank_max'])})"
        )
    if others.empty:
        return body + ("; they are the only configurations." if len(tied) > 1 else "; it is the only configuration.")
    theirs = "theirs" if len(tied) > 1 else "its"
    return body + f"; the rank intervals of {len(overlap)} of the {len(others)} others overlap {theirs}."


def benchmark_md(agg: pd.DataFrame, tables: dict[str, pd.DataFrame], compute: Sequence[str] = ()) -> str:
    tasks = list(tables)
    out = [f"# Benchmark across tasks: {', '.join(f'`{t}`' for t in tasks)}", "", f"> **{headline(agg)}**", ""]
    out += [
        "Within each task, configurations are ranked by their test figure (1 = best; ties share the mean rank) "
        "and compared with that task's validation-best (verdicts: paired bootstrap over items × seeds, "
        "Holm-corrected; see each task's summary). Across tasks: the mean rank, a 95% percentile interval "
        "from resampling tasks, and the range. With a handful of tasks the range is the more honest spread; "
        "a configuration absent from a task is ranked only where it ran (`tasks`).",
        "",
    ]
    headers = ["configuration", "tasks", "mean rank [95% interval]", "range", *(f"verdict: {t}" for t in tasks)]
    rows = [
        [
            r["configuration"],
            fmt(r["tasks"]),
            f"{r['rank_mean']:.2f} [{r['rank_low']:.2f}, {r['rank_high']:.2f}]",
            f"{fmt(r['rank_min'])} – {fmt(r['rank_max'])}",
            *(r[f"verdict[{t}]"] for t in tasks),
        ]
        for _, r in agg.iterrows()
    ]
    out += [md_table(headers, rows), "", "## Per task", ""]
    for t, table in tables.items():
        out += [f"- [`{t}`]({t}/summary.md): {stats.summary_sentence(table)}"]
    if compute:
        out += ["", *compute]
    return "\n".join([*out, ""])
