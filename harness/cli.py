"""`harness validate | run | report | gap | ui`: the user's commands.

Every expected failure (bad suite, missing model, bad task) ends as one line on
stderr and a non-zero exit code; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys

from harness import stores, sweep
from harness.models import ModelError
from harness.report.write import write_report
from harness.spec import SuiteError, load_suite
from harness.tasks import TaskError
from harness.trial import Workbench, context_gaps

EXIT_BAD_INPUT = 2


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "alembic", "lm_eval", "datasets", "mlflow", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_validate(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    ax = suite.axes
    print(
        f"{args.suite}: ok — suite '{suite.name}' (hash {suite.content_hash()}), task {suite.task.name}, "
        f"{len(ax.targets)} target × {len(ax.contexts)} context × {len(ax.losses)} loss values, "
        f"searched hyperparameters: {', '.join(suite.hyperparameters.searched()) or 'none'}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    study = sweep.run(suite, n_trials=args.n_trials, timeout=args.timeout)
    print("\n".join(sweep.summary(study)))
    if not args.no_report:
        print(f"report written to {write_report(suite, 'results')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    print(f"report written to {write_report(suite, args.out)}")
    return 0


def cmd_gap(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    rows = context_gaps(Workbench(suite))
    print(f"suite '{suite.name}', task {suite.task.name}: teacher (full context c) vs. untrained model with c'")
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


def cmd_ui(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    uri = stores.tracking_uri(suite)
    print(
        f"MLflow UI for suite '{suite.name}' ({uri}) on http://{args.host}:{args.port}; "
        f"experiment harness/{suite.name}, Ctrl-C to stop"
    )
    if shutil.which("optuna-dashboard"):
        print(f"Optuna dashboard: optuna-dashboard {stores.storage_url(suite)}")
    else:
        print(
            f"Optuna dashboard (optional): pip install optuna-dashboard && optuna-dashboard {stores.storage_url(suite)}"
        )
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Benchmark harness for context distillation.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a suite file and print what it sweeps")
    v.add_argument("suite")
    v.set_defaults(fn=cmd_validate)
    r = sub.add_parser("run", help="run a suite: one trial, or an Optuna study over its axes")
    r.add_argument("suite")
    r.add_argument("--n-trials", type=int, default=None, help="trials to run now (default: the suite's)")
    r.add_argument("--timeout", type=float, default=None, help="stop starting new trials after N seconds")
    r.add_argument("--no-report", action="store_true", help="skip writing results/<suite>/ at the end")
    r.set_defaults(fn=cmd_run)
    rep = sub.add_parser("report", help="write tables and plots of a suite's study to results/<suite>/")
    rep.add_argument("suite")
    rep.add_argument("--out", default="results", help="results folder (default: results)")
    rep.set_defaults(fn=cmd_report)
    g = sub.add_parser("gap", help="score teacher (c) and untrained model (each c'): is there a gap to close?")
    g.add_argument("suite")
    g.add_argument("--min-gap", type=float, default=15.0, help="exit 1 if a gap is below this many points (default 15)")
    g.set_defaults(fn=cmd_gap)
    u = sub.add_parser("ui", help="start the MLflow UI on a suite's tracking store")
    u.add_argument("suite", nargs="?", default="suites/quickstart.yaml")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(fn=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.fn(args)
    except (SuiteError, ModelError, TaskError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; finished trials are kept in the study and MLflow", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
