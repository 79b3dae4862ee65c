"""`harness validate | run | report | gap | export | ui`: the user's commands.

Every expected failure (bad suite, missing model, bad task) ends as one line per
problem on stderr and exit code 2; tracebacks are for bugs. Heavy libraries are
imported by the command that needs them, so `validate` answers in well under a
second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from harness import __version__, console, disk, threads
from harness.spec import Suite, SuiteError, load_suite

EXIT_BAD_INPUT = 2
FAST_HELP = (
    "the suite capped for a quick look (Suite.fast): 2 seeds, 80 test and 40 validation items, 16 held-out "
    "inputs, 4 configurations, as study and results '<name>-fast'; intervals and paired tests as usual"
)


def cmd_validate(args: argparse.Namespace, suite: Suite) -> int:
    ax = suite.axes
    print(
        f"{args.suite}: ok — suite '{suite.name}' (hash {suite.content_hash()}), task {suite.task.name}, "
        f"{len(ax.targets)} target × {len(ax.contexts)} context × {len(ax.losses)} loss values, "
        f"searched hyperparameters: {', '.join(suite.hyperparameters.searched()) or 'none'}, "
        f"{suite.sweep.seeds} seed{'s' if suite.sweep.seeds != 1 else ''} per configuration"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Benchmark harness for context distillation.")
    verbose = "debug logging, every library's warnings and progress bars"
    p.add_argument("-v", "--verbose", action="store_true", help=verbose)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # `harness run SUITE -v` works too: the subcommands accept it without overriding one given before them
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, parents=[common])

    v = add("validate", "check a suite file and print what it sweeps")
    v.add_argument("suite")
    v.add_argument("--fast", action="store_true", help="validate the `--fast` variant (what `run --fast` runs)")
    v.set_defaults(fn=cmd_validate)
    r = add("run", "run a suite: one trial, or an Optuna study over its axes")
    r.add_argument("suite")
    r.add_argument(
        "--n-trials", type=int, default=None, help="trials the study should hold in all (default: the suite's)"
    )
    r.add_argument("--timeout", type=float, default=None, help="stop starting new trials after N seconds")
    r.add_argument("--no-report", action="store_true", help="skip writing results/<suite>/ at the end")
    r.add_argument("--fast", action="store_true", help=FAST_HELP)
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="list the trials it would run and stop (loads no model, opens no study)",
    )
    r.set_defaults(fn="cmd_run")
    rep = add(
        "report",
        "write tables and plots of a suite's study to results/<suite>/; with several suites, also "
        "OUT/benchmark.md and .csv across them",
    )
    rep.add_argument("suite", nargs="+")
    rep.add_argument("--out", default="results", help="results folder (default: results)")
    rep.add_argument("--fast", action="store_true", help="report the `--fast` variant of the suites")
    rep.set_defaults(fn="cmd_report")
    g = add("gap", "score teacher (c) and untrained model (each c'): is there a gap to close?")
    g.add_argument("suite")
    g.add_argument("--fast", action="store_true", help="the `--fast` variant's validation items")
    g.add_argument("--min-gap", type=float, default=15.0, help="exit 1 if a gap is below this many points (default 15)")
    g.set_defaults(fn="cmd_gap")
    x = add("export", "write a trial's student as a plain transformers folder, with the context c' it expects")
    x.add_argument("suite")
    x.add_argument("out", metavar="OUT", help="folder to write: new or empty (created), unless --force")
    x.add_argument(
        "--trial", type=int, default=None, help="Optuna trial number (default: the best configuration on validation)"
    )
    x.add_argument("--fast", action="store_true", help="export from the `--fast` variant of the suite")
    x.add_argument("--force", action="store_true", help="write into a non-empty OUT, replacing files of the same name")
    x.set_defaults(fn="cmd_export")
    u = add("ui", "start the MLflow UI (and optuna-dashboard, when installed) on a suite's stores")
    u.add_argument("suite", nargs="?", default="suites/quickstart.yaml")
    u.add_argument("--fast", action="store_true", help="the stores of the suite's `--fast` variant")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument(
        "--dashboard-port", type=int, default=8080, help="optuna-dashboard's port, when it is installed (default 8080)"
    )
    u.add_argument("--no-dashboard", action="store_true", help="MLflow only, even where optuna-dashboard is installed")
    u.set_defaults(fn="cmd_ui")
    return p


Command = Callable[[argparse.Namespace, Any], int]  # the Suite, or the list of them for `report`
# Commands that start work check the models and the task first: a typo must not leave an empty study behind.
CHECK_RESOURCES = ("validate", "run", "gap")


def _command(fn: Command | str) -> Command:
    """A heavy command by name from `harness.commands`, imported only when it runs: the one import inside a
    function in the package, so that `validate` never pays for torch, lm-eval, MLflow and Optuna."""
    if callable(fn):
        return fn
    from harness import commands

    return getattr(commands, fn)


def _load_all(paths: list[str], resources: bool, fast: bool) -> list[Suite]:
    """Every suite, or one SuiteError listing the problems of all of them."""
    suites, problems = [], []
    for path in paths:
        try:
            suite = load_suite(path, resources=resources)
        except SuiteError as e:
            problems += e.problems
            continue
        suites.append(suite.fast() if fast else suite)
    if problems:
        raise SuiteError(problems)
    return suites


def _input_errors() -> tuple[type[Exception], ...]:
    """ModelError, TaskError, StoreError and ExportError, from their modules if a command imported them (a command that
    did not cannot raise them, and importing `models` here would cost every command torch's import time)."""
    found = []
    named = (
        ("harness.models", "ModelError"),
        ("harness.tasks", "TaskError"),
        ("harness.stores", "StoreError"),
        ("harness.export", "ExportError"),
        ("harness.threads", "ThreadsError"),
    )
    for module, name in named:
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.setup(args.verbose)
    try:
        threads.configure()  # before torch loads: OpenMP threads that sleep, one per core (harness/threads.py)
        if isinstance(args.suite, list):  # `report` takes several suites (a benchmark across tasks)
            suites = _load_all(args.suite, args.command in CHECK_RESOURCES, args.fast)
            return _command(args.fn)(args, suites)
        suite = load_suite(args.suite, resources=args.command in CHECK_RESOURCES)
        return _command(args.fn)(args, suite.fast() if getattr(args, "fast", False) else suite)
    except SuiteError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _input_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # any command's own writes (a report, an export) on a full disk; `run` says more
        full = disk.full(e)
        if full is None:
            raise
        print(f"error: {full}; free space and rerun the command", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; finished trials are kept, the running one was requeued for the next start", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
