"""Where a context lives after distillation, and what it costs per query: `python -m harness.perf.context_memory`.

For the embedded model and a suite's c: the cache bytes a query pays for its context (text c, text c', a soft
prompt or a KV prefix of n positions: every one of them is n cache positions at inference) and the bytes of
what was trained (the virtual tokens, the prefix, LoRA adapters, or a full copy of the weights in fp32). Counted
from the model's config and parameters (no timing), so one run gives exact figures. Writes
results/perf/context_memory.md and .csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from peft import LoraConfig, get_peft_model

from harness import models
from harness.contexts import Context
from harness.prefix_kv import kv_bytes_per_token
from harness.spec import load_suite
from harness.tasks import encode_prompt, load_task
from harness.trial import Workbench


def rows(suite_path: str, n_tokens: int, lora_rank: int) -> tuple[list[dict[str, object]], int]:
    """One row per way of holding c, and the cache bytes of one context position."""
    suite = load_suite(suite_path)
    bench = Workbench(suite)
    model, tok = bench.teacher.model, bench.tok
    cfg = model.config
    per_token = kv_bytes_per_token(model)
    doc = bench.splits["validation"].docs[0]
    task = load_task(suite.task.name, suite.task_dir())
    full = len(encode_prompt(tok, task.render(doc, bench.context, tok)))
    bare = len(encode_prompt(tok, task.render(doc, Context(None, 0), tok)))
    c_tokens = full - bare
    params = sum(p.numel() for p in model.parameters())
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    lora = get_peft_model(
        models.load(suite.models.teacher, "cpu").model,
        LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules="all-linear"),
    )
    lora_params = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    return [
        {"c' / method": f"text c ({suite.name})", "context positions per query": c_tokens, "trained parameters": 0},
        {"c' / method": "text c' = empty (full FT or LoRA)", "context positions per query": 0, "trained parameters": 0},
        {
            "c' / method": f"soft_prompt(n_tokens={n_tokens})",
            "context positions per query": n_tokens,
            "trained parameters": n_tokens * cfg.hidden_size,
        },
        {
            "c' / method": f"prefix_tuning(n_tokens={n_tokens})",
            "context positions per query": n_tokens,
            "trained parameters": 2 * cfg.num_hidden_layers * kv_heads * n_tokens * head_dim,
        },
        {
            "c' / method": f"LoRA rank {lora_rank} (all linear)",
            "context positions per query": 0,
            "trained parameters": lora_params,
        },  # fmt: skip
        {"c' / method": "full fine-tuning", "context positions per query": 0, "trained parameters": params},
    ], per_token


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--suite", default="suites/rule_sheet.yaml")
    ap.add_argument("--n-tokens", type=int, default=32)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--out", default="results/perf")
    args = ap.parse_args(argv)
    table, per_token = rows(args.suite, args.n_tokens, args.lora_rank)
    df = pd.DataFrame(table)
    df["context KV bytes per query"] = df["context positions per query"] * per_token
    df["trained bytes (fp32)"] = df["trained parameters"] * 4
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "context_memory.csv", index=False)
    cmd = "python -m harness.perf.context_memory " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"
    )
    text = [
        "# Where the context lives, and its memory per query",
        "",
        f"Command: `{cmd}` (counted from the model's config and parameters: exact, no timing).",
        "",
        f"One context position costs {per_token} bytes of KV cache per query on this model (keys and values, every "
        "layer, the model's dtype). A soft prompt and a KV prefix of n positions cost the same n positions at "
        "inference; they differ in what is trained. LoRA and full fine-tuning leave no context beyond the bare "
        "prompt (positions are counted over the prompt with no context, which on SmolLM2 still holds its chat "
        "template's default system message), at the price "
        "of trained weights (a full fine-tune is a copy of the model).",
        "",
        df.to_markdown(index=False),
        "",
    ]
    (out / "context_memory.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
