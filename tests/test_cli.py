"""The CLI as a user meets it: a quiet log with one line per trial, `--version`, `run --dry-run`, and `harness ui`
stopping every process it started."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from helpers import ROOT, write_suite

from harness import __version__, console, stores, sweep
from harness import models as models_module
from harness.cli import build_parser, main
from harness.commands import dashboard_command
from harness.spec import load_suite

TRIALS = 2  # the smoke suite's grid
LINES_PER_TRIAL = 3
SEEDS = 2  # the smoke suite's


@pytest.mark.slow
def test_run_log_has_one_line_per_trial_and_no_noise(cli_smoke):
    """The smoke study written to a file: no progress-bar redraws, no library chatter, a progress line per trial."""
    log = cli_smoke["log"]
    assert cli_smoke["returncode"] == 0, log
    assert "\r" not in log, "a progress bar redrew itself in a log file"
    for noise in ("Warning", "WARNING", "fatal:", "mlflow.store", "lm_eval", "it/s", "Generating", "Loading weights"):
        assert noise not in log, noise
    # a phase past 30 s (a loaded machine) adds its own progress lines (tests/test_interrupted.py covers them)
    lines = [line for line in log.splitlines() if " harness.progress: " not in line]
    progress = [line for line in lines if re.search(r" harness\.sweep: trial \d+/", line)]
    assert len(progress) == TRIALS, log
    pattern = (
        r"trial (\d)/2 greedy\|(empty|fewer_demos\(k=1\))\|forward_kl done \(gap_closure -?\d+\.\d{3}\) "
        r"— elapsed \d+ s"
    )
    assert [re.search(pattern, line).group(1) for line in progress] == ["1", "2"]  # type: ignore[union-attr]
    assert "ETA ≤ " in progress[0] and "ETA" not in progress[1]  # an upper bound after the first; none after the last
    # the first configuration says what it is doing before its trial line: teacher and baseline work, then seeds
    phases = [line.split(": ", 1)[1] for line in lines if " harness.sweep: trial #" in line]
    assert len(phases) == 2 * SEEDS, log
    assert "seed 1/2 started — teacher targets, then teacher and baseline scores" in phases[0]
    assert re.search(r"seed 1/2 done in \d+ s \(teacher targets \d+ s, lm-eval scoring \d+ s, training", phases[1])
    assert "seed 2/2 started — training and the student's scores (teacher and baseline cached)" in phases[2]
    first_trial = next(i for i, line in enumerate(lines) if " harness.sweep: trial 1/2 " in line)
    assert all(lines.index(next(x for x in lines if p in x)) < first_trial for p in phases)
    summary = next(i for i, line in enumerate(lines) if line.startswith("study "))
    bound = 2 + LINES_PER_TRIAL * TRIALS + 2 * SEEDS  # study line, teacher loading, the trials, the first's seeds
    assert summary <= bound, lines[:summary]
    assert [line.split()[1] for line in lines[summary + 1 : summary + 1 + TRIALS]] == ["COMPLETE"] * TRIALS
    assert lines[-1] == "report written to results/smoke"


def test_progress_line_counts_trials_and_extrapolates_the_pace():
    now = [0.0]
    progress = sweep.Progress(["gap_closure"], target=8, clock=lambda: now[0])
    axes = {"target": "greedy", "context": "empty", "loss": "forward_kl"}
    dists = {k: optuna.distributions.CategoricalDistribution([v]) for k, v in axes.items()}
    done = optuna.trial.create_trial(params=axes, distributions=dists, value=0.97)
    now[0], progress.ran, progress.first_done = 240.0, 1, 240.0  # the first trial: 4 min, cache included
    assert progress.line(done, 1) == (
        logging.INFO,
        "trial 1/8 greedy|empty|forward_kl done (gap_closure 0.970) — elapsed 4 min, ETA ≤ 28 min",
    )
    now[0], progress.ran = 480.0, 3  # two more in four minutes: two minutes each (cached), five to go
    assert progress.line(done, 3) == (
        logging.INFO,
        "trial 3/8 greedy|empty|forward_kl done (gap_closure 0.970) — elapsed 8 min, ETA 10 min",
    )
    failed = optuna.trial.create_trial(
        params=axes, distributions=dists, state=optuna.trial.TrialState.FAIL, user_attrs={"reason": "loss is nan"}
    )
    now[0], progress.ran = 7200.0, 8
    assert progress.line(failed, 8) == (
        logging.WARNING,
        "trial 8/8 greedy|empty|forward_kl failed (loss is nan) — elapsed 2 h 00 min",
    )


def test_version_and_distribution_name(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"harness {__version__}\n"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["name"] == "context-distill-harness"  # `harness` on PyPI is someone else's
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "harness.__version__"}
    assert "optuna-dashboard" in project["project"]["optional-dependencies"]["dashboard"]
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    assert any(p.startswith("optuna-dashboard==") for p in pins)


def _no_model(*args: object, **kwargs: object) -> None:
    raise AssertionError("--dry-run loaded a model")


def test_dry_run_lists_every_grid_point_and_opens_no_study(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models_module, "load", _no_model)
    contexts, losses = ["empty", "fewer_demos(k=1)"], ["self_target_nll", "forward_kl"]
    path = write_suite(
        tmp_path,
        axes={
            "targets": [{"name": "greedy"}],
            "contexts": [{"name": "empty"}, {"name": "fewer_demos", "k": 1}],
            "losses": [{"name": "self_target_nll"}, {"name": "forward_kl"}],
        },
        sweep={"sampler": "grid", "n_trials": 4},
    )
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    points = [line.split(". ", 1)[1].strip() for line in out if re.match(r"\s+\d+\. ", line)]
    assert sorted(points) == sorted(f"greedy|{c}|{loss}" for c in contexts for loss in losses)
    assert "grid: 4 points" in "\n".join(out)
    work = tmp_path / ".harness"
    assert not (work / "optuna.db").exists() and not (work / "mlflow.db").exists()


def test_dry_run_of_a_sampled_study_shows_axes_and_ranges(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models_module, "load", _no_model)
    path = write_suite(
        tmp_path,
        hyperparameters={
            "learning_rate": {"low": 1e-4, "high": 3e-3, "log": True},
            "epochs": 1,
            "batch_size": 4,
            "train_inputs": 8,
        },
        sweep={"sampler": "tpe", "n_trials": 5},
    )
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "5 trials" in out and "TPESampler" in out
    assert re.search(r"context\s+fewer_demos\(k=1\), empty", out)
    assert re.search(r"learning_rate\s+float in \[0\.0001, 0\.003\], log scale", out)
    assert "fixed: " in out and "epochs=1" in out
    assert not (tmp_path / ".harness" / "optuna.db").exists()


# ---------------------------------------------------------------- `harness ui`: every child process stops with it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) from /proc, or None once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _descendants(root: int) -> dict[int, str]:
    """Every live process under `root`: pid → command line."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[0] != "Z":
            children.setdefault(st[1], []).append(pid)
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except FileNotFoundError:
                continue
            todo.append(pid)
    return found


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"harness ui exited with {proc.returncode} before {url} answered"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_ui_stops_every_process_it_started(tmp_path):
    path = write_suite(tmp_path, name="ui-check")
    suite = load_suite(path)
    optuna.create_study(study_name=stores.study_name(suite), storage=stores.storage_url(suite))  # as a run leaves it
    port, dash_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "harness.cli", "ui", str(path), "--port", str(port)]
    cmd += ["--dashboard-port", str(dash_port)]
    with (tmp_path / "ui.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    groups: set[int] = set()
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc)
        dashboard = dashboard_command()
        if dashboard:
            _wait_http(f"http://127.0.0.1:{dash_port}/", proc)
        family = _descendants(proc.pid)
        groups = {st[2] for pid in family if (st := _stat(pid)) is not None}
        # One web worker and no job runners: the `mlflow ui` process and its uvicorn worker (+ the dashboard).
        assert sum(" -m uvicorn " in c for c in family.values()) == 1, family
        assert not any("huey" in c for c in family.values()), family
        mlflow_family = [c for c in family.values() if " mlflow" in c]
        assert len(mlflow_family) == 2, family
        # optuna-dashboard: one process, or a gunicorn master and its worker where gunicorn is installed
        assert len(family) - len(mlflow_family) in ((1, 2) if dashboard else (0,)), family
        assert proc.pid not in groups  # the children run in their own process groups
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=60) == 0
        survivors = {}
        for pid in _pids():
            st = _stat(pid)
            if st is not None and st[0] != "Z" and st[2] in groups:
                survivors[pid] = st
        assert survivors == {}, f"still running after Ctrl-C: {survivors}; log:\n{(tmp_path / 'ui.log').read_text()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for group in groups:  # never leave a server behind, even when the test fails
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_verbose_goes_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["-v", "run", "s.yaml"]).verbose is True
    assert parser.parse_args(["run", "s.yaml", "--verbose"]).verbose is True
    assert parser.parse_args(["run", "s.yaml"]).verbose is False


def test_dry_run_marks_the_grid_points_that_fail_at_once(tmp_path, capsys, monkeypatch):
    """A soft prompt crossed with a LoRA rank: the points that put adapters under virtual tokens are listed with
    the reason they will fail, before anything runs."""
    monkeypatch.setattr(models_module, "load", _no_model)
    path = write_suite(
        tmp_path,
        axes={"contexts": [{"name": "empty"}, {"name": "soft_prompt", "n_tokens": 4}]},
        hyperparameters={"lora_rank": {"choices": [0, 8]}, "epochs": 1, "batch_size": 4, "train_inputs": 8},
        sweep={"sampler": "grid", "n_trials": 4},
    )
    assert main(["run", str(path), "--dry-run"]) == 0
    points = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\s+\d+\. ", line)]
    failing = [line for line in points if "fails at once" in line]
    assert len(points) == 4 and len(failing) == 1
    assert "soft_prompt(n_tokens=4)" in failing[0] and "lora_rank=8" in failing[0] and "not 8" in failing[0]


# ---------------------------------------------------------------- `--fast` everywhere, hints that work as printed
def test_every_command_that_takes_a_suite_takes_fast():
    parser = build_parser()
    for argv in (["validate", "s.yaml"], ["run", "s.yaml"], ["report", "s.yaml"], ["gap", "s.yaml"], ["ui", "s.yaml"]):
        assert parser.parse_args([*argv, "--fast"]).fast, argv
    assert parser.parse_args(["export", "s.yaml", "OUT", "--fast"]).fast


def test_hints_of_a_fast_suite_say_fast(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = load_suite(write_suite(tmp_path))
    assert console.command("ui", suite, path="smoke.yaml") == "harness ui smoke.yaml"
    assert console.command("ui", suite.fast(), path="smoke.yaml") == "harness ui smoke.yaml --fast"
    assert console.command("export", suite.fast(), "OUT/") == "harness export smoke.yaml --fast OUT/"


def test_export_before_any_run_prints_the_command_that_works(tmp_path, capsys, monkeypatch):
    """A newcomer's `nox -s benchmark -- --fast` study is found by `export --fast` only: the error says so."""
    monkeypatch.chdir(tmp_path)
    path = write_suite(tmp_path)
    assert main(["export", str(path), "OUT"]) == 2
    err = capsys.readouterr().err
    assert "`harness run smoke.yaml` first, or after a `--fast` run: `harness export smoke.yaml --fast OUT`" in err
    assert main(["export", str(path), "OUT", "--fast"]) == 2
    err = capsys.readouterr().err
    assert "suite 'smoke-fast': no trials recorded (`harness run smoke.yaml --fast` first)" in err
    assert main(["report", str(path), "--fast"]) == 2
    assert "run `harness run smoke.yaml --fast` first" in capsys.readouterr().err
