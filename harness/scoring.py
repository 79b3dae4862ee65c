"""Task scoring with lm-eval: teacher (c), baseline (c'), student (c').

All three arms go through `lm_eval.simple_evaluate` with HFLM wrapping the
in-memory model (no reload per arm), the chat template and demonstrations as
turns, so the prompts are the very strings the student was trained on.
Teacher and baseline scores do not depend on the trial: they are cached by
(model fingerprint, task, split and its items, a hash of its documents, context) and
reused across trials, seeds and reruns.
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lm_eval
import lm_eval.evaluator
import numpy as np

from harness import console, tasks
from harness.cache import Store
from harness.contexts import Context
from harness.lm import PrefixReuseLM, QuietHFLM

log = logging.getLogger(__name__)

REUSE_PREFIX = True  # lm-eval through `hf-prefix-reuse` (harness.lm) unless an arm asks otherwise


def _git_describe() -> str | None:
    out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


@contextmanager
def _quiet_git_lookup() -> Iterator[None]:
    """lm-eval records the current directory's git commit with `git describe` and lets git's stderr through, so
    outside a checkout every scoring call printed 'fatal: not a git repository'. Same lookup, stderr captured."""
    own = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = _git_describe
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = own


@dataclass
class ArmScore:
    """One arm's score on the held-out items, with the per-item values that bootstrap needs."""

    arm: str
    metric: str
    score: float
    stderr: float
    per_item: dict[int, float]  # doc_id → metric value
    answers: dict[int, str] = field(default_factory=dict)  # doc_id → the model's (filtered) answer
    references: dict[int, str] = field(default_factory=dict)
    prompts: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False
    raw: dict[str, Any] = field(default_factory=dict)  # lm-eval's results block for the task

    def to_state(self) -> dict[str, Any]:
        """Plain Python values only: the cache loads with `weights_only=True`, which refuses numpy scalars."""
        return _plain(
            {
                k: getattr(self, k)
                for k in (
                    "arm",
                    "metric",
                    "score",
                    "stderr",
                    "per_item",
                    "answers",
                    "references",
                    "prompts",
                    "seconds",
                    "raw",
                )
            }
        )


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _answer(sample: dict[str, Any]) -> str:
    """The model's answer in a logged sample: filtered generation, or the chosen option for multiple choice."""
    filtered = sample.get("filtered_resps")
    if isinstance(filtered, list) and filtered:
        first = filtered[0]
        if isinstance(first, str):
            return first
        if isinstance(first, (list, tuple)) and first and isinstance(first[0], (int, float)):
            # multiple choice: [(loglik, is_greedy), ...] → index of the best option
            lls = [float(x[0]) if isinstance(x, (list, tuple)) else float(x) for x in filtered]
            return str(int(np.argmax(lls)))
    return str(filtered)


def main_metric(task_config: dict[str, Any] | str, task: Any, requested: str | None) -> str:
    """The suite's metric, else the task's first declared metric."""
    if requested:
        return requested
    metrics = getattr(task.config, "metric_list", None) or []
    if metrics:
        return metrics[0]["metric"]
    return "acc" if task.config.output_type == "multiple_choice" else "exact_match"


def _simple_evaluate(
    lm: Any,
    task_config: dict[str, Any] | str,
    task_name: str,
    ctx: Context,
    limit: int | None,
    samples: list[int] | None,
    seed: int,
    task_manager: Any,
) -> Any:
    """lm-eval's own evaluation of one arm, every setting pinned (seeds, chat template, multi-turn few-shot)."""
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=[task_config],
        num_fewshot=ctx.n_demos,
        system_instruction=ctx.system,
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        limit=limit,
        samples={task_name: list(samples)} if samples else None,
        log_samples=True,
        bootstrap_iters=0,
        task_manager=task_manager or tasks.task_manager(None),
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        verbosity="WARNING",
    )


@_quiet_git_lookup()
def evaluate_arm(
    arm: str,
    model: Any,
    tokenizer: Any,
    task_config: dict[str, Any] | str,
    task_name: str,
    ctx: Context,
    *,
    metric: str,
    limit: int | None,
    batch_size: int,
    seed: int = 0,
    task_manager: Any = None,
    samples: list[int] | None = None,
    reuse_prefix: bool | None = None,
) -> ArmScore:
    """Score one model under one context with real lm-eval.

    `task_config` is what lm-eval scores (its `test_split`: see `TaskBundle.lm_eval_task`); `samples`, when
    given, are the positions of the items to score in it (a carved split) and `limit` must be None.
    `reuse_prefix` (default `REUSE_PREFIX`): lm-eval's HFLM with the shared few-shot prefix computed once
    (`harness.lm`; same per-item outputs); False runs plain HFLM.
    """
    start = time.perf_counter()
    lm_class = PrefixReuseLM if (REUSE_PREFIX if reuse_prefix is None else reuse_prefix) else QuietHFLM
    lm = lm_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    items = len(samples) if samples else limit
    with console.phase(f"lm-eval scoring {arm} on {task_name}" + (f" ({items} items)" if items else "")):
        out = _simple_evaluate(lm, task_config, task_name, ctx, limit, samples, seed, task_manager)
    if out is None:
        raise RuntimeError("lm-eval returned no results")
    results = out["results"][task_name]
    key = next((k for k in results if k.split(",")[0] == metric and not k.endswith("_stderr")), None)
    if key is None:
        have = sorted(k.split(",")[0] for k in results if "," in k and "stderr" not in k)
        raise ValueError(f"task '{task_name}' has no metric '{metric}' (it reports: {', '.join(have)})")
    filt = key.split(",", 1)[1] if "," in key else None
    per_item: dict[int, float] = {}
    answers: dict[int, str] = {}
    refs: dict[int, str] = {}
    prompts: dict[int, str] = {}
    for s in out["samples"][task_name]:
        if filt and s.get("filter") not in (None, filt):
            continue
        i = int(s["doc_id"])
        per_item[i] = float(s[metric])
        answers[i] = _answer(s)
        refs[i] = str(s.get("target"))
        args = s.get("arguments")
        if isinstance(args, (list, tuple)) and args:
            first = args[0]
            prompts[i] = str(first[0] if isinstance(first, (list, tuple)) else first)
    vals = np.array(list(per_item.values()))
    stderr = float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    score = ArmScore(
        arm=arm,
        metric=metric,
        score=float(vals.mean()) if len(vals) else float("nan"),
        stderr=stderr,
        per_item=per_item,
        answers=answers,
        references=refs,
        prompts=prompts,
        seconds=time.perf_counter() - start,
        raw={k: v for k, v in results.items() if isinstance(v, (int, float, str))},
    )
    log.info(
        "%s: %s = %.3f ± %.3f (%d items, %.1f s)", arm, metric, score.score, score.stderr, len(vals), score.seconds
    )
    return score


def cached_arm(store: Store, fingerprint: str, *args: Any, data: str, split: dict[str, Any], **kwargs: Any) -> ArmScore:
    """`evaluate_arm` for a model that does not change across trials (teacher, baseline): computed once per split.

    `data` is the split's `Split.fingerprint` (the key holds what the documents are, not only where they
    were read from) and `split` its `Split.key()` (which split, which items: validation and test never share
    an entry).
    """
    arm, _model, _tok, task_config, task_name, ctx = args
    parts = {
        "model": fingerprint,
        "task": task_config if isinstance(task_config, dict | str) else task_name,
        "task_name": task_name,
        "data": data,
        "split": split,
        "context": [ctx.system, ctx.n_demos],
        "metric": kwargs["metric"],
        "limit": kwargs["limit"],
        "seed": kwargs.get("seed", 0),
        "lm_eval": lm_eval.__version__,
    }
    before = store.hits
    state = store.get_or_compute("scores", parts, lambda: evaluate_arm(*args, **kwargs).to_state())
    score = ArmScore(**state)
    score.arm = arm
    score.cached = store.hits > before
    return score


def paired_difference(a: ArmScore, b: ArmScore) -> tuple[float, float, int]:
    """Mean of a − b over the items both scored, its paired stderr, and the item count."""
    ids = sorted(set(a.per_item) & set(b.per_item))
    diff = np.array([a.per_item[i] - b.per_item[i] for i in ids], dtype=float)
    if not len(diff):
        return float("nan"), float("nan"), 0
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return float(diff.mean()), se, len(diff)
