"""harness.threads: OpenMP threads that sleep, one per usable core, set before torch loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness import threads


def test_default_is_bounded_by_affinity_and_cores() -> None:
    n = threads.default_threads()
    assert 1 <= n <= threads.usable_cpus()
    physical = threads.physical_cores()
    if physical:
        assert n <= physical


def test_env_override_and_bad_values() -> None:
    assert threads.wanted(environ={"HARNESS_THREADS": "3"}) == 3
    assert threads.wanted(5, environ={"HARNESS_THREADS": "3"}) == 5
    assert threads.wanted(environ={}) == threads.default_threads()
    with pytest.raises(threads.ThreadsError, match=r"\$HARNESS_THREADS: 'many'"):
        threads.wanted(environ={"HARNESS_THREADS": "many"})
    with pytest.raises(threads.ThreadsError, match="at least 1"):
        threads.wanted(environ={"HARNESS_THREADS": "0"})


def _fresh(code: str, **env: str) -> dict[str, object]:
    """Run `code` in a fresh interpreter (thread settings are fixed when torch loads) and parse its JSON."""
    # every variable `configure` sets: an in-process `cli.main` earlier in the session has set them in this process
    ours = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "HARNESS_THREADS")
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    out = subprocess.run([sys.executable, "-c", code], env=clean | env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = (
    "import json, os; from harness import threads; n = threads.configure(); import torch; "
    "print(json.dumps({'n': n, 'torch': torch.get_num_threads(), 'wait': os.environ['OMP_WAIT_POLICY']}))"
)


def test_configure_before_torch_sets_passive_wait_and_threads() -> None:
    got = _fresh(PROBE)
    assert got["wait"] == "PASSIVE"
    assert got["torch"] == got["n"] == threads.default_threads()
    got = _fresh(PROBE, HARNESS_THREADS="1")
    assert got["torch"] == got["n"] == 1


def test_user_settings_win() -> None:
    got = _fresh(PROBE, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert got["wait"] == "ACTIVE"
    assert got["torch"] == got["n"] == 1


def test_configure_after_torch_import_sets_torch() -> None:
    code = (
        "import json, torch; from harness import threads; n = threads.configure(1); "
        "print(json.dumps({'n': n, 'torch': torch.get_num_threads(), 'wait': 'x'}))"
    )
    assert _fresh(code)["torch"] == 1


def test_cli_bad_env_is_one_line_exit_2() -> None:
    env = os.environ | {"HARNESS_THREADS": "lots"}
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "validate", "suites/quickstart.yaml"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: $HARNESS_THREADS: 'lots' is not a whole number of threads"]
