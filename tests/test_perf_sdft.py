"""The sdft part of `python -m harness.perf` on the tiny model: TRL's SDFTTrainer and the harness arms build,
train one step on the same token ids, and the part writes sdft.md (no timing asserted: it is a benchmark)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from helpers import SUITES

from harness.perf.cli import main
from harness.perf.trl_sdft import HarnessArm, SDFTArm, fresh_store, make_job, sdft_problem
from harness.spec import load_suite

pytest.importorskip("trl.experimental.sdft")


@pytest.fixture(scope="module")
def job(tiny):
    suite = load_suite(SUITES / "quickstart.yaml")
    full = make_job(tiny.tokenizer, suite, demos=2, steps=4)
    return dataclasses.replace(full, queries=full.queries[:8], student_texts=full.student_texts[:8], steps=1)


def test_both_arms_see_the_same_prompts(tiny, job):
    tok = tiny.tokenizer
    t_ids, s_ids = job.teacher_ids(tok), job.student_ids(tok)
    msgs = [{"role": "system", "content": load_suite(SUITES / "quickstart.yaml").context.instruction}]
    msgs += [m for i in range(2) for m in _demo(i)] + [{"role": "user", "content": job.queries[0]}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert job.context_text + job.student_texts[0] == text  # SDFT's privileged_context + prompt: the harness's (c, z)
    assert t_ids[0] == list(tok.apply_chat_template(msgs, add_generation_prompt=True)["input_ids"])
    assert t_ids[0][-len(s_ids[0]) :] == s_ids[0] and len(t_ids[0]) > len(s_ids[0])


def _demo(i):
    from harness.perf.workload import _noun

    return [{"role": "user", "content": _noun(i)}, {"role": "assistant", "content": _noun(i) + "s"}]


def test_sdft_and_harness_arms_train_one_step(tiny, job, tmp_path):
    sdft = SDFTArm(tiny, job, str(tmp_path / "sdft"))
    trainer = sdft.build(seed=0)
    args = trainer.args
    assert (args.distillation_mode, args.distillation_topk, args.distillation_add_tail) == ("topk_logits", 64, True)
    assert args.distillation_alpha == 0.0 and args.teacher_model_kind == "base" and args.max_prompt_length is None
    del trainer
    r = sdft.trial(seed=0)
    assert r.train_s > 0 and r.total_s >= r.train_s and 1 <= r.generated_tokens <= job.batch_size * 8
    store, clean = fresh_store()
    try:
        for on_policy in (True, False):
            h = HarnessArm(tiny, job, on_policy=on_policy)
            cold = h.trial(store)
            assert len(cold.losses) == 1 and cold.total_s >= cold.train_s > 0
            assert (cold.generated_tokens > 0) == on_policy  # on-policy: the student sampled its targets
            if on_policy:  # mix 1: no teacher targets or top-k asked of the cache; only c's KV cache, once
                assert (store.misses, store.hits) == (1, 0) and [p.name for p in store.root.iterdir()] == ["prefix"]
                assert h.trial(store).losses and (store.misses, store.hits) == (1, 1)  # a second trial reads it
        misses = store.misses
        HarnessArm(tiny, job, on_policy=False).trial(store, seed=1, learning_rate=3e-5)  # another config, same cache
        assert store.misses == misses and store.hits >= 2
    finally:
        clean()


def test_sdft_steps_must_be_whole_epochs():
    suite = load_suite(SUITES / "quickstart.yaml")
    assert sdft_problem(suite, 4) is None and sdft_problem(suite, 8) is None
    assert "--sdft-steps" in (sdft_problem(suite, 3) or "")


@pytest.mark.slow
def test_perf_cli_sdft_part(tmp_path, capsys):
    out = tmp_path / "perf"
    argv = ["--model", "tiny-random", "--parts", "sdft", "--sdft-demos", "2", "--sdft-steps", "4"]
    argv += ["--sdft-repeats", "1", "--suite", str(SUITES / "quickstart.yaml"), "--out", str(out)]
    assert main(argv) == 0
    assert not (out / "perf.md").exists()  # only the sdft part: perf.md keeps the last full run
    text = (out / "sdft.md").read_text()
    assert "Command: `python -m harness.perf --model tiny-random --parts sdft" in text and "Load average" in text
    assert "composed" in text and "What still differs" in text
    ratios = pd.read_csv(out / "sdft_ratios.csv")
    assert (ratios["ratio (median)"] > 0).all() and len(ratios) == 7
    arms = pd.read_csv(out / "sdft.csv")
    assert {"trl sdft", "harness on_policy, cold cache", "harness on_policy, warm cache"} <= set(arms["arm"])
    assert (out / "sdft.png").stat().st_size > 1000
    with pytest.raises(SystemExit) as e:
        main([*argv, "--sdft-steps", "3"])
    assert e.value.code == 2 and "--sdft-steps" in capsys.readouterr().err
