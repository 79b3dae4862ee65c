"""The new axis values from a suite YAML, end to end on the tiny model: mix, hidden_mse / hidden_cosine,
sampled_kl and the off→on-policy target schedule; what the teacher cache keeps for each; the hidden-size check."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from helpers import write_suite
from transformers import LlamaForCausalLM

from harness import console, models, teacher
from harness.cli import main as cli_main
from harness.config import HyperParams, TrialConfig
from harness.losses import teacher_needs
from harness.report.runs import load_study
from harness.spec import load_suite
from harness.targets import phases
from harness.trial import Workbench, run_trial

TARGETS = [
    {"name": "on_policy", "mix": 0.5},
    {"name": "schedule", "first": "greedy", "then": {"name": "on_policy", "mix": 1}, "switch": 0.5},
]
BASE = {"teacher": "base", "update_rate": 0.05, "sync_steps": 1}  # on_policy's teacher-kind defaults
LOSSES = [
    {"name": "mix", "a": "self_target_nll", "b": {"name": "jsd", "beta": 0.5}, "weight": 0.3},
    {"name": "hidden_mse", "layers": [-1, 1], "weight": 0.5, "token": {"name": "mix", "weight": 0.5}},
    {"name": "hidden_cosine", "token": "forward_kl"},
    {"name": "sampled_kl", "estimator": "k1"},
    {"name": "sampled_kl", "direction": "forward", "off_policy": "forward_kl"},
]


def main(argv: list[str]) -> int:
    """The CLI in process, leaving the log levels it sets as they were (later tests read the cache's INFO lines)."""
    names = (*console.NOISY_LOGGERS, *console.DETAIL_LOGGERS, "lm_eval")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        return cli_main(argv)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    folder = tmp_path_factory.mktemp("breadth")
    path = write_suite(folder, axes={"targets": TARGETS, "contexts": [{"name": "empty"}], "losses": LOSSES})
    assert main(["validate", str(path)]) == 0  # the YAML as a user writes it
    return Workbench(load_suite(path))


def _described(bench, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((bench.store.root / kind).glob("*.json"))]


@pytest.mark.slow
@pytest.mark.parametrize("target", range(len(TARGETS)))
@pytest.mark.parametrize("loss", range(len(LOSSES)))
def test_each_new_value_trains_and_scores(bench, target, loss):
    suite = bench.suite
    cfg = TrialConfig(
        suite.axes.targets[target],
        suite.axes.contexts[0],
        suite.axes.losses[loss],
        HyperParams.from_values(dict(suite.hyperparameters)),
    )
    result = run_trial(bench, cfg, suite.seed)
    m = result.metrics.logged()
    assert m["train_steps"] == 2  # 8 inputs, batches of 4, one epoch
    assert all(math.isfinite(m[k]) for k in ("final_train_loss", "heldout_kl", "test_student_score"))


@pytest.mark.slow
def test_the_cache_keeps_what_each_loss_reads(bench):
    docs = bench.task.train_docs(8)
    t_prompts, s_prompts = (
        bench.encode(docs, bench.context),
        bench.encode(docs, bench.student_context(bench.suite.axes.contexts[0])),
    )
    refs = [bench.task.reference(d) for d in docs]
    (greedy, on_policy) = phases("schedule", bench.suite.axes.targets[1].params)
    assert (greedy.name, on_policy.name, greedy.until, on_policy.params) == (
        "greedy",
        "on_policy",
        0.5,
        {"mix": 1.0, **BASE},
    )

    def examples(loss: dict):
        params = {k: v for k, v in loss.items() if k != "name"}
        return bench.examples(greedy, t_prompts, s_prompts, refs, 0, teacher_needs(loss["name"], params))

    # sampled_kl (fallback NLL): targets only, no top-k, no hidden states
    plain = examples({"name": "sampled_kl"})
    assert all(e.teacher is None and e.hidden is None for e in plain)
    # hidden_mse on layers [-1, 1]: float16 states [T, 2, H] at the target positions, beside the top-k
    two = examples(LOSSES[1])
    assert all(e.teacher is not None and e.hidden.dtype == torch.float16 for e in two)
    assert [tuple(e.hidden.shape) for e in two] == [(len(e.target), 2, 64) for e in two]
    # the entry is keyed by the layers as absolute indices: [-1] and [2] are one entry, [-1, 1] another
    last = examples({"name": "hidden_cosine"})  # layers [-1]
    misses = bench.store.misses
    again = examples({"name": "hidden_cosine", "layers": [2]})
    assert bench.store.misses == misses and torch.equal(again[0].hidden, last[0].hidden)
    assert torch.equal(last[0].hidden[:, 0], two[0].hidden[:, 0])  # the last layer, whichever entry holds it
    assert {tuple(d["layers"]) for d in _described(bench, "hidden")} == {(2,), (2, 1)}
    # a schedule's phases are cached as the plain strategies, never as "schedule"
    assert {d["strategy"] for d in _described(bench, "targets")} == {"greedy", "on_policy"}


def _narrow(folder) -> str:
    """The tiny model's architecture at half its width, saved with the same tokenizer: a student of another size."""
    tiny = models.load("tiny-random", "cpu")
    config = tiny.model.config.to_dict()
    config.update(hidden_size=32, intermediate_size=64)
    narrow = LlamaForCausalLM(type(tiny.model.config).from_dict(config))
    narrow.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return str(folder)


def test_hidden_losses_refuse_models_of_different_widths(tiny, tmp_path):
    narrow = LlamaForCausalLM(type(tiny.model.config).from_dict({**tiny.model.config.to_dict(), "hidden_size": 32}))
    with pytest.raises(
        models.ModelError, match=r"^axes.losses.0: hidden-state losses .* hidden sizes differ \(64 vs 32\)"
    ):
        models.hidden_layers(tiny.model, narrow, (-1,), "axes.losses.0")
    with pytest.raises(models.ModelError, match=r"layer 3 is not a hidden state of the teacher \(it has 3: 0..2\)"):
        models.hidden_layers(tiny.model, tiny.model, (3,), "x")
    assert models.hidden_layers(tiny.model, tiny.model, (-1, 0, -3), "x") == (2, 0, 0)


@pytest.mark.slow
def test_a_narrower_student_is_refused_at_model_load(tmp_path, capsys):
    student = _narrow(tmp_path / "narrow")
    path = write_suite(tmp_path, models={"student": student}, axes={"losses": [{"name": "hidden_mse"}]})
    assert main(["gap", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [
        "error: axes.losses.0 'hidden_mse': hidden-state losses compare teacher and student states, but their "
        "hidden sizes differ (64 vs 32); use a student of the teacher's family and width, or a token loss"
    ]


@pytest.mark.slow
def test_a_study_sweeps_the_new_values_from_yaml(tmp_path, capsys):
    """`harness run` on a suite naming a schedule and two nested losses: Optuna's choices and MLflow's params are
    the values' labels, and every configuration completes."""
    losses = [LOSSES[0], {"name": "sampled_kl", "estimator": "k3", "off_policy": {"name": "mix", "weight": 0.5}}]
    path = write_suite(
        tmp_path,
        axes={"targets": TARGETS[1:], "contexts": [{"name": "empty"}], "losses": losses},
        sweep={"sampler": "grid", "n_trials": 2, "seeds": 1},
    )
    assert main(["run", str(path), "--no-report"]) == 0
    study = load_study(load_suite(path))
    assert study is not None
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["loss"] for t in done) == [
        "mix(a=self_target_nll,b=jsd(beta=0.5),weight=0.3)",
        "sampled_kl(estimator=k3,off_policy=mix(weight=0.5))",
    ]
    assert {t.params["target"] for t in done} == {"schedule(first=greedy,switch=0.5,then=on_policy(mix=1))"}


def test_hidden_states_are_stored_compactly_without_overflow():
    small, large = torch.tensor([[[1.5, -2.25]]]), torch.tensor([[[1.0e5, 3.0]]])
    assert [r.dtype for r in teacher._compact([small, small])] == [torch.float16, torch.float16]
    kept = teacher._compact([small, large])  # one value beyond float16's range: the whole entry in bfloat16
    assert [r.dtype for r in kept] == [torch.bfloat16, torch.bfloat16] and torch.isfinite(kept[1]).all()
    padded = teacher.stack_rows([small.half(), large.bfloat16()], 3)
    assert padded.dtype == torch.float32 and padded.shape == (2, 3, 1, 2)
    assert padded[0, 0].tolist() == [[1.5, -2.25]] and padded[1, 0, 0, 0] == 99840.0  # bf16's nearest to 1e5
    assert not padded[:, 1:].any()  # padding positions: zeros (masked out by the loss)
