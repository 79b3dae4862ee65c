"""Context modifications: each registered one, deterministic, and rendered by lm-eval's prompt code."""

from __future__ import annotations

import pytest

from harness.contexts import MODIFICATIONS, Context, ContextEnv, modify

C = Context("Answer E if the number is even and O if it is odd.", 4)


@pytest.fixture(scope="module")
def env(tiny, parity):
    return parity.env(C, tiny.tokenizer)


def test_registry_holds_the_issue_modifications():
    assert {"empty", "instruction_only", "demos_only", "fewer_demos", "truncate", "tag"} <= set(MODIFICATIONS)


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("full", {}, C),
        ("empty", {}, Context(None, 0)),
        ("instruction_only", {}, Context(C.system, 0)),
        ("demos_only", {}, Context(None, 4)),
        ("fewer_demos", {"k": 1}, Context(C.system, 1)),
        ("fewer_demos", {"k": 9}, C),
        ("tag", {"text": "[parity]"}, Context("[parity]", 0)),
        ("tag", {}, Context("Task: parity", 0)),
    ],
)
def test_modifications(env, name, params, expected):
    assert modify(name, C, env, params) == expected


def test_truncate_keeps_first_n_tokens_deterministically(env, tiny):
    cut = modify("truncate", C, env, {"n": 20})
    assert cut.n_demos == 0 and cut.system == C.system[:20]  # the tiny tokenizer is one token per character
    assert modify("truncate", C, env, {"n": 20}) == cut
    long = modify("truncate", C, env, {"n": 200})
    assert long.system.startswith(C.system) and "Number" in long.system  # demos flattened after the instruction


def test_modified_context_renders_shorter_prompt(tiny, parity, env):
    doc = parity.eval_docs()[0]
    full = parity.render(doc, C, tiny.tokenizer)
    for name, params in (("empty", {}), ("fewer_demos", {"k": 1}), ("tag", {"text": "[parity]"})):
        short = parity.render(doc, modify(name, C, env, params), tiny.tokenizer)
        assert len(short) < len(full) and short.endswith(doc["question"] + "<|im_end|>\n<|im_start|>assistant\n")


def test_bad_params_are_clear(env):
    with pytest.raises(ValueError, match=r"context modification 'empty': k: unknown parameter \('empty' takes none\)"):
        modify("empty", C, env, {"k": 1})
    with pytest.raises(ValueError, match="unknown context modification"):
        modify("shorten", C, env)
    with pytest.raises(ValueError, match="fewer_demos': k: Input should be greater than or equal to 0"):
        modify("fewer_demos", C, ContextEnv((), "t"), {"k": -1})
