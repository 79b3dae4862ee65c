"""The learned context c' = n virtual tokens (harness/softprompt.py): a soft prompt initialised from the embeddings
of a text t must make the frozen model behave exactly as the plain model with t in front of its input, in every
path that reads the student: training logits (and hidden states), generation, and lm-eval's scoring."""

from __future__ import annotations

import copy
import math

import lm_eval
import pytest
import torch
from helpers import SUITES, write_suite
from mlflow.tracking import MlflowClient

import harness
from harness import generation, prefix_kv, scoring, softprompt, stores, tracking
from harness.batching import make_batch, target_logits, target_logits_and_hidden
from harness.config import HyperParams, TrialConfig
from harness.contexts import Context, init_ids
from harness.lm import PrefixReuseLM, QuietHFLM
from harness.spec import AxisValue, load_suite
from harness.tasks import encode_prompt, load_task, task_manager
from harness.trial import InvalidCombination, Workbench, run_trial

TEXT = "Answer E if the number is even and O if it is odd."


def _prompts(tok, n: int = 5) -> list[list[int]]:
    """Prompts of different lengths (the batches pad), each a rendered chat turn as the harness builds them."""
    questions = ["12", "7 and then some more words", "a", "1001 is the number here, is it even", "3 3 3"]
    return [
        encode_prompt(
            tok, tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        )
        for q in questions[:n]
    ]


@pytest.fixture(params=["soft_prompt", "prefix_kv"])
def make(request):
    """The two learned c' (virtual input tokens, a KV prefix): initialised from a text, each must act as that text."""
    return softprompt.initial if request.param == "soft_prompt" else prefix_kv.initial


@pytest.fixture(scope="module")
def text_ids(tiny) -> list[int]:
    return tiny.tokenizer.encode(TEXT, add_special_tokens=False)


def test_a_text_initialised_soft_prompt_gives_the_logits_of_the_text(tiny, text_ids, make):
    model, tok = tiny.model, tiny.tokenizer
    prompts = _prompts(tok)
    targets = [[5, 9, 11], [7], [3, 4], [8, 8, 8, 8], [2]]
    prompt = make(model, len(text_ids), text_ids)
    plain = make_batch([text_ids + p for p in prompts], targets, tok.pad_token_id)
    with torch.no_grad():
        want = target_logits(model, plain)
        want_logits, want_hidden = target_logits_and_hidden(model, plain, (0, 1, -1))
        full_want = model(input_ids=torch.tensor([text_ids + prompts[0]])).logits[:, len(text_ids) :]
        with softprompt.attach(model, prompt) as as_teacher:
            batch = make_batch(prompts, targets, tok.pad_token_id)
            got = target_logits(model, batch)
            got_logits, got_hidden = target_logits_and_hidden(model, batch, (0, 1, -1))
            full_got = model(torch.tensor([prompts[0]])).logits  # positional input_ids, as lm-eval calls it
            with as_teacher():  # teacher mode: the plain model again, same object
                plain_again = target_logits(model, batch)
        after = target_logits(model, batch)
        _, after_hidden = target_logits_and_hidden(model, batch, (0, 1, -1))
    mask = plain.mask
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_logits[mask], want_logits[mask], atol=1e-5, rtol=1e-5)
    # Hidden states reach |h| ~ 3: the prefix_kv path's other summation order put 2 of 2112 elements 3.9e-5 off on an
    # AMD EPYC (fp32 rounding); a missing prefix moves them by far more (asserted below), so 1e-4 still tells.
    torch.testing.assert_close(got_hidden[mask], want_hidden[mask], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(full_got, full_want, atol=1e-5, rtol=1e-5)
    assert full_got.shape[1] == len(prompts[0])  # the virtual positions are not in what the caller gets
    torch.testing.assert_close(plain_again, after)
    assert (got[mask] - after[mask]).abs().max() > 1e-3  # the check is not vacuous: the prompt changes logits
    assert (got_hidden[mask] - after_hidden[mask]).abs().max() > 1e-2  # and the hidden states
    assert softprompt.attached(model) is None and not softprompt.active(model)


def test_generation_with_a_soft_prompt_is_generation_after_the_text(tiny, text_ids, make):
    """Left-padded batches, sampled and greedy: the same tokens as the plain model given t + x."""
    model, tok = tiny.model, tiny.tokenizer
    prompts = _prompts(tok)
    prompt = make(model, len(text_ids), text_ids)
    for kwargs in ({}, {"do_sample": True, "seed": 3}):
        want = generation.generate(
            model, tok, [text_ids + p for p in prompts], max_new_tokens=8, batch_size=3, **kwargs
        )
        with softprompt.attach(model, prompt):
            got = generation.generate(model, tok, prompts, max_new_tokens=8, batch_size=3, **kwargs)
        assert got == want
    alone = generation.generate(model, tok, prompts, max_new_tokens=8, batch_size=3)
    assert alone != want  # without the text the model answers differently: the comparison has teeth


def test_random_init_is_seeded_and_the_prompt_round_trips(tiny, tmp_path):
    a = softprompt.initial(tiny.model, 4, None, seed=1)
    b = softprompt.initial(tiny.model, 4, None, seed=1)
    c = softprompt.initial(tiny.model, 4, None, seed=2)
    assert torch.equal(a.embeddings, b.embeddings) and not torch.equal(a.embeddings, c.embeddings)
    assert a.meta["init"] == "random"
    path = softprompt.save(a, tmp_path / softprompt.FILE)
    back = softprompt.load(path)
    assert torch.equal(back.embeddings, a.embeddings) and back.meta == a.meta and back.n_tokens == 4


def test_short_text_repeats_to_fill_the_prompt(tiny):
    ids = tiny.tokenizer.encode("even odd", add_special_tokens=False)
    prompt = softprompt.initial(tiny.model, len(ids) * 2 + 1, ids)
    embed = tiny.model.get_input_embeddings().weight
    want = embed[torch.tensor((ids * 3)[: len(ids) * 2 + 1])]
    torch.testing.assert_close(prompt.embeddings, want)


def test_attach_freezes_the_model_and_trains_only_the_prompt(tiny, text_ids):
    model = copy.deepcopy(tiny.model)
    for p in model.parameters():
        p.requires_grad_(True)
    prompt = softprompt.initial(model, 3, text_ids)
    with softprompt.attach(model, prompt):
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert len(trainable) == 1 and trainable[0] is prompt.embeddings
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert all(p is not prompt.embeddings for p in model.parameters())


class _TextInFront(QuietHFLM):
    """Plain lm-eval HFLM whose every encoded context starts with the ids of a text: the reference arm."""

    def __init__(self, *args, prefix: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.prefix = list(prefix)

    def tok_encode(self, string, add_special_tokens=None, left_truncate_len=None, **kwargs):
        return self.prefix + super().tok_encode(string, add_special_tokens=add_special_tokens, **kwargs)

    def tok_batch_encode(self, strings, padding_side="left", left_truncate_len=None, truncation=False):
        rows = [self.tok_encode(s) for s in strings]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        return ids, mask


def _samples(lm, config, task_name: str, manager) -> dict[int, dict]:
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[config],
        num_fewshot=0,
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        limit=12,
        log_samples=True,
        bootstrap_iters=0,
        task_manager=manager,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
        verbosity="WARNING",
    )
    return {int(s["doc_id"]): s for s in out["samples"][task_name]}


def _responses(sample: dict) -> list:
    """What the model returned for an item: per-option log-likelihoods, or the generated text."""
    first = [r[0] for r in sample["resps"]]  # lm-eval keeps a list of responses per request
    return [float(x[0]) if isinstance(x, (list, tuple)) else x for x in first]


@pytest.mark.parametrize("task_name", ["parity", "date_iso"])
def test_lm_eval_scores_the_soft_prompt_as_the_plain_model_with_the_text_in_front(tiny, text_ids, make, task_name):
    """Reference: plain lm-eval (HFLM) on the plain model with t's ids in front of every context. The soft-prompted
    model through lm-eval's HFLM, through the harness's default `hf-prefix-reuse` and through the harness's own
    scoring path (`scoring.evaluate_arm`) must return the same log-likelihoods / generations, answers and scores."""
    folder = SUITES / "tasks" / task_name
    bundle = load_task(task_name, folder)
    manager = task_manager(folder)
    config = bundle.lm_eval_task(bundle.split("test", 12, 0))
    metric = scoring.main_metric(bundle.config, bundle.task, None)
    model, tok = tiny.model, tiny.tokenizer
    want = _samples(
        _TextInFront(pretrained=model, tokenizer=tok, batch_size=4, prefix=text_ids), config, task_name, manager
    )
    plain = _samples(QuietHFLM(pretrained=model, tokenizer=tok, batch_size=4), config, task_name, manager)
    prompt = make(model, len(text_ids), text_ids)
    with softprompt.attach(model, prompt):
        got = {
            cls.__name__: _samples(cls(pretrained=model, tokenizer=tok, batch_size=4), config, task_name, manager)
            for cls in (QuietHFLM, PrefixReuseLM)
        }
        arm = scoring.evaluate_arm(
            "student", model, tok, config, task_name, Context(None, 0),
            metric=metric, limit=12, batch_size=4, task_manager=manager,
        )  # fmt: skip
    assert len(want) == 12
    for name, samples in got.items():
        assert samples.keys() == want.keys(), name
        for i, s in samples.items():
            a, b = _responses(s), _responses(want[i])
            if task_name == "parity":
                assert a == pytest.approx(b, abs=1e-4), (name, i)
            else:
                assert a == b, (name, i)
    assert arm.per_item == {i: float(s[metric]) for i, s in want.items()}
    assert arm.answers == {i: scoring._answer(s) for i, s in want.items()}
    # not vacuous: without the text in front the model returns something else
    assert any(_responses(plain[i]) != _responses(want[i]) for i in want)


# ----------------------------------------------------------------------------- in a trial and a study


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    folder = tmp_path_factory.mktemp("soft-prompt")
    path = write_suite(
        folder,
        axes={
            "targets": [{"name": "greedy"}],
            "contexts": [{"name": "empty"}, {"name": "soft_prompt", "n_tokens": 4, "lr_scale": 50}],
            "losses": [{"name": "forward_kl"}],
        },
        hyperparameters={"learning_rate": 1.0e-3, "epochs": 1, "batch_size": 4, "train_inputs": 8, "lora_rank": 0},
    )
    return Workbench(load_suite(path))


def _config(bench, context: int, **hp) -> TrialConfig:
    s = bench.suite
    values = {**dict(s.hyperparameters), **hp}
    return TrialConfig(s.axes.targets[0], s.axes.contexts[context], s.axes.losses[0], HyperParams.from_values(values))


@pytest.mark.slow
def test_a_soft_prompt_trial_trains_only_its_tokens_and_is_scored_with_exactly_them(bench):
    model = bench.base_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kept: list[softprompt.SoftPrompt] = []

    def keep(student):
        assert student is model  # no copy: the frozen base with the tokens attached
        kept.append(copy.deepcopy(softprompt.attached(student)))

    result = run_trial(bench, _config(bench, 1), bench.suite.seed, on_trained=keep)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)  # bitwise
    assert softprompt.attached(model) is None
    trained = kept[0]
    untrained = bench.soft_prompt(bench.suite.axes.contexts[1], bench.suite.seed)
    assert trained.n_tokens == 4 and not torch.equal(trained.embeddings, untrained.embeddings)
    ids = bench.task.env(bench.context, bench.tok)
    assert torch.equal(untrained.embeddings, model.get_input_embeddings().weight[init_ids(bench.context, ids, 4)])
    # lm-eval, run again on the frozen model with exactly the trained tokens, gives the trial's student scores
    with softprompt.attach(model, trained):
        for split in ("validation", "test"):
            again = bench.arm("student", model, None, result.student_context, split)
            assert again.per_item == getattr(result, split).student.per_item
    # the tokens step at lr_scale × the suite's learning rate: a scale near 0 leaves them where they started
    still = AxisValue(name="soft_prompt", n_tokens=4, lr_scale=1e-9)
    hp = HyperParams.from_values(dict(bench.suite.hyperparameters))
    frozen: list[softprompt.SoftPrompt] = []
    cfg = TrialConfig(bench.suite.axes.targets[0], still, bench.suite.axes.losses[0], hp)
    run_trial(bench, cfg, bench.suite.seed, on_trained=lambda s: frozen.append(copy.deepcopy(softprompt.attached(s))))
    moved = (trained.embeddings - untrained.embeddings).abs().max()
    assert (frozen[0].embeddings - untrained.embeddings).abs().max() < 1e-6 < moved
    # context tokens saved = |c| − n: the 'empty' context's saving less the 4 virtual tokens
    empty = run_trial(bench, _config(bench, 0), bench.suite.seed)
    assert result.metrics.context_tokens_saved == pytest.approx(empty.metrics.context_tokens_saved - 4)


def test_a_soft_prompt_with_lora_fails_fast_with_its_reason(bench):
    with pytest.raises(InvalidCombination, match="lora_rank 0, not 4"):
        run_trial(bench, _config(bench, 1, lora_rank=4), bench.suite.seed)


@pytest.mark.slow
def test_a_study_crossing_empty_and_a_soft_prompt_keeps_and_reloads_the_tokens(tmp_path):
    """From YAML to the kept student: `harness.run` on contexts [empty, soft_prompt(n_tokens=4)]; every soft-prompt
    seed run carries its virtual tokens as an artifact; `harness.load_student` gives the base model with exactly
    those tokens attached, and real lm-eval scores it as the trial scored its student."""
    path = write_suite(
        tmp_path,
        name="soft",
        axes={
            "targets": [{"name": "greedy"}],
            "contexts": [{"name": "empty"}, {"name": "soft_prompt", "n_tokens": 4, "lr_scale": 50}],
            "losses": [{"name": "forward_kl"}],
        },
        sweep={"sampler": "grid", "n_trials": 2, "seeds": 2},
    )
    df = harness.run(path)
    assert sorted(df["state"]) == ["COMPLETE", "COMPLETE"]
    soft = df[df["context"].str.startswith("soft_prompt")].iloc[0]
    empty = df[df["context"] == "empty"].iloc[0]
    assert soft["context_tokens_saved"] == pytest.approx(empty["context_tokens_saved"] - 4)
    suite = load_suite(path)
    tracking.use_store(stores.tracking_uri(suite))
    client = MlflowClient()
    runs = client.search_runs([client.get_run(soft["run_id"]).info.experiment_id])
    seeds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == soft["run_id"]]
    assert len(seeds) == 2
    for r in seeds:
        assert f"student/soft_prompt/{softprompt.FILE}" in {
            a.path for a in client.list_artifacts(r.info.run_id, "student/soft_prompt")
        }
    first = next(r for r in seeds if r.data.tags["harness.seed"] == str(suite.seed))
    tokens = softprompt.load(client.download_artifacts(first.info.run_id, f"student/soft_prompt/{softprompt.FILE}"))

    model, tok, ctx = harness.load_student(path, trial=int(soft["trial"]))
    attached = softprompt.attached(model)
    assert attached is not None and torch.equal(attached.embeddings, tokens.embeddings)
    assert ctx.soft_prompt == 4 and (ctx.system, ctx.n_demos) == (None, 0)
    bench = Workbench(suite)
    split = bench.splits["test"]
    arm = scoring.evaluate_arm(
        "student", model, tok, bench.task.lm_eval_task(split), bench.task.name, Context(None, 0),
        metric=bench.metric, limit=split.limit, batch_size=suite.evaluation.batch_size, seed=suite.seed,
        task_manager=task_manager(bench.task.folder),
    )  # fmt: skip
    assert arm.score == first.data.metrics["test_student_score"]


@pytest.mark.slow
def test_on_policy_and_hidden_state_losses_train_a_soft_prompt(bench):
    """The student samples with its virtual tokens and the teacher (the same model, tokens off) scores the samples;
    a hidden-state loss reads the student's states at the caller's positions. The weights stay bitwise frozen."""
    model = bench.base_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = bench.suite
    hp = HyperParams.from_values(dict(s.hyperparameters))
    for target, loss in (
        (AxisValue(name="on_policy", mix=1.0), AxisValue(name="forward_kl")),
        (AxisValue(name="greedy"), AxisValue(name="hidden_mse", layers=[-1], weight=0.5)),
    ):
        result = run_trial(bench, TrialConfig(target, s.axes.contexts[1], loss, hp), s.seed)
        assert math.isfinite(result.metrics.final_train_loss) and result.metrics.train_steps == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_prefix_tuning_trial_trains_only_its_kv_prefix_and_is_scored_with_exactly_it(bench, tmp_path):
    """prefix_tuning: the frozen weights bitwise unchanged, the keys and values moved from the cache of c's first
    n tokens, lm-eval rerun with exactly the trained prefix reproduces the trial's student scores, and the saved
    file loads back as the same prefix."""
    model = bench.base_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kept: list = []
    mod = AxisValue(name="prefix_tuning", n_tokens=4, lr_scale=50)
    hp = HyperParams.from_values(dict(bench.suite.hyperparameters))
    cfg = TrialConfig(bench.suite.axes.targets[0], mod, bench.suite.axes.losses[0], hp)
    result = run_trial(
        bench, cfg, bench.suite.seed, on_trained=lambda s: kept.append(copy.deepcopy(softprompt.attached(s)))
    )
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and softprompt.attached(model) is None
    trained, untrained = kept[0], bench.soft_prompt(mod, bench.suite.seed)
    assert isinstance(trained, prefix_kv.PrefixKV) and trained.n_tokens == 4
    assert not torch.equal(trained.keys, untrained.keys)
    ids = init_ids(bench.context, bench.task.env(bench.context, bench.tok), 4)
    torch.testing.assert_close(untrained.keys, prefix_kv.initial(model, 4, ids).keys)  # Cartridges' init: c's cache
    with softprompt.attach(model, trained):
        again = bench.arm("student", model, None, result.student_context, "test")
    assert again.per_item == result.test.student.per_item
    back = softprompt.load(softprompt.save(trained, tmp_path / softprompt.FILE))
    assert isinstance(back, prefix_kv.PrefixKV) and torch.equal(back.values, trained.values.cpu())
    assert result.metrics.context_tokens_saved == pytest.approx(
        run_trial(bench, _config(bench, 0), bench.suite.seed).metrics.context_tokens_saved - 4
    )
