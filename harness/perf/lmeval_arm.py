"""Part `lmeval`: a suite's teacher arm through plain HFLM against `hf-prefix-reuse` (harness.lm).

The same lm-eval call a trial makes for its teacher arm (`trial.Workbench.arm`, test split, the suite's
seed and batch size); identical per-item answers and scores asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import models, scoring
from harness.contexts import Context
from harness.perf.profiles import Missed
from harness.perf.timing import Goal, goal, interleaved, ratio, row, timed
from harness.spec import load_suite
from harness.tasks import load_task, task_manager

PLAIN, REUSE = "lm-eval teacher arm: HFLM", "lm-eval teacher arm: hf-prefix-reuse"


def bench_lmeval(
    m: models.LoadedModel, suite_path: str, *, repeats: int, limit: int | None, missed: Missed
) -> tuple[list[dict[str, Any]], list[Goal]]:
    """The suite's teacher arm (c = instruction + demos) on its test split, plain vs prefix reuse."""
    suite = load_suite(suite_path)
    bundle = load_task(suite.task.name, suite.task_dir())
    items = bundle.split("test", limit if limit is not None else suite.task.eval_limit, suite.seed)
    ctx = Context(suite.context.instruction, suite.context.demos)
    metric = scoring.main_metric(bundle.config, bundle.task, suite.task.metric)
    scores: dict[bool, scoring.ArmScore] = {}

    def arm(reuse: bool) -> Callable[[], float]:
        def run() -> None:
            scores[reuse] = scoring.evaluate_arm(
                "teacher",
                m.model,
                m.tokenizer,
                bundle.lm_eval_task(items),
                bundle.name,
                ctx,
                metric=metric,
                limit=items.limit if items.indices is None else None,
                samples=None if items.indices is None else list(items.indices),
                batch_size=suite.evaluation.batch_size,
                seed=suite.seed,
                task_manager=task_manager(bundle.folder),
                reuse_prefix=reuse,
            )

        return lambda: timed(run)

    arms = {PLAIN: arm(False), REUSE: arm(True)}
    t = interleaved(arms, repeats)
    plain, reused = scores[False], scores[True]
    if plain.per_item != reused.per_item or plain.answers != reused.answers:
        raise AssertionError("hf-prefix-reuse changed lm-eval's per-item outputs")
    n = len(plain.per_item)
    setting = (
        f"{suite.name}: task {bundle.name}, {suite.context.demos} demos + instruction, {n} test items, "
        f"batch {suite.evaluation.batch_size}, {metric} {plain.score:.3f}"
    )
    rows = [row("lm-eval", x, setting, "s/arm", identical="per-item answers and scores") for x in t.values()]
    r = ratio(t[PLAIN], t[REUSE])
    rows[-1]["ratio"] = r[0]
    g = goal(f"lm-eval teacher arm ({suite.name}, {n} items): HFLM / hf-prefix-reuse", r, at_least=2.0, repeats=repeats)
    missed.check(g, arms)
    return rows, [g]
