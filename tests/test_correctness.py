"""Guards against numbers that come out wrong without any error: stale caches, other logits than the
model's, a beam that is not the most likely one, the wrong stop strings, unseeded LoRA, different token ids
in training and evaluation."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from helpers import PARITY, SUITES, write_suite
from transformers import AutoModelForCausalLM, CohereConfig, Gemma2Config, GraniteConfig, LlamaConfig

from harness import generation, models, scoring, targets
from harness.batching import make_batch, target_logits
from harness.config import fixed_config
from harness.contexts import Context
from harness.spec import load_suite
from harness.train import apply_lora
from harness.trial import Workbench, run_trial

TIMING = {"train_time_s", "teacher_time_s", "train_tokens_per_s", "eval_time_s", "wall_time_s", "peak_memory_mb"}
ONE_CONFIG = {
    "targets": [{"name": "greedy"}],
    "contexts": [{"name": "empty"}],
    "losses": [{"name": "forward_kl"}],
}


# ----------------------------------------------------------------------------- 1. score cache and task data


@pytest.mark.slow
def test_score_cache_keys_on_the_task_data(tmp_path):
    """Edited test data must be scored again, not paired by doc_id with the old per-item scores."""
    task_dir = tmp_path / "parity"
    shutil.copytree(PARITY, task_dir)
    suite = load_suite(write_suite(tmp_path, task={"path": str(task_dir), "eval_limit": 12}, axes=ONE_CONFIG))
    first = Workbench(suite).teacher_arm()
    assert not first.cached and len(first.per_item) == 12

    test_file = task_dir / "test.jsonl"
    rows = [json.loads(line) for line in test_file.read_text().splitlines()]
    test_file.write_text("".join(json.dumps({**r, "label": 1 - r["label"]}) + "\n" for r in rows))
    again = Workbench(suite).teacher_arm()
    assert not again.cached
    # same prompts, flipped gold labels: every item's accuracy flips
    assert again.per_item == {i: 1.0 - v for i, v in first.per_item.items()}

    assert Workbench(suite).teacher_arm().cached  # unchanged data still hits the cache


# ----------------------------------------------------------------------------- 2. the model's own logits

_SMALL = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
FAMILIES = {
    "llama": lambda: LlamaConfig(**_SMALL),
    "gemma2": lambda: Gemma2Config(
        **_SMALL, head_dim=8, final_logit_softcapping=0.5, attn_logit_softcapping=None, sliding_window=16
    ),
    "granite": lambda: GraniteConfig(**_SMALL, logits_scaling=4.0),
    "cohere": lambda: CohereConfig(**_SMALL, logit_scale=0.25),
}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15, 16]]
TARGETS = [[20, 21, 22], [23], [24, 25]]


def _reference_logits(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's own forward on each unpadded sequence, at the positions predicting the target tokens."""
    out = []
    for p, t in zip(PROMPTS, TARGETS, strict=True):
        logits = model(input_ids=torch.tensor([p + t])).logits[0]
        out.append(logits[len(p) - 1 : len(p) - 1 + len(t)])
    return out


def _assert_target_logits_are_the_models(model: torch.nn.Module) -> None:
    batch = make_batch(PROMPTS, TARGETS, pad_id=0)
    with torch.no_grad():
        got = target_logits(model, batch)
        want = _reference_logits(model)
    for i, ref in enumerate(want):
        torch.testing.assert_close(got[i, : len(TARGETS[i])], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_target_logits_are_the_models_logits(family):
    torch.manual_seed(0)
    config = FAMILIES[family]()
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).eval()
    _assert_target_logits_are_the_models(model)
    if family != "llama":  # the check is not vacuous: these families change the logits after the LM head
        with torch.no_grad():
            hidden = model.get_decoder()(input_ids=torch.tensor([PROMPTS[0]])).last_hidden_state
            raw = model.get_output_embeddings()(hidden)
            assert (raw - model(input_ids=torch.tensor([PROMPTS[0]])).logits).abs().max() > 1e-2


def test_target_logits_of_a_lora_wrapped_model():
    torch.manual_seed(0)
    config = FAMILIES["gemma2"]()
    config._attn_implementation = "eager"
    model = apply_lora(AutoModelForCausalLM.from_config(config), 4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # adapters that change the output
    model.eval()
    _assert_target_logits_are_the_models(model)


# ----------------------------------------------------------------------------- 3. beam = most likely beam


@pytest.mark.slow
def test_beam_target_is_the_most_likely_returned_beam(tiny, parity):
    tok = tiny.tokenizer
    prompts = [
        tok.encode(parity.render(d, Context(None, 0), tok), add_special_tokens=False) for d in parity.train_docs()
    ]
    kw = dict(max_new_tokens=8, batch_size=16, stop_strings=(" ",))  # a stop string cuts beams to unequal lengths
    picked = targets.select_targets("beam", {"n_beams": 4}, tiny.model, tok, prompts, None, seed=0, **kw)
    beams = generation.generate(tiny.model, tok, prompts, num_beams=4, num_return_sequences=4, **kw)
    flat_prompts = [p for p, outs in zip(prompts, beams, strict=True) for _ in outs]
    flat = [b for outs in beams for b in outs]
    scores = generation.sequence_logprobs(tiny.model, flat_prompts, flat, batch_size=64)
    own = generation.sequence_logprobs(tiny.model, prompts, picked, batch_size=64)
    assert len({len(b) for b in flat}) > 1  # beams of different lengths: mean and sum rankings can differ
    for i, outs in enumerate(beams):
        assert picked[i] in outs
        assert own[i] >= max(scores[4 * i : 4 * i + 4]) - 1e-4, i


# ----------------------------------------------------------------------------- 4. the task's stop strings


def _task_with_stops(tmp_path, until: list[str]):
    folder = tmp_path / "multiline"
    folder.mkdir()
    src = SUITES / "tasks" / "plural"
    for f in src.glob("*.jsonl"):
        shutil.copy(f, folder / f.name)
    cfg = (src / "plural.yaml").read_text().replace('until: ["<|im_end|>", "\\n"]', f"until: {json.dumps(until)}")
    assert json.dumps(until) in cfg
    (folder / "plural.yaml").write_text(cfg)
    return folder


def test_stop_strings_default_to_the_tasks(tmp_path):
    folder = _task_with_stops(tmp_path, ["<|im_end|>", "\n\n"])
    task = {"name": "plural", "path": str(folder), "metric": "exact_match"}
    suite = load_suite(write_suite(tmp_path, task=task, axes=ONE_CONFIG))
    assert suite.training.stop_strings is None
    assert Workbench(suite).stop == ("\n\n",)  # multi-line answers are not cut at the first newline
    explicit = load_suite(write_suite(tmp_path, task=task, axes=ONE_CONFIG, training={"stop_strings": ["\n"]}))
    assert Workbench(explicit).stop == ("\n",)


# ----------------------------------------------------------------------------- 5. LoRA is seeded


@pytest.mark.slow
def test_lora_trial_reproduces_in_one_process(tmp_path):
    hp = {"learning_rate": 1.0e-2, "epochs": 1, "batch_size": 4, "train_inputs": 8, "lora_rank": 4}
    suite = load_suite(write_suite(tmp_path, axes=ONE_CONFIG, hyperparameters=hp))
    bench = Workbench(suite)
    first = run_trial(bench, fixed_config(suite), 0)
    torch.rand(1000)  # other random work between the trials
    again = run_trial(bench, fixed_config(suite), 0)
    same = {k: v for k, v in again.metrics.logged().items() if k not in TIMING}
    assert same == {k: v for k, v in first.metrics.logged().items() if k not in TIMING}
    other = run_trial(bench, fixed_config(suite), 1)  # another seed: another adapter init and data order
    assert other.metrics.final_train_loss != first.metrics.final_train_loss


# ----------------------------------------------------------------------------- 6. top_k in the baseline key


@pytest.mark.slow
def test_untrained_heldout_kl_uses_the_current_top_k(tmp_path):
    def bench_with(k: int) -> Workbench:
        return Workbench(load_suite(write_suite(tmp_path, axes=ONE_CONFIG, training={"top_k": k})))

    wide = bench_with(16)
    ctx = wide.student_context(fixed_config(wide.suite).context)
    before = wide.baseline_intrinsic(ctx)
    narrow = bench_with(2)  # same work_dir: the on-disk cache is shared
    got = narrow.baseline_intrinsic(ctx)
    assert got == narrow.intrinsic(narrow.base_model(), ctx)
    assert got["heldout_kl"] != before["heldout_kl"]


# ----------------------------------------------------------------------------- 7. model fingerprints


def _save_model(folder) -> None:
    """A model large enough (≈ 3 MB of weights) that sampling the first and last MiB would miss its middle."""
    torch.manual_seed(0)
    config = LlamaConfig(**{**_SMALL, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4})
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)


def test_fingerprint_sees_every_byte_of_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_MODEL_CACHE", str(tmp_path / "cache"))
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _save_model(a)
    shutil.copytree(a, b)
    shutil.copytree(a, c)
    weights = b / "model.safetensors"
    size = weights.stat().st_size
    assert size > 3 * 2**20
    with weights.open("r+b") as fh:  # one byte in the middle of the file: one layer's weights differ
        fh.seek(size // 2)
        byte = fh.read(1)
        fh.seek(size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    fa, fb, fc = models.fingerprint(str(a)), models.fingerprint(str(b)), models.fingerprint(str(c))
    assert fa != fb
    assert fa == fc  # content, not the folder's name

    # the full hash is remembered per (path, size, mtime): a later load does not read the weights again
    st = weights.stat()
    with weights.open("r+b") as fh:
        fh.seek(size // 2)
        fh.write(byte)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert models.fingerprint(str(b)) == fb
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # a rewritten file is hashed again
    assert models.fingerprint(str(b)) == fa


def test_hub_fingerprint_follows_the_resolved_revision(tmp_path, monkeypatch):
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    repo = hub / "models--acme--tiny"

    def publish(commit: str) -> str:
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "config.json").write_text("{}")
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        return models.fingerprint(models.resolve("acme/tiny"))

    old = publish("a" * 40)
    assert publish("b" * 40) != old  # an updated snapshot is a different model
    with pytest.raises(models.ModelError, match="acme/nothing"):
        models.fingerprint("acme/nothing")


# ----------------------------------------------------------------------------- 8. BOS and token ids


def _bos_tokenizer():
    """The tiny tokenizer, but with a BOS (distinct from the chat markers) that `encode` prepends by default."""
    from tokenizers import processors

    tok = models.build_tiny_tokenizer()
    tok.bos_token = "<|endoftext|>"
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", bos)]
    )
    assert tok.encode("ab")[0] == bos
    return tok


@pytest.mark.parametrize("task_name", ["parity", "plural"])
def test_training_ids_are_the_ids_lm_eval_feeds_the_model(tmp_path, task_name, monkeypatch):
    task = {"name": task_name, "path": str(SUITES / "tasks" / task_name), "eval_limit": 6}
    if task_name == "plural":
        task["metric"] = "exact_match"
    suite = load_suite(write_suite(tmp_path, task=task, axes=ONE_CONFIG))
    bench = Workbench(suite)
    bench.tok = _bos_tokenizer()
    ctx = Context("Answer briefly.", 2)
    prompts = bench.encode(bench.task.eval_docs()[:6], ctx)
    assert all(p[0] == bench.tok.bos_token_id for p in prompts)

    seen: list[list[int]] = []

    def record(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.shape != ids.shape:  # a decoding step: one new token per row
            mask = None
        for r in range(ids.shape[0]):
            row = ids[r] if mask is None else ids[r][mask[r].bool()]  # generation pads on the left
            seen.append(row.tolist())

    model = bench.teacher.model
    # Plain HFLM: with prefix reuse the model sees the shared prefix and each row's own tokens in separate
    # calls (that path gives the same outputs: tests/test_fast_paths.py).
    monkeypatch.setattr(scoring, "REUSE_PREFIX", False)
    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        bench.arm("student", model, None, ctx)
    finally:
        handle.remove()
    assert seen
    for p in prompts:
        assert any(row[: len(p)] == p for row in seen), bench.tok.decode(p)
