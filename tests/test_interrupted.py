"""A study stopped from outside mid-trial: the disk fills up, or the process is killed with SIGKILL while it
trains. Each test runs `harness run` as a user would (a process on the smoke suite, real Optuna and MLflow
stores), then reruns it and reads the stores back: the finished trials are untouched, exactly the asked trials
complete and none is computed twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from helpers import ROOT, write_suite

from harness import console, disk, stores, tracking
from harness.spec import load_suite

States = optuna.trial.TrialState

# `harness run` under a file-size limit (RLIMIT_FSIZE, inherited by nothing else): a write past it fails with
# EFBIG as on a full disk (SIGXFSZ ignored, as a full disk sends no signal); no root or tmpfs needed.
LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from harness.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _env() -> dict[str, str]:
    cleared = ("MLFLOW_TRACKING_URI", "HARNESS_STORAGE", "HARNESS_CACHE_DIR", "TQDM_DISABLE")
    env = {k: v for k, v in os.environ.items() if k not in cleared}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def harness(suite: Path, *args: str, prefix: tuple[str, ...] = ("-m", "harness.cli"), **env: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, *prefix, "run", str(suite), "--no-report", *args],
        cwd=suite.parent,
        env=_env() | env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


def study_of(path: Path) -> optuna.Study:
    suite = load_suite(path)
    return optuna.load_study(study_name=stores.study_name(suite), storage=stores.storage_url(suite))


def mlflow_runs(path: Path) -> list:
    suite = load_suite(path)
    client = mlflow.MlflowClient(stores.tracking_uri(suite))
    exp = client.get_experiment_by_name(tracking.experiment_name(suite))
    return client.search_runs([exp.experiment_id], max_results=1000)


def finished(path: Path) -> dict[int, tuple]:
    """Completed trials: number → (configuration, objective, MLflow run id, that run's status and metric)."""
    runs = {r.info.run_id: r for r in mlflow_runs(path)}
    out = {}
    for t in study_of(path).get_trials(deepcopy=False, states=(States.COMPLETE,)):
        run = runs[t.user_attrs["mlflow_run_id"]]
        conf = (t.params["target"], t.params["context"], t.params["loss"])
        out[t.number] = (conf, t.value, run.info.run_id, run.info.status, run.data.metrics["validation_gap_closure"])
    return out


def test_a_full_disk_is_named_in_one_line(tmp_path):
    """A real write on a full device (/dev/full: ENOSPC from the kernel), a quota and a size limit are 'disk full'
    with what was written; other OS errors are not."""
    with pytest.raises(OSError) as e, open("/dev/full", "w") as f:  # noqa: PTH123
        f.write("x")
        f.flush()
    assert disk.full(e.value) == "disk full: no space left on the device (ENOSPC)"
    import errno

    too_big = OSError(errno.EFBIG, "File too large", str(tmp_path / "mlflow.db"))
    assert disk.full(RuntimeError("wrapped")) is None
    try:
        raise RuntimeError("MLflow wraps it") from too_big
    except RuntimeError as wrapped:
        line = disk.full(wrapped)
    assert line is not None and line.startswith(f"disk full writing {tmp_path / 'mlflow.db'}:") and "EFBIG" in line
    assert disk.full(OSError(errno.EDQUOT, "quota")) == "disk full: disk quota exceeded (EDQUOT)"
    assert disk.full(PermissionError(errno.EACCES, "denied", "x")) is None


@pytest.mark.slow
def test_disk_full_mid_trial_then_rerun(tmp_path):
    """The disk fills up while the second trial runs (a file-size limit just above the stores' size: the first
    write that grows MLflow's database fails): one `error:` line naming the file and 'disk full', exit 2, no
    traceback. The finished trial keeps its values and runs; the rerun, with room again, completes exactly the
    asked trials."""
    path = write_suite(tmp_path)
    code, out = harness(path, "--n-trials", "1")
    assert code == 0, out[-3000:]
    before = finished(path)
    assert len(before) == 1
    biggest = max(f.stat().st_size for f in (tmp_path / ".harness").rglob("*") if f.is_file())

    code, out = harness(path, prefix=("-c", LIMITED, str(biggest + 16384)))
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in out and " mlflow." not in out, out[-5000:]
    assert "disk full" in errors[0] and str(tmp_path / ".harness" / "mlflow.db") in errors[0], errors[0]
    assert "seed 1/2 started" in out, out  # it failed inside the second trial, not before it
    assert finished(path) == before

    code, out = harness(path)
    assert code == 0, out[-3000:]
    after = finished(path)
    assert len(after) == 2 and {c for c, *_ in after.values()} == {
        ("greedy", "empty", "forward_kl"),
        ("greedy", "fewer_demos(k=1)", "forward_kl"),
    }
    assert {n: after[n] for n in before} == before  # the finished trial: same value, same run, not recomputed
    counted = [t for t in study_of(path).get_trials(deepcopy=False) if t.state == States.COMPLETE]
    assert len(counted) == 2


# Teacher work and training long enough to be seen in the act (the whole train split, 96 steps of the tiny
# model: seconds), progress lines every 0.01 s instead of every 30 s.
LONG_TRAINING = {"hyperparameters": {"learning_rate": 1.0e-3, "epochs": 6, "batch_size": 4, "train_inputs": 64}}
# "0" is the floor, a line every 0.01 s: the tiny teacher phase can end inside 0.1 s on a fast CPU (11 lines there)
OFTEN = {console.PROGRESS_ENV: "0"}
TRAINING_LINE = re.compile(r"harness\.progress: training forward_kl: step (\d+)/96")


@pytest.fixture(scope="module")
def first_trial(tmp_path_factory) -> dict:
    """The smoke study's first trial, run alone with progress lines every 0.01 s."""
    tmp = tmp_path_factory.mktemp("first-trial")
    path = write_suite(tmp, **LONG_TRAINING)
    code, out = harness(path, "--n-trials", "1", **OFTEN)
    assert code == 0, out[-3000:]
    return {"path": path, "out": out}


def test_progress_lines_inside_each_phase_by_default_within_a_minute(monkeypatch, caplog):
    """A phase that runs past the interval says so while it runs; one that ends sooner says nothing. The default
    interval is 30 s, so a loaded run prints inside its first minute."""
    monkeypatch.delenv(console.PROGRESS_ENV, raising=False)
    assert console.progress_every() <= 60
    with caplog.at_level("INFO", logger="harness.progress"):
        with console.phase("quick work", every=30):
            pass
        with console.phase("slow work", every=0.05):
            time.sleep(0.3)
        ticker = console.Ticker("training x", 4, "step", every=0)
        for _ in range(4):
            ticker.add(1, "loss 0.5")
    lines = [r.getMessage() for r in caplog.records if r.name == "harness.progress"]
    assert not [line for line in lines if line.startswith("quick work")]
    assert len([line for line in lines if line.startswith("slow work: running for ")]) >= 2
    assert lines[-1] == "training x: step 4/4 (100%), loss 0.5, 0 s"


@pytest.mark.slow
def test_a_run_shows_progress_in_the_teacher_baseline_and_training_phases(first_trial):
    """`harness run` into a file: progress lines from the teacher's targets, lm-eval's scoring of the teacher and
    the baseline, and the training steps, between the seed's start and end lines."""
    out = first_trial["out"]
    assert re.search(r"harness\.progress: teacher (targets \(greedy\)|top-16 log-probs) for 64 \w+: running", out), out
    assert re.search(r"harness\.progress: lm-eval scoring teacher on parity( \(\d+ items\))?: running for", out), out
    assert re.search(r"harness\.progress: lm-eval scoring baseline on parity", out), out
    assert TRAINING_LINE.search(out), out


@pytest.mark.slow
def test_kill_9_during_training_then_rerun(first_trial):
    """SIGKILL of `harness run` (its whole process group) while the second trial trains, then a rerun: exactly the
    2 asked trials complete, the finished one keeps its run and values, the teacher cache written before the kill
    is reused (no entry rewritten), and neither store keeps a RUNNING trial or run."""
    path = first_trial["path"]
    before = finished(path)
    cache = {p: p.stat().st_mtime_ns for p in (path.parent / ".harness" / "cache").rglob("*.pt")}
    log = path.parent / "killed.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "run", str(path), "--no-report"],
            cwd=path.parent,
            env=_env() | OFTEN,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 300
    try:
        while not TRAINING_LINE.search(log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = log.read_text()
    assert "trial #1 " in text and "trial 2/2" not in text, text  # killed while trial #1 trained
    steps = [int(m) for m in TRAINING_LINE.findall(text)]
    assert steps and max(steps) < 96, text
    running = study_of(path).get_trials(deepcopy=False, states=(States.RUNNING,))
    assert [t.number for t in running] == [1]
    cache |= {p: p.stat().st_mtime_ns for p in (path.parent / ".harness" / "cache").rglob("*.pt") if p not in cache}

    code, out = harness(path)
    assert code == 0 and "Traceback" not in out, out[-3000:]
    trials = study_of(path).get_trials(deepcopy=False)
    after = finished(path)
    assert len(after) == 2 and {n: after[n] for n in before} == before
    assert len({c for c, *_ in after.values()}) == 2
    killed = trials[1]
    assert killed.state == States.FAIL
    rerun = [t for t in trials if t.user_attrs.get("requeued_from") == 1]
    assert len(rerun) == 1 and rerun[0].state == States.COMPLETE and rerun[0].params == killed.params
    assert len(trials) == 3  # nothing else ran
    assert {p: p.stat().st_mtime_ns for p in cache} == cache  # no teacher work redone
    statuses = [r.info.status for r in mlflow_runs(path)]
    assert "RUNNING" not in statuses
