"""`harness validate` as a user runs it, on the malformed suites in tests/bad_suites.

Each file there starts with a comment saying what is wrong and one `# expect:` line per problem:
validate must print exactly those lines (each naming the file and the field), exit 2, never a
traceback, and answer fast because it imports none of the heavy libraries.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, write_suite

BAD_DIR = ROOT / "tests" / "bad_suites"
BAD = sorted(BAD_DIR.glob("*.yaml"))
HEAVY = ("torch", "transformers", "lm_eval", "mlflow", "optuna")
# A bad suite must be answered in well under a second (measured ~0.2 s); the bound is loose for a busy CI machine.
MAX_SECONDS = 5.0


def _cli(*args: str | Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, *extra, "-m", "harness.cli", *map(str, args)]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    return out, time.perf_counter() - start


def _expected(path: Path) -> list[str]:
    lines = path.read_bytes().splitlines()
    return [line.removeprefix(b"# expect: ").decode() for line in lines if line.startswith(b"# expect: ")]


def test_the_collection():
    assert len(BAD) >= 20
    for path in BAD:
        first = path.read_bytes().splitlines()[0]
        assert first.startswith(b"# ") and not first.startswith(b"# expect:"), f"{path.name}: say what is wrong first"
        assert _expected(path), f"{path.name}: no `# expect:` line"


def test_the_readme_counts_the_collection():
    """The README says how many bad suites there are; adding one means updating it."""
    assert f"`tests/bad_suites/` holds {len(BAD)} such files" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_suite_one_line_per_problem(path):
    rel = path.relative_to(ROOT)
    out, seconds = _cli("validate", rel)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.splitlines()
    expected = _expected(path)
    assert len(lines) == len(expected), out.stderr
    for line, want in zip(lines, expected, strict=True):
        assert line.startswith(f"error: {rel}: {want}"), line
    assert seconds < MAX_SECONDS, f"{path.name}: {seconds:.2f} s"


@pytest.mark.parametrize(
    ("target", "message"),
    [("tests/bad_suites", "is a folder; give a suite YAML file"), ("tests/no_such.yaml", "no such suite file")],
)
def test_folder_and_missing_file(target, message):
    out, seconds = _cli("validate", target)
    assert (out.returncode, out.stderr) == (2, f"error: {target}: {message}\n")
    assert seconds < MAX_SECONDS


def test_validate_imports_no_heavy_library():
    """`python -X importtime` lists every module imported: none of the heavy ones for a local-task suite."""
    for suite in ("suites/smoke.yaml", "tests/bad_suites/misspelled_model.yaml", "tests/no_such.yaml"):
        out, _ = _cli("validate", suite, extra=("-X", "importtime"))
        imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
        assert imported, out.stderr
        loaded = sorted(m for m in imported if m.split(".")[0] in HEAVY)
        assert not loaded, f"{suite}: {loaded}"


def test_run_checks_before_the_study_exists(tmp_path):
    """A misspelled model used to fail 19 s into `run`, leaving an empty study behind."""
    path = write_suite(tmp_path, models={"teacher": "smollm2-136m"})
    out, seconds = _cli("run", path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: {path}: models.teacher: unknown model 'smollm2-136m'")
    assert not (tmp_path / ".harness").exists(), "no study, no MLflow store"
    assert seconds < MAX_SECONDS
