"""A study stopped from outside mid-trial: the disk fills up, or the process is killed with SIGKILL while it
trains. Each test runs `harness run` as a user would (a process on the smoke suite, real Optuna and MLflow
stores), then reruns it and reads the stores back: the finished trials are untouched, exactly the asked trials
complete and none is computed twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from helpers import ROOT, write_suite

from harness import disk, stores, tracking
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


def harness(suite: Path, *args: str, prefix: tuple[str, ...] = ("-m", "harness.cli")) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, *prefix, "run", str(suite), "--no-report", *args],
        cwd=suite.parent,
        env=_env(),
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
    assert code == 2 and len(errors) == 1 and "Traceback" not in out, out[-5000:]
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
