"""Suite validation: every problem is one line naming the file and the field, exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT, SUITES

from harness.cli import main
from harness.spec import Range, SuiteError, load_suite


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_suites_validate(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


BAD = [
    ("name: x\n", "task: Field required"),
    (
        "name: x\ntask: {name: parity, path: tasks/parity}\nmodels: {teacher: a, studnet: b}\n",
        "models.studnet: Extra inputs are not permitted",
    ),
    (
        "name: x\ntask: {name: parity, path: tasks/parity}\naxes: {targets: [{name: greedyy}]}\n",
        "axes.targets.0.name: unknown 'greedyy'",
    ),
    (
        "name: x\ntask: {name: parity, path: tasks/parity}\naxes: {contexts: [{name: fewer_demos, n: 2}]}\n",
        "axes.contexts.0: 'fewer_demos' takes no parameter ['n']",
    ),
    (
        "name: x\ntask: {name: parity, path: tasks/parity}\naxes: {losses: [{name: jsd, gamma: 2}]}\n",
        "axes.losses.0: 'jsd' takes no parameter ['gamma']",
    ),
    (
        "name: x\ntask: {name: parity, path: tasks/parity}\nhyperparameters: {learning_rate: {low: 1, high: 0}}\n",
        "hyperparameters.learning_rate",
    ),
    ("name: x\ntask: {name: parity, path: tasks/parity}\nsweep: {sampler: bayes}\n", "sweep.sampler"),
    ("name: x\ntask: {name: parity, path: nowhere}\n", "task.path: folder nowhere not found"),
    (
        "name: x\ntask: {name: parity, path: tasks/parity, control: {name: c, path: gone}}\n",
        "task.control.path: folder gone not found",
    ),
    ("name: x\ntask: {name: parity, path: tasks/parity, control: {name: c, demos: -1}}\n", "task.control.demos"),
    ("name: [x\n", "invalid YAML"),
    ("- just\n- a list\n", "a suite must be a mapping"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_suite_names_file_and_field(tmp_path, text, message):
    (tmp_path / "tasks" / "parity").mkdir(parents=True)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    line = str(err.value)
    assert line.startswith(str(path)) and message in line and "\n" not in line


@pytest.mark.slow
def test_cli_bad_suite_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntask: {name: parity}\nepochs: 3\n")
    for cmd in ("validate", "run"):
        out = subprocess.run(
            [sys.executable, "-m", "harness.cli", cmd, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=300
        )
        assert out.returncode == 2
        assert out.stderr.strip() == f"error: {path}: epochs: Extra inputs are not permitted"


def test_cli_missing_suite(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "none.yaml")]) == 2
    assert "no such suite file" in capsys.readouterr().err


def test_ranges_and_labels(tmp_path):
    path = tmp_path / "s.yaml"
    (tmp_path / "t").mkdir()
    path.write_text(
        "name: s\ntask: {name: parity, path: t}\n"
        "axes: {contexts: [{name: fewer_demos, k: 1}, {name: empty}]}\n"
        "hyperparameters: {learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true},\n"
        "                  lora_rank: {choices: [0, 8]}}\n"
    )
    suite = load_suite(path)
    assert [v.label for v in suite.axes.contexts] == ["fewer_demos(k=1)", "empty"]
    assert isinstance(suite.hyperparameters.learning_rate, Range)
    assert set(suite.hyperparameters.searched()) == {"learning_rate", "lora_rank"}
    assert suite.content_hash() == load_suite(path).content_hash()
    path.write_text(path.read_text().replace("1.0e-3", "2.0e-3"))
    assert suite.content_hash() != load_suite(path).content_hash()
