"""Loading a local task runs only the named task's YAML (and what it includes), nothing else in its folder."""

from __future__ import annotations

import shutil

import pytest
from helpers import PARITY

from harness.tasks import TaskError, load_task, task_config


def test_a_stray_yaml_in_the_task_folder_never_runs(tmp_path):
    folder = tmp_path / "parity"
    shutil.copytree(PARITY, folder)
    (folder / "evil.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('RAN').write_text('ran')\ndef f(x):\n    return x\n"
    )
    (folder / "a_notes.yaml").write_text("task: notes\nprocess_docs: !function evil.f\n")  # sorts first
    (folder / "broken.yaml").write_text("task: [unclosed\n")
    task = load_task("parity", folder)
    assert task.name == "parity" and len(task.eval_docs()) == 40
    assert not (folder / "RAN").exists()
    with pytest.raises(TaskError, match="no task YAML with 'task: nothere'"):
        task_config("nothere", folder)
    assert not (folder / "RAN").exists()


def test_the_named_task_still_runs_its_own_functions(tmp_path):
    """The task's own `!function` tags (and its include) are resolved as lm-eval resolves them."""
    folder = tmp_path / "parity"
    shutil.copytree(PARITY, folder)
    (folder / "utils.py").write_text("def keep(docs):\n    return docs.select(range(5))\n")
    main = (folder / "parity.yaml").read_text()
    (folder / "base.yaml").write_text(main.replace("task: parity", "task: parity_base"))
    (folder / "parity.yaml").write_text("include: base.yaml\ntask: parity\nprocess_docs: !function utils.keep\n")
    cfg = task_config("parity", folder, allow_code=True)
    assert isinstance(cfg, dict) and callable(cfg["process_docs"]) and cfg["task"] == "parity"
    assert len(load_task("parity", folder, allow_code=True).eval_docs()) == 5


def test_task_code_runs_only_when_the_suite_allows_it(tmp_path):
    """Without `task.allow_code`, a task that names Python is refused before its module is imported."""
    folder = tmp_path / "parity"
    shutil.copytree(PARITY, folder)
    (folder / "utils.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('RAN').write_text('ran')\n"
        "def keep(docs):\n    return docs\n"
    )
    with (folder / "parity.yaml").open("a") as f:
        f.write("process_docs: !function utils.keep\n")
    for load in (task_config, load_task):
        with pytest.raises(TaskError, match=r"parity.yaml line \d+: !function .*set `task.allow_code: true`"):
            load("parity", folder)
        assert not (folder / "RAN").exists()
    load_task("parity", folder, allow_code=True)
    assert (folder / "RAN").exists()
