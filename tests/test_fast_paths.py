"""The speed paths give the same numbers as the plain ones (tiny random model, CPU).

- teacher top-k with the shared context's KV cache reused = every row running its whole prompt;
- the student's forward projects only the target positions onto the vocabulary.
"""

from __future__ import annotations

import pytest
import torch
from helpers import CAPITAL_QUERIES, SUITES, capital_messages, settings, sharp_tiny, write_suite

from harness import generation, models, teacher
from harness.batching import make_batch, target_logits
from harness.train import _fused_ok, train

QUERIES = CAPITAL_QUERIES


@pytest.fixture(scope="module")
def tiny():
    return sharp_tiny()


@pytest.fixture(scope="module")
def prompts(tiny):
    context = capital_messages([("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi")])
    return [
        list(
            tiny.tokenizer.apply_chat_template(
                context + [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for q in QUERIES
    ]


def test_prompts_exercise_the_reuse(prompts):
    assert generation._usable_prefix(prompts, True) >= generation.MIN_SHARED_PREFIX
    assert len({len(p) for p in prompts}) > 1


@pytest.mark.parametrize("k", [5, None])
def test_topk_with_prefix_reuse_equals_plain(tiny, prompts, k):
    gen = torch.Generator().manual_seed(0)
    vocab = tiny.model.config.vocab_size
    lengths = [3, 1, 6, 0, 4, 2, 5, 3]  # an empty target, and batches whose widths differ
    tgts = [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in lengths]
    kw = dict(k=k, temperature=1.5, batch_size=3, pad_id=tiny.tokenizer.pad_token_id)
    plain = teacher.score_topk(tiny.model, prompts, tgts, reuse_prefix=False, **kw)
    reused = teacher.score_topk(tiny.model, prompts, tgts, reuse_prefix=True, **kw)
    for n, a, b in zip(lengths, plain, reused, strict=True):
        assert a.indices.shape == b.indices.shape == (n, vocab if k is None else k)
        assert b.indices.dtype == torch.int32
        if k is not None:
            assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.tail, b.tail, atol=1e-5, rtol=0)
    assert reused[0].logprobs[0, 0] > reused[0].logprobs[0, -1]  # sorted, not a constant


def test_topk_matches_one_prompt_at_a_time(tiny, prompts):
    """Batching and padding change nothing: each row equals its own unbatched, unpadded forward."""
    tgts = [[7, 9, 11][: 1 + i % 3] for i in range(len(prompts))]
    got = teacher.score_topk(tiny.model, prompts, tgts, k=4, temperature=1.0, batch_size=4, pad_id=0)
    for p, t, g in zip(prompts, tgts, got, strict=True):
        with torch.no_grad():
            logits = tiny.model(input_ids=torch.tensor([p + t])).logits[0, len(p) - 1 : len(p) - 1 + len(t)]
        lp = torch.log_softmax(logits.float(), -1)
        top = lp.topk(4, -1)
        assert torch.equal(g.indices.long(), top.indices)
        torch.testing.assert_close(g.logprobs, top.values, atol=1e-5, rtol=0)


def test_student_lm_head_sees_target_positions_only(tiny, prompts):
    """`logits_to_keep` as [B, T] positions: the vocabulary projection runs on B×T rows, not B×L."""
    tgts = [[5, 6, 7][: 1 + i % 3] for i in range(len(prompts))]
    batch = make_batch(prompts, tgts, pad_id=0)
    seen: list[tuple[int, ...]] = []
    hook = tiny.model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        logits = target_logits(tiny.model, batch)
    finally:
        hook.remove()
    B, T = batch.positions.shape
    assert seen == [(B, T, tiny.model.config.hidden_size)]
    assert batch.input_ids.shape[1] > 4 * T  # the check would fail with full logits
    with torch.no_grad():
        full = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    want = torch.gather(full, 1, batch.positions.unsqueeze(-1).expand(-1, -1, full.size(-1)))
    torch.testing.assert_close(logits.detach(), want, atol=1e-5, rtol=0)


def test_training_uses_fused_adamw_and_still_learns(tiny, prompts, monkeypatch):
    import copy

    from harness.train import Example

    made: list[dict] = []
    real = torch.optim.AdamW

    def spy(params, **kw):
        made.append(kw)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    student = copy.deepcopy(tiny.model)
    ex = [Example(p, [5, 6, 7]) for p in prompts]
    res = train(student, ex, "self_target_nll", {}, settings(learning_rate=1e-3, epochs=4, batch_size=4), pad_id=0)
    assert [kw.get("fused") for kw in made] == [True]
    assert res.losses[-1] < res.losses[0]
    assert not _fused_ok([torch.zeros(2, dtype=torch.long)])  # integer tensors: torch's own loop


# --------------------------------------------------------------------------- lm-eval with prefix reuse


@pytest.fixture(scope="module")
def counted_prefills():
    """Count prefix prefills (the reuse path ran) without changing what they compute."""
    calls = []
    real = generation._prefill

    def counting(model, prefix):
        calls.append(len(prefix))
        return real(model, prefix)

    mp = pytest.MonkeyPatch()
    mp.setattr(generation, "_prefill", counting)
    yield calls
    mp.undo()


@pytest.mark.parametrize(
    "task, metric, demos",
    [("plural", "exact_match", 8), ("name_gender", "acc", 6), ("parity", "acc", 4)],
)
def test_lm_eval_arm_with_prefix_reuse_equals_plain_hflm(tiny, counted_prefills, task, metric, demos):
    """Same lm-eval per-item outputs (answers and metric) with and without the shared-prefix reuse."""
    from harness import scoring
    from harness.contexts import Context
    from harness.tasks import load_task, task_manager

    bundle = load_task(task, SUITES / "tasks" / task)
    ctx = Context("Answer the question in one word, exactly as in the examples.", demos)
    kw = dict(metric=metric, limit=12, batch_size=5, task_manager=task_manager(bundle.folder))
    args = ("teacher", tiny.model, tiny.tokenizer, bundle.config, bundle.name, ctx)
    counted_prefills.clear()
    plain = scoring.evaluate_arm(*args, reuse_prefix=False, **kw)
    assert counted_prefills == []
    reused = scoring.evaluate_arm(*args, reuse_prefix=True, **kw)
    assert counted_prefills and min(counted_prefills) >= generation.MIN_SHARED_PREFIX
    assert len(plain.per_item) == 12
    assert reused.per_item == plain.per_item
    assert reused.answers == plain.answers
    assert reused.prompts == plain.prompts
    if task == "plural":
        assert len(set(plain.answers.values())) > 1  # the generations differ per item: not vacuous


def test_loglikelihoods_with_prefix_reuse_match_hflm(tiny, prompts):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from harness.lm import PrefixReuseLM

    tok = tiny.tokenizer
    contexts = [tok.decode(p) for p in prompts]
    reqs = [
        Instance("loglikelihood", {}, (c, cont), idx=i)
        for i, (c, cont) in enumerate((c, cont) for c in contexts for cont in ("Paris", "B", "Rome x"))
    ]
    plain = HFLM(pretrained=tiny.model, tokenizer=tok, batch_size=4).loglikelihood(reqs, disable_tqdm=True)
    lm = PrefixReuseLM(pretrained=tiny.model, tokenizer=tok, batch_size=4)
    reused = lm.loglikelihood(reqs, disable_tqdm=True)
    assert lm.prefix_hits >= len(reqs) // 4
    assert [g for _, g in reused] == [g for _, g in plain]
    np_plain = torch.tensor([v for v, _ in plain])
    torch.testing.assert_close(torch.tensor([v for v, _ in reused]), np_plain, atol=1e-4, rtol=1e-6)
    assert np_plain.std() > 0.1  # different requests, different numbers


# --------------------------------------------------------------------------- LoRA without a copy of the base


def test_lora_student_shares_the_base_and_leaves_it_untouched(tiny, prompts):
    from harness.train import Example, student_of

    base = models.load("tiny-random", "cpu").model
    before = {k: v.clone() for k, v in base.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in base.state_dict().items()}
    types = [type(m) for m in base.modules()]
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        want = base(input_ids=ids).logits
    ex = [Example(p, [5, 6, 7]) for p in prompts]
    with student_of(base, 4, share_base=True) as (student, as_teacher):
        shared = {p.data_ptr() for p in student.parameters()}
        assert set(ptrs.values()) <= shared  # the base's own tensors, not a copy
        assert all(not p.requires_grad for n, p in student.named_parameters() if "lora_" not in n)
        train(student, ex, "self_target_nll", {}, settings(learning_rate=5e-2, epochs=2, batch_size=4), pad_id=0)
        with torch.no_grad():
            moved = student(input_ids=ids).logits
            with as_teacher():
                teacher_view = base(input_ids=ids).logits
        assert not torch.allclose(moved, want, atol=1e-3)  # the adapters trained
        torch.testing.assert_close(teacher_view, want, atol=0, rtol=0)  # adapters off: the teacher exactly
    assert [type(m) for m in base.modules()] == types  # adapters removed
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert all(p.requires_grad for p in base.parameters())
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=ids).logits, want, atol=0, rtol=0)


def test_full_finetune_student_is_an_fp32_copy(tiny):
    from harness.train import student_of

    base = models.load("tiny-random", "cpu").model.to(torch.bfloat16)
    with student_of(base, 0) as (student, as_teacher):
        assert student is not base and next(student.parameters()).dtype == torch.float32
        assert all(p.requires_grad for p in student.parameters())
        with as_teacher():
            pass
    assert next(base.parameters()).dtype == torch.bfloat16


@pytest.mark.slow
def test_lora_trial_leaves_the_teacher_as_it_was(tmp_path):
    """A LoRA trial trains adapters inside the teacher's own modules; afterwards the teacher is untouched."""
    from harness.config import fixed_config
    from harness.spec import load_suite
    from harness.trial import Workbench, run_trial

    one = {"targets": [{"name": "greedy"}], "contexts": [{"name": "empty"}], "losses": [{"name": "forward_kl"}]}
    hp = {"learning_rate": 5e-2, "epochs": 1, "batch_size": 4, "train_inputs": 8, "lora_rank": 4}
    suite = load_suite(write_suite(tmp_path, axes=one, hyperparameters=hp))
    bench = Workbench(suite)
    teacher = bench.teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    types = [type(m) for m in teacher.modules()]
    result = run_trial(bench, fixed_config(suite), suite.seed)
    assert [type(m) for m in teacher.modules()] == types
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    m = result.metrics
    assert m.heldout_kl != m.untrained_heldout_kl  # the student did move
    assert m.test_teacher_score == result.test.teacher.score
