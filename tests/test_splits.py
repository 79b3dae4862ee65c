"""The local tasks have four disjoint splits (train / validation / test / demos) that lm-eval loads.

DESIGN.md section 9: validation chooses, test is reported only; an input shared between two
splits would leak what is chosen into what is reported.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
from pathlib import Path

import pytest

from harness.tasks import load_task

TASKS = Path(__file__).resolve().parents[1] / "suites" / "tasks"
SPLITS = ("train", "validation", "test", "demos")
# task -> (what must not repeat across splits, minimum test items); parity is the smoke task whose whole
# test split the tests score. date_iso: the same date in its other spelling would leak the answer too.
LOCAL = {
    "plural": (lambda d: d["question"], 150),
    "name_gender": (lambda d: d["question"], 150),
    "date_iso": (lambda d: (d["year"], d["month"], d["day"]), 150),
    "parity": (lambda d: d["question"], 40),
}


def read(task: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / task / f"{split}.jsonl").read_text().splitlines() if line]


@pytest.mark.parametrize("task", sorted(LOCAL))
def test_four_splits_share_no_input(task):
    key, min_test = LOCAL[task]
    inputs = {s: [d["question"] for d in read(task, s)] for s in SPLITS}
    keys = {s: [key(d) for d in read(task, s)] for s in SPLITS}
    for split, xs in inputs.items():
        assert xs, f"{task}/{split} is empty"
        assert len(set(xs)) == len(xs), f"{task}/{split} repeats an input"
    for a, b in itertools.combinations(SPLITS, 2):
        shared = set(inputs[a]) & set(inputs[b])
        assert not shared, f"{task}: {a} and {b} share {sorted(shared)[:5]}"
        assert not set(keys[a]) & set(keys[b]), f"{task}: {a} and {b} share an item"
    assert len(inputs["test"]) >= min_test


@pytest.mark.parametrize("task", sorted(LOCAL))
def test_lm_eval_loads_the_validation_split(task):
    bundle = load_task(task, TASKS / task)
    assert bundle.task.has_validation_docs()
    validation = list(bundle.task.validation_docs())
    assert [d["question"] for d in validation] == [d["question"] for d in read(task, "validation")]
    # lm-eval still scores the test split, not validation, when a task has both.
    assert [d["question"] for d in bundle.eval_docs()] == [d["question"] for d in read(task, "test")]


def _script(path: Path):
    spec = importlib.util.spec_from_file_location(f"make_data_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_data_scripts_reproduce_the_committed_files(tmp_path, monkeypatch):
    """The data is a pure function of the seeded scripts: rerunning them writes the same bytes."""
    shared = _script(TASKS / "make_data.py")
    monkeypatch.setattr(shared, "HERE", tmp_path)
    for name in ("plural", "name_gender", "date_iso"):
        getattr(shared, f"make_{name}")(shared.random.Random(shared.SEED))
    parity = _script(TASKS / "parity" / "make_data.py")
    monkeypatch.setattr(parity, "HERE", tmp_path / "parity")
    (tmp_path / "parity").mkdir()
    parity.main()
    for task in LOCAL:
        for split in SPLITS:
            fresh = (tmp_path / task / f"{split}.jsonl").read_text()
            assert fresh == (TASKS / task / f"{split}.jsonl").read_text(), f"{task}/{split} differs from its script"


def test_date_iso_references_are_iso_strings():
    """The JSON loader would parse a stored "2021-03-05" as a timestamp ("2021-03-05 00:00:00"): the YAML formats it."""
    bundle = load_task("date_iso", TASKS / "date_iso")
    docs = bundle.eval_docs()
    assert [bundle.reference(d) for d in docs[:3]] == [
        f"{d['year']:04d}-{d['month']:02d}-{d['day']:02d}" for d in read("date_iso", "test")[:3]
    ]
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", bundle.reference(d)) for d in docs)
    demos = bundle.demo_pairs(16)
    assert len(demos) == 16 and demos[0] == ("February 1, 2006", "2006-02-01")
