"""Contexts beyond demonstrations (issue 21): c from a system-prompt or document file, and the inputs axis
(train_split, self_study, paraphrase, mixed) with generated inputs that never repeat a held-out item."""

from __future__ import annotations

import pytest
from helpers import SUITES, write_suite

from harness import cli
from harness.config import HyperParams, TrialConfig
from harness.contexts import Context, ContextEnv, modify
from harness.inputs import INPUTS, SEEDS, InputError, Query, clean, draw, normal
from harness.spec import AxisValue, SuiteError, load_suite
from harness.tasks import TaskError, load_task
from harness.trial import Workbench, run_trial

RULES = "You are Quill, a terse assistant. Rule 1: answer in one word. Rule 2: never apologise."
DOC = "The Zorbian capital is Plimmet. Plimmet lies on the river Ost. Its mayor is Dana Varr."


def test_context_parts_join_into_one_system_message_and_modifications_pick_them():
    c = Context("Answer briefly.", 3, RULES, DOC)
    assert c.system == f"Answer briefly.\n\n{RULES}\n\n{DOC}"
    env = ContextEnv(demos=(), task_name="t")
    assert modify("empty", c, env).system is None
    assert modify("instruction_only", c, env) == Context("Answer briefly.", 0)
    assert modify("without", c, env, {"part": "document"}) == Context("Answer briefly.", 3, RULES, None)
    assert modify("without", c, env, {"part": "system_prompt"}).system == f"Answer briefly.\n\n{DOC}"
    assert modify("without", c, env, {"part": "demos"}) == Context("Answer briefly.", 0, RULES, DOC)
    assert modify("fewer_demos", c, env, {"k": 1}) == Context("Answer briefly.", 1, RULES, DOC)
    assert modify("demos_only", c, env) == Context(None, 3)
    assert Context("only").system == "only"  # a suite written before the parts: c is its instruction


def _suite(tmp_path, **context):
    (tmp_path / "rules.txt").write_text(RULES + "\n", encoding="utf-8")
    (tmp_path / "doc.md").write_text(DOC, encoding="utf-8")
    return write_suite(tmp_path, context={"instruction": "Answer E or O.", "demos": 2, **context})


def test_context_files_are_read_next_to_the_suite_and_change_the_study_hash(tmp_path):
    path = _suite(tmp_path, system_prompt={"file": "rules.txt"}, document={"file": "doc.md"})
    suite = load_suite(path)
    assert suite.context_texts() == {"system_prompt": RULES, "document": DOC}
    before = suite.content_hash()
    (tmp_path / "doc.md").write_text(DOC + " Its river floods in May.", encoding="utf-8")
    assert load_suite(path).content_hash() != before  # the bytes, not the name, decide the study
    sub = tmp_path / "inline"
    sub.mkdir()
    inline = load_suite(write_suite(sub, context={"instruction": "Answer E or O.", "system_prompt": RULES}))
    assert inline.context_texts() == {"system_prompt": RULES}


@pytest.mark.parametrize(
    ("context", "data", "expected"),
    [
        ({"system_prompt": {"file": "missing.txt"}}, None, "context.system_prompt.file: no such file missing.txt"),
        ({"document": {"file": "bad.txt"}}, b"ok\n\xff\xfe", "context.document.file: bad.txt line 2: not UTF-8"),
        ({"document": {"file": "bad.txt"}}, b"  \n", "context.document.file: bad.txt is empty"),
        ({"system_prompt": {"file": "a", "text": "b"}}, None, "context.system_prompt: Value error, give exactly one"),
        ({"document": {"text": "x", "max_tokens": 0}}, None, "context.document.max_tokens: Input should be greater"),
    ],
)
def test_bad_context_sources_fail_validate_in_one_line(tmp_path, capsys, context, data, expected):
    if data is not None:
        (tmp_path / "bad.txt").write_bytes(data)
    path = _suite(tmp_path, **context)
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and expected.replace("Value error, ", "") in err[0]


def test_ground_truth_targets_refuse_generated_inputs(tmp_path, capsys):
    path = write_suite(
        tmp_path,
        axes={"targets": [{"name": "ground_truth"}], "inputs": [{"name": "train_split"}, {"name": "self_study"}]},
    )
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "axes.targets.0: ground_truth trains on the dataset's answers" in err and "inputs.1 'self_study'" in err


@pytest.mark.parametrize(
    ("value", "demos", "expected"),
    [
        (
            {"name": "self_study", "seed_prompt": "demos"},
            0,
            "axes.inputs.0.seed_prompt: self_study(seed_prompt=demos) "
            "continues a list of c's demonstration inputs, so it needs context.demos >= 1 (it is 0)",
        ),
        ({"name": "mixed", "seed_prompt": "demos"}, 0, "axes.inputs.0.seed_prompt: mixed(seed_prompt=demos) continues"),
        (
            {"name": "self_study", "seed_prompt": "document"},
            2,
            "axes.inputs.0.seed_prompt: Input should be 'instructions' or 'demos'",
        ),
    ],
)
def test_self_study_seed_prompts_are_checked_at_validate(tmp_path, capsys, value, demos, expected):
    path = write_suite(
        tmp_path,
        context={"instruction": "Answer E or O.", "demos": demos},
        axes={"contexts": [{"name": "empty"}], "inputs": [value]},
    )
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and expected in err[0]


def test_dry_run_shows_the_rendered_system_message(tmp_path, capsys):
    path = _suite(tmp_path, system_prompt={"file": "rules.txt"})
    assert cli.main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "system_prompt (rules.txt, " in out and f"    | {RULES}" in out and "2 demonstrations" in out


class _Env:
    """A scripted teacher: each call returns the next batch of replies (the registry logic under test)."""

    def __init__(self, replies, heldout=(), train=(), demos=()):
        self.replies, self.heldout, self.train, self.calls = list(replies), set(heldout), list(train), []
        self.demos, self.prefixes = list(demos), []

    def train_queries(self, n):
        return [Query(t, {"question": t}, "E") for t in self.train[:n]]

    def heldout_texts(self):
        return {normal(t) for t in self.heldout}

    def sample_texts(self, instructions, with_context, *, temperature, max_new_tokens, seed):
        self.calls.append((len(instructions), with_context, temperature, seed))
        batch = self.replies.pop(0)
        return (batch * len(instructions))[: len(instructions)]

    def demo_inputs(self):
        return self.demos

    def continue_texts(self, prefixes, *, temperature, max_new_tokens, seed):
        self.prefixes.append(list(prefixes))
        return self.sample_texts(prefixes, False, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)


def test_self_study_deduplicates_filters_held_out_items_and_says_when_it_runs_short():
    env = _Env(
        [["Is 12 even?", "is 12 EVEN", "Question: Is 7 odd?", "ok", "Is 3 odd?", SEEDS[0]], ["Is 99 even?"] * 9],
        heldout=["Is 3 odd?"],
    )
    got = draw("self_study", {}, env, 3, seed=5)
    assert [q.text for q in got] == ["Is 12 even?", "Is 7 odd?", "Is 99 even?"]
    assert all(q.reference is None and q.doc is None for q in got)
    assert env.calls[0][1] is True and env.calls[0][3] == 5 and env.calls[1][3] == 6  # sees c; seeded per round
    with pytest.raises(InputError, match=r"self_study: made 1 distinct inputs of the 4 asked in 2 rounds"):
        draw("self_study", {"rounds": 2}, _Env([["Is it the same?"], ["Is it the same?"]]), 4, seed=0)
    assert clean('  "Request: What is Plimmet?"\n\nMore text') == "What is Plimmet?"


def test_self_study_from_demos_continues_shuffled_lists_of_the_demonstration_inputs_in_their_format():
    demos = ["apple", "box", "city"]
    replies = ["cat\nfox", "  \nApple\n", "ring", "a sentence, not a noun", "cat", "dog", "", "cat"]
    env = _Env([replies, ["owl"] * 8], heldout=["ring"], demos=demos)
    got = draw("self_study", {"seed_prompt": "demos"}, env, 3, seed=3)
    # first line kept; a copy of a demonstration, a held-out item, one longer than 2 × 'apple', a repeat: dropped
    assert [q.text for q in got] == ["cat", "dog", "owl"]
    assert all(q.reference is None and q.doc is None for q in got)
    first = env.prefixes[0]
    assert len(first) == 8 and all(sorted(p.splitlines()) == sorted(demos) and p.endswith("\n") for p in first)
    assert len(set(first)) > 1  # shuffled per prompt
    assert [c[1:] for c in env.calls] == [(False, 1.0, 3), (False, 1.0, 4)]  # plain text, seeded per round
    assert (
        draw("self_study", {"seed_prompt": "demos"}, _Env([replies, ["owl"]], heldout=["ring"], demos=demos), 3, 3)
        == got
    )
    with pytest.raises(
        InputError, match=r"seed_prompt 'demos' continues a list of c's demonstration inputs; c has none"
    ):
        draw("self_study", {"seed_prompt": "demos"}, _Env([replies]), 2, seed=0)
    with pytest.raises(InputError, match=r"self_study \(seed_prompt demos\): made 1 distinct inputs of the 2 asked"):
        draw("self_study", {"seed_prompt": "demos", "rounds": 2}, _Env([["cat"], ["cat"]], demos=demos), 2, seed=0)
    mixed = draw("mixed", {"seed_prompt": "demos"}, _Env([["elk"]], train=["t1"], demos=demos), 2, seed=0)
    assert [q.text for q in mixed] == ["t1", "elk"]


def test_paraphrase_rewrites_each_train_input_without_c_and_mixed_interleaves():
    env = _Env([["Is twelve even?", "Is 7 odd"], ["Tell me if 7 is odd."]], train=["Is 12 even?", "Is 7 odd?"])
    got = draw("paraphrase", {}, env, 2, seed=0)
    assert [q.text for q in got] == ["Is twelve even?", "Tell me if 7 is odd."]  # a copy of the input is retried
    assert env.calls[0][1] is False and env.calls[0][2] == 0.7
    mixed = draw("mixed", {"share": 0.5}, _Env([["A new one?", "Another one?"]], train=["t1", "t2"]), 4, seed=0)
    assert [q.text for q in mixed] == ["t1", "A new one?", "t2", "Another one?"]
    assert set(INPUTS) >= {"train_split", "self_study", "paraphrase", "mixed"}


@pytest.mark.slow
def test_a_self_study_trial_on_a_task_trains_on_teacher_written_inputs_that_never_repeat_held_out_items(tmp_path):
    path = _suite(
        tmp_path,
        system_prompt={"file": "rules.txt"},
        document={"file": "doc.md", "max_tokens": 12},
    )
    raw = path.read_text().replace("train_inputs: 8", "train_inputs: 6")
    path.write_text(raw)
    bench = Workbench(load_suite(path))
    assert bench.context.system_prompt == RULES
    assert len(bench.tok.encode(bench.context.document, add_special_tokens=False)) <= 12
    source = AxisValue(name="self_study", rounds=8)
    queries = bench.inputs(source, 6)
    assert len({normal(q.text) for q in queries}) == 6
    held = {normal(str(bench.task.task.doc_to_text(d))) for s in bench.splits.values() for d in s.docs}
    assert not held & {normal(q.text) for q in queries}
    again = bench.inputs(source, 6)
    assert again == queries  # once per study
    # the generated input sits where a task item's text would: same prompt around it
    doc = bench.task.train_docs(1)[0]
    item = bench.encode([doc], bench.context)[0]
    as_text = bench.encode_queries([Query(str(bench.task.task.doc_to_text(doc)))], bench.context)[0]
    assert as_text == item
    s = bench.suite
    hp = HyperParams.from_values({**dict(s.hyperparameters), "train_inputs": 6})
    cfg = TrialConfig(s.axes.targets[0], s.axes.contexts[1], s.axes.losses[0], hp, source)
    result = run_trial(bench, cfg, s.seed)
    assert [i.input for i in result.inputs] == [q.text for q in queries]
    assert all(i.reference == "" for i in result.inputs)
    assert result.metrics.train_steps >= 1


@pytest.mark.slow
def test_self_study_from_demos_on_the_tiny_model_keeps_the_demos_format_and_no_held_out_item(tmp_path):
    bench = Workbench(load_suite(_suite(tmp_path)))
    demos = [text for text, _ in bench.task.demo_pairs(2)]
    source = AxisValue(name="self_study", seed_prompt="demos", rounds=12)
    queries = bench.inputs(source, 4)
    texts = [q.text for q in queries]
    assert len({normal(t) for t in texts}) == 4 and all(q.doc is None and q.reference is None for q in queries)
    held = {normal(str(bench.task.task.doc_to_text(d))) for s in bench.splits.values() for d in s.docs}
    assert not held & {normal(t) for t in texts} and not {normal(d) for d in demos} & {normal(t) for t in texts}
    assert all("\n" not in t and 1 <= len(t) <= 2 * max(map(len, demos)) for t in texts)
    assert bench.inputs(AxisValue(name="self_study", seed_prompt="demos", rounds=12), 4) == queries
    # the same request again is read from the teacher cache: a fresh study makes the same inputs
    assert Workbench(load_suite(_suite(tmp_path))).inputs(source, 4) == queries


def test_the_shipped_task_without_a_train_split_scores_plurals_items_and_asks_for_self_study():
    tasks = SUITES / "tasks"
    bundle, plural = load_task("plural_eval", tasks / "plural_eval"), load_task("plural", tasks / "plural")
    assert not bundle.task.has_training_docs()
    for split in ("validation", "test"):
        assert bundle.split(split, None, 0).docs == plural.split(split, None, 0).docs
    assert bundle.demo_pairs(4) == plural.demo_pairs(4)
    with pytest.raises(TaskError, match=r"has no train split; take the inputs from the teacher instead"):
        bundle.train_docs(1)


def test_a_document_longer_than_the_teachers_window_fails_before_any_trial(tmp_path):
    (tmp_path / "long.txt").write_text("word " * 5000, encoding="utf-8")
    path = _suite(tmp_path, document={"file": "long.txt"})
    with pytest.raises(SuiteError, match=r"context.document: c is \d+ tokens, .* window of 4096; set context.document"):
        Workbench(load_suite(path))
