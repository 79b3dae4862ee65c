"""The GPU code path, run on CPU: the perf-cuda script in its tiny mode, bf16 autocast training with fp32
master weights, and a whole trial with `device: cpu` and `dtype: bfloat16`, so nothing GPU-only is untested."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from helpers import settings, write_suite
from transformers import LlamaForCausalLM

from harness import models
from harness.batching import make_batch, to_device
from harness.config import HyperParams, TrialConfig
from harness.perf import cuda
from harness.spec import load_suite
from harness.teacher import score_topk
from harness.train import Example, train
from harness.trial import Workbench, run_trial


def test_perf_cuda_tiny_cpu_writes_a_sane_table(tmp_path):
    assert cuda.main(["--device", "cpu", "--size", "tiny", "--out", str(tmp_path)]) == 0
    with (tmp_path / "perf_cuda.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == cuda.COLUMNS
        rows = {r["part"]: r for r in reader}
    assert set(rows) == {
        "train_full_ft",
        "train_lora_r16",
        "generate_no_reuse",
        "generate_prefix_reuse",
        "score_topk8",
    }
    size = cuda.SIZES["tiny"]
    for r in rows.values():
        assert float(r["seconds"]) > 0 and float(r["tokens_per_s"]) > 0 and int(r["tokens"]) > 0
        assert math.isnan(float(r["mfu_pct"]))  # no bf16 peak for a CPU: not invented
        assert math.isnan(float(r["peak_mem_gib"]))  # CUDA memory only
    assert int(rows["train_full_ft"]["tokens"]) == size.train_batch * size.train_len * size.train_steps
    assert "float32" in rows["train_full_ft"]["note"]  # fp32 master weights under bf16 autocast
    assert int(rows["generate_prefix_reuse"]["tokens"]) == size.gen_batch * size.gen_new  # random model: no eos
    moved = json.loads((tmp_path / "weights_moved.json").read_text())
    assert moved["train_full_ft"] > 0 and moved["train_lora_r16"] > 0
    md = (tmp_path / "perf_cuda.md").read_text()
    assert "| part | batch |" in md and "device cpu" in md and "Memcpy HtoD" in md
    assert "device cpu" in (tmp_path / "machine.txt").read_text()


def test_peak_table_and_flop_count():
    assert cuda.peak_tflops(torch.device("cpu"))[0] is None
    one_b = cuda.config_for(cuda.SIZES["1b"])
    assert (one_b.hidden_size, one_b.vocab_size) == (2048, 49152) and 16 <= one_b.num_hidden_layers <= 24
    with torch.device("meta"):  # shapes only: no 1B allocation in CI
        big = LlamaForCausalLM(one_b)
    n = cuda.flop_params(big)
    assert 0.9e9 < n < 1.3e9  # a ~1B model, embeddings excluded


def test_auto_device_and_cpu_copies():
    assert models.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    t = torch.arange(3)
    assert to_device(t, torch.device("cpu")) is t  # no copy when it is already there


def test_bf16_autocast_on_cpu_trains_fp32_master_weights():
    lm = models.load(models.TINY, "cpu", frozen_bf16=True)
    model = lm.model
    assert next(model.parameters()).dtype == torch.float32  # frozen_bf16 is a CUDA-only saving
    prompts = [lm.tokenizer.encode("abc" * (i + 1)) for i in range(4)]
    tgts = [lm.tokenizer.encode("xy") for _ in range(4)]
    pad = lm.tokenizer.pad_token_id
    seen: list[torch.dtype] = []
    hook = model.lm_head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    exs = [Example(prompt=p, target=t) for p, t in zip(prompts, tgts, strict=True)]
    res = train(model, exs, "self_target_nll", {}, settings(dtype="bfloat16", epochs=6, learning_rate=1e-2), pad_id=pad)
    hook.remove()
    assert set(seen) == {torch.bfloat16}  # the matmuls ran in bf16 ...
    assert all(p.dtype == torch.float32 for p in model.parameters())  # ... over fp32 master weights
    assert res.losses[-1] < res.losses[0]
    scored = score_topk(model, prompts, tgts, k=4, temperature=1.0, batch_size=2, pad_id=pad)
    assert all(s.logprobs.shape == (2, 4) and torch.isfinite(s.logprobs).all() for s in scored)
    assert make_batch(prompts, tgts, pad).n_tokens > 0


@pytest.mark.slow
def test_trial_on_cpu_in_bfloat16_trains_and_scores(tmp_path):
    path = write_suite(
        tmp_path,
        models={"teacher": "tiny-random", "student": "same", "device": "cpu"},
        training={"max_new_tokens": 6, "top_k": 16, "dtype": "bfloat16"},
        axes={"targets": [{"name": "greedy"}], "contexts": [{"name": "empty"}], "losses": [{"name": "forward_kl"}]},
    )
    suite = load_suite(path)
    assert suite.training.dtype == "bfloat16" and suite.models.device == "cpu"
    bench = Workbench(suite)
    cfg = TrialConfig(
        suite.axes.targets[0],
        suite.axes.contexts[0],
        suite.axes.losses[0],
        HyperParams.from_values({**dict(suite.hyperparameters), "epochs": 3}),
    )
    m = run_trial(bench, cfg, suite.seed).metrics.logged()
    assert m["train_steps"] == 6
    assert all(math.isfinite(m[k]) for k in ("final_train_loss", "heldout_kl", "test_student_score"))
    assert m["heldout_kl"] < m["untrained_heldout_kl"]  # it learned the teacher's distribution
