"""The heavy commands (`run`, `report`, `gap`, `ui`): they load models, lm-eval, MLflow and Optuna.

Kept apart from `cli` so that `harness validate` imports none of that and answers in well under a second.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
from types import FrameType

from filelock import FileLock

from harness import stores, sweep, tracking, workers
from harness.redact import redact
from harness.report.benchmark import write_benchmark
from harness.report.write import write_report
from harness.spec import Suite
from harness.trial import Workbench, context_gaps


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM (a scheduler's stop, `kill`) ends the trial as Ctrl-C does: requeued


def cmd_run(args: argparse.Namespace, suite: Suite) -> int:
    """Exit 0 when the study holds a completed trial; 1 when none completed or the tracking store was lost."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        study = sweep.run(suite, n_trials=args.n_trials, timeout=args.timeout)
    except tracking.TrackingUnavailable as e:
        print(f"error: {e}; the running trial was requeued: rerun `harness run` when it answers", file=sys.stderr)
        return 1
    print("\n".join(sweep.summary(study)))
    failed = workers.no_result(study)
    if not args.no_report and study.get_trials(deepcopy=False):
        with FileLock(stores.work_dir(suite) / "report.lock"):  # workers on one machine may finish together
            print(f"report written to {write_report(suite, 'results')}")
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace, suites: list[Suite]) -> int:
    if len(suites) == 1:
        print(f"report written to {write_report(suites[0], args.out)}")
        return 0
    out = write_benchmark(suites, args.out)
    print(f"reports of {len(suites)} suites and the cross-task benchmark written to {out}")
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


def cmd_ui(args: argparse.Namespace, suite: Suite) -> int:
    uri = stores.tracking_uri(suite)
    print(
        f"MLflow UI for suite '{suite.name}' ({redact(uri)}) on http://{args.host}:{args.port}; "
        f"experiment harness/{suite.name}, Ctrl-C to stop"
    )
    storage = redact(stores.storage_url(suite))
    if shutil.which("optuna-dashboard"):
        print(f"Optuna dashboard: optuna-dashboard {storage}")
    else:
        print(f"Optuna dashboard (optional): pip install optuna-dashboard && optuna-dashboard {storage}")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0
