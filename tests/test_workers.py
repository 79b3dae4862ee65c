"""Several `harness run` processes on one study, against a real PostgreSQL server and a real `mlflow server`.

Each test starts its workers as separate processes (as a user would on several machines), kills them or
the tracking server as a crash would, and then reads both stores back. PostgreSQL runs from the machine's
own binaries (tests/services.py); the tiny model keeps a trial to a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import mlflow
import optuna
import pytest
from helpers import ROOT, write_suite
from services import MlflowServer, Postgres

from harness import stores, sweep
from harness.spec import load_suite
from harness.tracking import TrialRun

pytestmark = pytest.mark.slow

PASSWORD = "pw-Zq81x-never-logged"
# Every trial completes: student_score is always defined (10 items can tie teacher and baseline, which
# leaves gap_closure undefined) and nothing is pruned. Random learning rates: no two trials alike.
SWEEP = {"sampler": "random", "objectives": ["student_score"], "pruner": "none"}
SUITE = {
    "task": {"eval_limit": 10},
    "hyperparameters": {
        "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        "epochs": 1,
        "batch_size": 4,
        "train_inputs": 8,
    },
}
States = optuna.trial.TrialState


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


def env(**extra: str) -> dict[str, str]:
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


def start(suite: Path, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """`harness run SUITE` as its own process, output to `log`, in the suite's folder (results/ lands there)."""
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(suite)],
        cwd=suite.parent,
        env=env(**extra),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"worker still running after {timeout} s:\n{log.read_text()[-3000:]}") from None
    return rc, log.read_text()


_STORAGES: dict[str, optuna.storages.BaseStorage] = {}


def study_of(suite_path: Path) -> optuna.Study:
    """The study as the workers see it; the storage is opened as they open it (an empty SQLite file is
    created under its lock, never beside a worker doing the same) and once per URL."""
    suite = load_suite(suite_path)
    url = stores.storage_url(suite)
    if url not in _STORAGES:
        _STORAGES[url] = sweep.open_storage(url)
    return optuna.load_study(study_name=stores.study_name(suite), storage=_STORAGES[url])


def runs_of(suite_path: Path):
    """The study's MLflow runs: (parent runs, trial runs) as DataFrames."""
    suite = load_suite(suite_path)
    mlflow.set_tracking_uri(stores.tracking_uri(suite))
    exp = mlflow.get_experiment_by_name(f"harness/{suite.name}")
    runs = mlflow.search_runs(
        experiment_ids=[exp.experiment_id], filter_string=f"tags.`harness.study` = '{stores.study_name(suite)}'"
    )
    return runs[runs["tags.harness.kind"] == "study"], runs[runs["tags.harness.kind"] == "trial"]


def wait_for_trial(suite_path: Path, worker_pid: int, timeout: float = 180) -> optuna.trial.FrozenTrial:
    """Wait until the worker with this pid runs a trial whose MLflow run is open (mid-trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for t in study_of(suite_path).get_trials(deepcopy=False, states=(States.RUNNING,)):
                if t.user_attrs.get("worker", "").endswith(f":{worker_pid}") and "mlflow_run_id" in t.user_attrs:
                    return t
        except KeyError:  # the study does not exist yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"worker {worker_pid} started no trial within {timeout} s")


def config(t: optuna.trial.FrozenTrial) -> tuple:
    return tuple(sorted(t.params.items()))


def test_two_workers_share_one_study(tmp_path, postgres, mlflow_server):
    """8 trials, 2 workers started together on empty stores, the storage URL with a password in the suite:
    exactly 8 finished, 8 configurations, both workers did work, one parent run, the password nowhere."""
    storage = postgres.create_database("shared", "harness", PASSWORD)
    path = write_suite(
        tmp_path,
        name="shared",
        sweep={**SWEEP, "n_trials": 8, "storage": storage, "tracking_uri": mlflow_server.uri},
        **SUITE,
    )
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    procs = [start(path, log) for log in logs]
    outputs = []
    for proc, log in zip(procs, logs, strict=True):
        rc, out = finish(proc, log)
        assert rc == 0, out[-3000:]
        assert "Traceback" not in out
        outputs.append(out)

    trials = study_of(path).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [States.COMPLETE] * 8
    assert len({config(t) for t in trials}) == 8
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials} == {str(p.pid) for p in procs}
    parents, children = runs_of(path)
    assert len(parents) == 1
    assert len(children) == 8 and set(children.status) == {"FINISHED"}
    assert set(children["tags.mlflow.parentRunId"]) == {parents.iloc[0].run_id}
    assert sorted(children["tags.optuna.trial_number"].astype(int)) == list(range(8))

    # The password: not in the logs, results/, the MLflow server's store and artifacts, the work folder.
    assert "harness:***@127.0.0.1" in outputs[0] + outputs[1]  # the storage URL was logged, redacted
    assert (tmp_path / "results" / "shared" / "provenance.json").is_file()
    searched = [*logs, *(tmp_path / "results").rglob("*"), *(tmp_path / ".harness").rglob("*")]
    searched += list(mlflow_server.root.rglob("*"))
    files = [f for f in searched if f.is_file()]
    assert any(f.name == "suite.yaml" for f in files), "the trials' suite.yaml artifacts were searched"
    leaks = [str(f) for f in files if PASSWORD.encode() in f.read_bytes()]
    assert leaks == []


def test_three_workers_on_postgres_complete_exactly_n_trials(tmp_path, postgres, mlflow_server):
    """6 trials, 3 workers started together on PostgreSQL and an MLflow server: exactly 6 complete (none
    surplus, none twice), 6 distinct configurations, one MLflow run per trial, every worker exits 0."""
    n = 6
    storage = postgres.create_database("three", "harness", PASSWORD)
    path = write_suite(
        tmp_path,
        name="three",
        sweep={**SWEEP, "n_trials": n, "storage": storage, "tracking_uri": mlflow_server.uri},
        **SUITE,
    )
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    procs = [start(path, log) for log in logs]
    for proc, log in zip(procs, logs, strict=True):
        rc, out = finish(proc, log, timeout=600)
        assert rc == 0, out[-3000:]
        assert "Traceback" not in out

    trials = study_of(path).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [States.COMPLETE] * n
    assert len({config(t) for t in trials}) == n
    parents, children = runs_of(path)
    assert len(parents) == 1
    assert len(children) == n and set(children.status) == {"FINISHED"}
    assert sorted(children["tags.optuna.trial_number"].astype(int)) == list(range(n))


@pytest.mark.parametrize("stores_kind", ["sqlite", "postgres+server"])
def test_workers_starting_at_the_same_instant_on_empty_stores(tmp_path, postgres, mlflow_server, stores_kind):
    """Two processes open the same empty stores at the same moment (released by one file): neither crashes,
    and they share one study and one parent run."""
    sweep_cfg = {**SWEEP, "n_trials": 2}
    if stores_kind != "sqlite":
        db = f"instant{os.getpid()}"
        sweep_cfg |= {"storage": postgres.create_database(db, "harness", PASSWORD), "tracking_uri": mlflow_server.uri}
    path = write_suite(tmp_path, name=f"instant-{stores_kind.replace('+', '-')}", sweep=sweep_cfg, **SUITE)
    go = tmp_path / "go"
    code = (
        "import sys, time, pathlib\n"
        "from harness.spec import load_suite\n"
        "from harness import sweep\n"
        "suite = load_suite(sys.argv[1])\n"
        "pathlib.Path(sys.argv[2] + '.' + sys.argv[3]).touch()\n"
        "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.005)\n"
        "joined = sweep.join(suite)\n"
        "print('joined', joined.study.study_name, joined.parent_run_id)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(go), str(i)],
            cwd=tmp_path,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"go.{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker died while importing"
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "Traceback" not in out, out[-3000:]
    joined = {line for out in outs for line in out.splitlines() if line.startswith("joined ")}
    assert len(joined) == 1, joined  # same study, same parent run
    parents, _ = runs_of(path)
    assert len(parents) == 1


def test_kill_9_mid_trial_is_rerun_by_the_other_worker(tmp_path, postgres, mlflow_server):
    """kill -9 of one worker mid-trial: the other finishes the study, the killed configuration is run again,
    and neither store keeps a RUNNING trial or run."""
    storage = postgres.create_database("killed", "harness", PASSWORD)
    path = write_suite(
        tmp_path,
        name="killed",
        sweep={**SWEEP, "n_trials": 3, "storage": storage, "tracking_uri": mlflow_server.uri},
        **SUITE,
    )
    victim = start(path, tmp_path / "victim.log")
    survivor = start(path, tmp_path / "survivor.log")
    killed = wait_for_trial(path, victim.pid)
    victim.kill()  # SIGKILL: no handler runs, the trial's heartbeats just stop
    victim.wait()
    rc, out = finish(survivor, tmp_path / "survivor.log")
    assert rc == 0 and "Traceback" not in out, out[-3000:]

    trials = study_of(path).get_trials(deepcopy=False)
    done = [t for t in trials if t.state == States.COMPLETE]
    assert len(done) == 3
    assert {t.state for t in trials} == {States.COMPLETE, States.FAIL}
    dead = trials[killed.number]
    assert dead.state == States.FAIL
    rerun = [t for t in done if t.user_attrs.get("requeued_from") == killed.number]
    assert len(rerun) == 1 and config(rerun[0]) == config(dead)
    assert f"#{killed.number:<3} FAIL" in out and f"rerun as #{rerun[0].number}" in out
    _, children = runs_of(path)
    assert "RUNNING" not in set(children.status)
    assert (children.status == "FINISHED").sum() == 3
    ended = children[children.run_id == killed.user_attrs["mlflow_run_id"]].iloc[0]
    assert ended.status == "KILLED" and ended["tags.harness.reason"].startswith("interrupted")


def test_tracking_server_down_mid_trial(tmp_path):
    """The MLflow server dies mid-trial. Longer than the client's retries: the worker stops with one line, the
    trial is requeued; the next start ends the orphaned run and reruns the configuration. Back within the
    retries: the trial just goes on. No trial is lost, no run is left RUNNING."""
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        path = write_suite(tmp_path, name="outage", sweep={**SWEEP, "n_trials": 2, "tracking_uri": server.uri}, **SUITE)
        impatient = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
        first = start(path, tmp_path / "first.log", **impatient)
        cut = wait_for_trial(path, first.pid)
        server.stop()
        rc, out = finish(first, tmp_path / "first.log")
        assert rc == 1 and "Traceback" not in out, out[-3000:]
        error = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "MLflow tracking store" in error[0] and "unreachable" in error[0], out[-2000:]
        study = study_of(path)
        assert study.trials[cut.number].state == States.FAIL
        assert [t.user_attrs["requeued_from"] for t in study.trials if t.state == States.WAITING] == [cut.number]

        server.start()
        patient = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
        second = start(path, tmp_path / "second.log", **patient)
        wait_for_trial(path, second.pid)
        server.stop()  # down for as long as a restart takes: within the retries
        server.start()
        rc, out = finish(second, tmp_path / "second.log")
        assert rc == 0 and "Traceback" not in out, out[-3000:]
    finally:
        server.stop()

    trials = study_of(path).get_trials(deepcopy=False)
    assert sum(t.state == States.COMPLETE for t in trials) == 2
    assert [t.number for t in trials if t.state != States.COMPLETE] == [cut.number]
    rerun = [t for t in trials if t.user_attrs.get("requeued_from") == cut.number]
    assert len(rerun) == 1 and rerun[0].state == States.COMPLETE and config(rerun[0]) == config(cut)
    server.start()
    try:
        _, children = runs_of(path)
    finally:
        server.stop()
    assert "RUNNING" not in set(children.status)
    assert (children.status == "FINISHED").sum() == 2
    orphan = children[children.run_id == cut.user_attrs["mlflow_run_id"]].iloc[0]
    assert orphan.status == "KILLED" and "interrupted" in orphan["tags.harness.reason"]


def test_workers_logging_the_same_inputs_at_once_do_not_collide(mlflow_server):
    """Two workers' seeds log the same training inputs (same name and digest) at once: MLflow's unique
    (experiment, name, digest) row races; each run still gets the dataset and nothing raises (as in CI)."""
    mlflow.set_tracking_uri(mlflow_server.uri)
    client = mlflow.MlflowClient()
    rows = [{"input": f"x{i}", "reference": str(i)} for i in range(8)]
    for attempt in range(4):
        exp = client.create_experiment(f"race-{attempt}-{time.time_ns()}")
        runs = [client.create_run(exp).info.run_id for _ in range(8)]
        barrier = Barrier(len(runs))

        def log(run_id: str, barrier: Barrier = barrier) -> None:
            barrier.wait()
            TrialRun(run_id).log_inputs(rows, name="parity-train-8", context="training")

        with ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(log, runs))
        for run_id in runs:
            assert [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs] == ["parity-train-8"]
