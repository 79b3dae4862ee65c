"""Child servers that stop with us: `harness ui` runs the MLflow UI (and optuna-dashboard) until Ctrl-C.

Each child starts in its own session, hence its own process group, so the terminal's Ctrl-C reaches only
us, and we stop the whole group (the server and every worker it forked), not just the process we started:
`mlflow ui` forks a uvicorn worker that outlived a plain terminate().
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, `kill`, a closed terminal


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    """SIGTERM to each child's process group, SIGKILL to whatever of it is left after the grace period."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # workers that outlived their parent, or a parent that hung
        except ProcessLookupError:
            pass
        p.wait()


def run(commands: Mapping[str, Sequence[str]], env: Mapping[str, str]) -> int:
    """Start every command, wait until one exits or we are interrupted, then stop all of them with their
    process groups. Returns 0 after an interrupt, else the exit code of the child that stopped (1 if it was 0)."""
    # SIGINT is set explicitly too: a shell's background job starts with it ignored, and Python keeps that.
    previous = {sig: signal.signal(sig, _interrupt) for sig in SIGNALS}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, cmd in commands.items():
            procs[name] = subprocess.Popen(list(cmd), env=dict(env), start_new_session=True)
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        name, p = next((n, p) for n, p in procs.items() if p.poll() is not None)
        print(f"{name} stopped (exit code {p.returncode}); stopping the rest", file=sys.stderr)
        return p.returncode or 1
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in SIGNALS:  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        stop(list(procs.values()))
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
