"""The heavy commands (`run`, `report`, `gap`, `export`, `ui`): they load models, lm-eval, MLflow and Optuna.

Kept apart from `cli` so that `harness validate` imports none of that and answers in well under a second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType

from filelock import FileLock

from harness import console, disk, export, keep, stores, supervise, sweep, tracking, workers
from harness.redact import redact
from harness.report.benchmark import write_benchmark
from harness.report.runs import best_trials, load_runs, load_study, trial_table
from harness.report.write import write_report
from harness.spec import Suite
from harness.trial import Workbench, context_gaps


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM (a scheduler's stop, `kill`) ends the trial as Ctrl-C does: requeued


def cmd_run(args: argparse.Namespace, suite: Suite) -> int:
    """Exit 0 when the study holds a completed trial; 1 when none completed or the tracking store was lost."""
    if args.dry_run:
        print("\n".join(sweep.plan(suite)))
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        study = sweep.run(suite, n_trials=args.n_trials, timeout=args.timeout)
    except Exception as e:
        full = disk.full(e, _database(suite, e))
        if full is not None:
            rerun = console.command("run", suite, path=args.suite)
            print(
                f"error: {full}; finished trials are kept and the running one was requeued: free space, then "
                f"`{rerun}` runs only the missing trials",
                file=sys.stderr,
            )
            return 2
        if not isinstance(e, tracking.TrackingUnavailable):
            raise
        print(f"error: {e}; the running trial was requeued: rerun `harness run` when it answers", file=sys.stderr)
        return 1
    print("\n".join(sweep.summary(study)))
    print(f"compare the trials in the MLflow UI: {console.command('ui', suite, path=args.suite)}")
    failed = workers.no_result(study)
    if not args.no_report and study.get_trials(deepcopy=False):
        with FileLock(stores.work_dir(suite) / "report.lock"):  # workers on one machine may finish together
            folder = write_report(suite, "results")
            version = summarise_study(suite, folder)
        if version is not None:
            hint = console.command("export", suite, "OUT/", path=args.suite)
            print(f"best student: {keep.registered_name(suite)} version {version}; {hint}")
        print(f"report written to {folder}")
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    return 0


def _database(suite: Suite, e: BaseException) -> str | None:
    """The SQLite file a store error of the study came from: MLflow's when the tracking store failed, else
    Optuna's (None where that store is not a SQLite file)."""
    lost = stores.in_chain(e, tracking.TrackingUnavailable) is not None
    db = stores.sqlite_file(stores.tracking_uri(suite) if lost else stores.storage_url(suite))
    return str(db) if db is not None else None


def cmd_report(args: argparse.Namespace, suites: list[Suite]) -> int:
    if len(suites) == 1:
        folder = write_report(suites[0], args.out)
        summarise_study(suites[0], folder)
        print(f"report written to {folder}")
        return 0
    out = write_benchmark(suites, args.out)
    for suite in suites:
        summarise_study(suite, Path(args.out) / suite.name)
    print(f"reports of {len(suites)} suites and the cross-task benchmark written to {out}")
    return 0


def summarise_study(suite: Suite, report_dir: Path | None) -> str | None:
    """Attach the study's summary (best trial's params and metrics, the report's files) to its parent run, and
    point the registered students' alias `best` at the best configuration's; returns that version, if any.

    A read-only work folder (a report of someone else's study) still gets its report: one warning, no summary."""
    db = stores.sqlite_file(stores.tracking_uri(suite))
    if db is not None:
        try:
            stores.writable(db.parent, "MLflow tracking store")
        except stores.StoreError as e:
            print(f"warning: {e}; the study's MLflow run gets no summary of this report", file=sys.stderr)
            return None
    runs, _ = load_runs(suite)
    kind = runs.get("tags.harness.kind")
    if kind is None:
        return None
    parents = runs[kind == "study"]
    if parents.empty:
        return None
    best = best_trials(trial_table(runs, load_study(suite)), 1)
    best_id = None if best.empty else str(best.iloc[0]["run_id"])
    tracking.log_study_summary(str(parents.iloc[0]["run_id"]), best_id, report_dir, stores.Artifacts(suite))
    return keep.settle(suite, best_id)


def cmd_export(args: argparse.Namespace, suite: Suite) -> int:
    done = export.export(suite, args.out, args.trial, force=args.force)
    scores = ", ".join(
        f"{split} student score {done.metrics[f'{split}_student_score']:.3f}"
        for split in ("validation", "test")
        if f"{split}_student_score" in done.metrics
    )
    source = {
        "model": "logged model",
        "adapter": "adapter merged into the base model",
        "soft_prompt": f"{done.context.soft_prompt} trained virtual tokens ({done.folder / 'soft_prompt.safetensors'})",
    }[done.source]
    print(f"trial {done.trial} ({done.configuration}), first training seed, from its {source}: {scores}")
    print(f"written to {done.folder}: AutoModelForCausalLM.from_pretrained('{done.folder}')")
    print(f"prompt it with its context c' ({done.context.context}): {done.folder / keep.CONTEXT_FILE}")
    return 0


def cmd_gap(args: argparse.Namespace, suite: Suite) -> int:
    rows = context_gaps(Workbench(suite))
    print(
        f"suite '{suite.name}', task {suite.task.name}, validation split: teacher (full context c) vs. "
        "untrained model with c'"
    )
    print(f"{'context c′':<24} {'metric':<12} {'items':>5} {'teacher':>15} {'baseline':>15} {'gap (points)':>16}")
    low = []
    for r in rows:
        print(
            f"{r.context:<24} {r.metric:<12} {r.items:>5} "
            f"{r.teacher:>7.3f} ± {r.teacher_stderr:.3f} {r.baseline:>7.3f} ± {r.baseline_stderr:.3f} "
            f"{100 * r.gap:>+8.1f} ± {100 * r.gap_stderr:.1f}"
        )
        if 100 * r.gap < args.min_gap:
            low.append(r.context)
    if low:
        print(
            f"gap below {args.min_gap:g} points for: {', '.join(low)} — the context barely helps there, "
            "so gap closure is noise; fix the task or the context",
            file=sys.stderr,
        )
        return 1
    return 0


def dashboard_command() -> str | None:
    """optuna-dashboard's entry point (`pip install .[dashboard]`): beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "optuna-dashboard"
    return str(beside) if beside.is_file() else shutil.which("optuna-dashboard")


def cmd_ui(args: argparse.Namespace, suite: Suite) -> int:
    uri = stores.tracking_uri(suite)
    base = f"http://{args.host}:{args.port}"
    exp_id = tracking.find_experiment(suite)
    run_hint = console.command("run", suite, path=args.suite)
    if exp_id is not None:  # refresh the experiment's kind, description and runs view (older stores lack them)
        tracking.setup(suite)
        objective = sweep.direction(suite.sweep.objectives[0])
        tracking.save_trials_view(exp_id, sweep.view_metrics(suite), sweep.view_params(suite), objective == "maximize")
        where = f"runs of harness/{suite.name}: {tracking.ui_url(base, exp_id)}"
    else:
        where = f"{base} (no runs of suite '{suite.name}' yet: `{run_hint}` first)"
    print(f"MLflow UI ({redact(uri)}), {where}")
    # One web worker and no background job runners (they serve MLflow's GenAI features): 2 processes, not 11.
    env = {**os.environ}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    mlflow_cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    mlflow_cmd += ["--host", args.host, "--port", str(args.port), "--workers", "1"]
    if not args.verbose:  # the web server's access log and a deprecation note meant for MLflow's developers
        mlflow_cmd += ["--uvicorn-opts", "--log-level warning"]
        env.setdefault("PYTHONWARNINGS", "ignore:starlette.middleware.wsgi is deprecated")
    commands = {"mlflow ui": mlflow_cmd}
    dashboard = None if args.no_dashboard else dashboard_command()
    storage = stores.storage_url(suite)
    db = stores.sqlite_file(storage)
    if dashboard and db is not None and not db.exists():
        # optuna-dashboard opens a storage without creating its tables, and exits on an empty one
        print(f"Optuna dashboard: no study yet in {redact(storage)} (`{run_hint}` first)")
        dashboard = None
    elif dashboard:
        commands["optuna-dashboard"] = [dashboard, storage, "--host", args.host, "--port", str(args.dashboard_port)]
        print(f"Optuna dashboard ({redact(storage)}): http://{args.host}:{args.dashboard_port}")
    elif not args.no_dashboard:
        print("Optuna dashboard (optional): pip install '.[dashboard]', then `harness ui` starts it here too")
    print("Ctrl-C stops " + ("both" if dashboard else "it"))

    return supervise.run(commands, env)
