"""Damaged state a user can meet after a crash, a full disk or a copy gone wrong: a corrupted optuna.db or
mlflow.db, a read-only work folder, a truncated kept-student context. Each is one `error:` line naming the file
and what to do, exit 2, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import write_suite

from harness import cli

STORE_ENV = ("HARNESS_STORAGE", "MLFLOW_TRACKING_URI", "HARNESS_CACHE_DIR")


@pytest.fixture
def plain(monkeypatch):
    """The default stores: SQLite files under the suite's work_dir."""
    for name in STORE_ENV:
        monkeypatch.delenv(name, raising=False)


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("db", ["optuna.db", "mlflow.db"])
def test_a_corrupted_database_is_one_line_naming_it(tmp_path, capsys, plain, db):
    """A store file overwritten with garbage: `run` names the file, says it is damaged and what to do, before
    any model is loaded."""
    suite = write_suite(tmp_path)
    work = tmp_path / ".harness"
    work.mkdir()
    (work / db).write_bytes(b"\x13not sqlite at all\x00" * 200)
    assert cli.main(["run", str(suite)]) == 2
    line = _one_error(capsys)
    assert str((work / db).resolve()) in line and "damaged" in line and "rerun" in line, line


def test_a_truncated_student_context_is_one_line(tmp_path, capsys, plain):
    """The kept c' (`student/student_context.json`) cut short on disk: export names it and what to do."""
    from harness import export, keep
    from harness.spec import load_suite

    suite = load_suite(write_suite(tmp_path))
    artifact = tmp_path / "run-artifacts" / keep.ARTIFACTS / keep.CONTEXT_FILE
    artifact.parent.mkdir(parents=True)
    artifact.write_text('{"task": "parity", "context": "emp')
    with pytest.raises(export.ExportError) as e:
        export.read_context(suite, 3, artifact)
    message = str(e.value)
    assert "\n" not in message and str(artifact) in message and "damaged" in message and "--trial" in message


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` unwritable for this process: mode 555, or for root (who writes anywhere) the immutable flag."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: no folder is read-only for root")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_work_folder_is_one_line(tmp_path, capsys, plain):
    """A work folder that cannot be written: `run` stops first thing, naming the folder."""
    suite = write_suite(tmp_path)
    work = tmp_path / ".harness"
    work.mkdir()
    with read_only(work):
        assert cli.main(["run", str(suite)]) == 2
    line = _one_error(capsys)
    assert f"folder {work.resolve()} is not writable" in line, line
    assert list(work.iterdir()) == []


@pytest.mark.slow
def test_report_after_the_work_folder_moved_keeps_the_forest_plot(cli_smoke, tmp_path):
    """MLflow records artifact locations as absolute paths; with the work folder moved, `report` still reads each
    configuration's item_scores.json (under the suite's new work_dir) and draws the forest plot from them; the
    summary it attaches to the study's run goes under the new work_dir too, never re-creating the old one."""
    import sys

    from harness import stores
    from harness.report.markdown import FOREST
    from harness.spec import load_suite

    suite = load_suite(cli_smoke["suite"])
    old = stores.work_dir(suite)
    shutil.copytree(old, tmp_path / ".harness")
    moved = write_suite(tmp_path)  # same suite, work_dir = tmp_path/.harness
    old.rename(old.with_name("away"))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "harness.cli", "report", str(moved), "--out", str(tmp_path / "results")],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=cli_smoke["env"],
            timeout=600,
        )
    finally:
        recreated = old.exists()  # the summary logged to the parent run lands where MLflow recorded it
        shutil.rmtree(old, ignore_errors=True)
        old.with_name("away").rename(old)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not recreated, "report re-created the old work folder"
    folder = tmp_path / "results" / suite.name
    assert (folder / FOREST).is_file(), (folder / "summary.md").read_text()
    assert "forest plot: *skipped" not in (folder / "summary.md").read_text()
    assert list((tmp_path / ".harness" / "mlartifacts").glob("**/artifacts/report/summary.md"))  # the new place


@pytest.mark.slow
def test_report_of_a_read_only_work_folder_warns_once(cli_smoke, tmp_path):
    """`report` on a study whose work folder cannot be written (someone else's results): the report is written,
    one warning names the folder, and the summary the study's MLflow run would get is skipped."""
    from harness import stores
    from harness.spec import load_suite

    shutil.copytree(stores.work_dir(load_suite(cli_smoke["suite"])), tmp_path / ".harness")
    suite = write_suite(tmp_path)
    with read_only(tmp_path / ".harness"):
        proc = subprocess.run(
            [sys.executable, "-m", "harness.cli", "report", str(suite), "--out", str(tmp_path / "results")],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=cli_smoke["env"],
            timeout=600,
        )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"folder {(tmp_path / '.harness').resolve()} is not writable" in warnings[0]
    assert (tmp_path / "results" / "smoke" / "summary.md").is_file()
