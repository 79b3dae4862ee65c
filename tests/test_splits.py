"""The local tasks have four disjoint splits (train / validation / test / demos) that lm-eval loads.

DESIGN.md section 9: validation chooses, test is reported only; an input shared between two
splits would leak what is chosen into what is reported.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import shutil
from pathlib import Path

import pytest
from lm_eval.tasks import TaskManager

from harness import scoring
from harness.contexts import Context
from harness.tasks import TaskError, load_task, task_manager, with_test_split

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


@pytest.fixture(scope="module")
def no_validation(tmp_path_factory):
    """The parity task as a task without its own validation split (like many registered lm-eval tasks)."""
    folder = tmp_path_factory.mktemp("noval") / "parity"
    shutil.copytree(TASKS / "parity", folder)
    yaml_path = folder / "parity.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("validation_split: validation\n", ""))
    return load_task("parity", folder)


def test_own_validation_split_and_limits(parity):
    val, test = parity.split("validation", 10, seed=0), parity.split("test", None, seed=0)
    assert [d["question"] for d in val.docs] == [d["question"] for d in read("parity", "validation")[:10]]
    assert [d["question"] for d in test.docs] == [d["question"] for d in read("parity", "test")]
    assert (val.source, val.indices, val.limit, test.source) == ("validation", None, 10, "test")
    assert parity.lm_eval_task(val)["test_split"] == "validation"  # lm-eval scores test_split: point it here
    assert parity.lm_eval_task(test)["test_split"] == "test"
    assert val.key() != test.key() and val.fingerprint != test.fingerprint
    assert parity.split("validation", 10, seed=5) == val  # the seed only draws carved slices


def test_validation_is_carved_from_the_scored_split_when_a_task_has_none(no_validation):
    assert not no_validation.has_own_validation
    val, test = no_validation.split("validation", None, seed=3), no_validation.split("test", None, seed=3)
    pool = [d["question"] for d in read("parity", "test")]
    assert len(val.docs) == len(pool) // 5 and len(test.docs) == len(pool) - len(val.docs)  # a fifth, the rest
    assert set(val.indices).isdisjoint(test.indices) and set(val.indices) | set(test.indices) == set(range(40))
    assert [d["question"] for d in val.docs] == [pool[i] for i in val.indices]
    assert "carved" in val.note and "seed 3" in val.note and val.source == test.source == "test"
    assert no_validation.split("validation", None, seed=3) == val  # seeded: the same slice every time
    assert no_validation.split("validation", None, seed=4).indices != val.indices
    capped = no_validation.split("test", 5, seed=3)
    assert capped.indices == test.indices[:5]
    assert len(no_validation.split("validation", 12, seed=3).docs) == 12  # validation_limit sets the carve
    with pytest.raises(TaskError, match="cannot carve 40 validation items"):
        no_validation.split("validation", 40, seed=3)


def test_lm_eval_scores_exactly_the_carved_items(no_validation, tiny):
    """`samples=` makes lm-eval score the carved positions; per-item keys are those positions in the source split."""
    split = no_validation.split("validation", None, seed=3)
    arm = scoring.evaluate_arm(
        "teacher",
        tiny.model,
        tiny.tokenizer,
        no_validation.lm_eval_task(split),
        "parity",
        Context(None, 0),
        metric="acc",
        limit=None,
        samples=list(split.indices),
        batch_size=8,
        task_manager=task_manager(no_validation.folder),
    )
    assert sorted(arm.per_item) == list(split.indices)
    for i, doc in zip(split.indices, split.docs, strict=True):
        assert arm.prompts[i] == no_validation.render(doc, Context(None, 0), tiny.tokenizer)


def test_a_loaded_task_object_can_score_its_validation_split(parity, tiny, monkeypatch):
    """The route for a registered task (no config dict to edit): a fresh task object whose test_split is changed."""
    monkeypatch.chdir(parity.folder)  # loaded by name, the local YAML's relative data_files resolve against the cwd
    registry = TaskManager(include_path=str(parity.folder), include_defaults=False)  # parity as if registered
    task = with_test_split(registry, "parity", "validation")
    assert [d["question"] for d in task.eval_docs] == [d["question"] for d in read("parity", "validation")]
    arm = scoring.evaluate_arm(
        "teacher",
        tiny.model,
        tiny.tokenizer,
        task,
        "parity",
        Context(None, 0),
        metric="acc",
        limit=3,
        batch_size=8,
        task_manager=registry,
    )
    docs = read("parity", "validation")[:3]
    assert [arm.references[i] for i in range(3)] == [str(d["label"]) for d in docs]
    assert "Number " + docs[0]["question"].split()[-1] in arm.prompts[0]
