"""CPU thread settings, applied once at process start (before torch is imported).

Why: torch's CPU wheels use OpenMP with as many threads as cores, and OpenMP threads busy-wait
(spin) at every parallel region's barrier. On a machine shared with other processes a spinning
thread holds a core that the thread it waits for needs, so a step can take many times longer
than the load alone explains (results/perf/threads.md measures it). `configure` makes waiting
threads sleep (`OMP_WAIT_POLICY=PASSIVE`), uses at most one thread per usable physical core,
and one inter-op thread. Every variable the user already set is left alone; `HARNESS_THREADS=N`
fixes the thread count.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "HARNESS_THREADS"


class ThreadsError(ValueError):
    """A bad $HARNESS_THREADS: the CLI prints it as one line and exits 2."""


def physical_cores() -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo; None where it cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores: set[tuple[str, str]] = set()
    package = core = ""
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            package = value
        elif key == "core id":
            core = value
        elif not key:
            if core:
                cores.add((package, core))
            package = core = ""
    return len(cores) or None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. `taskset` or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """min(physical cores, usable CPUs): hyperthread siblings and CPUs outside the mask add only contention."""
    physical = physical_cores()
    usable = usable_cpus()
    return max(1, min(usable, physical) if physical else usable)


def wanted(threads: int | None = None, environ: dict[str, str] | None = None) -> int:
    """The thread count: `threads` if given, else $HARNESS_THREADS, else `default_threads()`.

    A bad $HARNESS_THREADS is a one-line ThreadsError naming the variable.
    """
    env = os.environ if environ is None else environ
    if threads is None and env.get(ENV, "").strip():
        raw = env[ENV].strip()
        try:
            threads = int(raw)
        except ValueError:
            raise ThreadsError(f"${ENV}: {raw!r} is not a whole number of threads") from None
    if threads is not None and threads < 1:
        raise ThreadsError(f"${ENV}: threads must be at least 1, got {threads}")
    return threads if threads is not None else default_threads()


def configure(threads: int | None = None) -> int:
    """Apply the settings for this process and return the intra-op thread count.

    Environment first (read by OpenMP/MKL when torch loads them; children inherit it), variables
    already set win; then torch itself when it is already imported. Safe to call more than once.
    """
    n = wanted(threads)
    explicit = threads is not None or bool(os.environ.get(ENV, "").strip())
    user_omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not explicit and user_omp.isdigit() and int(user_omp) >= 1:
        n = int(user_omp)  # the user's own OMP_NUM_THREADS
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if explicit:
            os.environ[key] = str(n)
        else:
            os.environ.setdefault(key, str(n))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only settable before the first inter-op work; later calls keep the pool
            pass
    return n
