"""Every metric the harness reports, defined once: name, direction, description, decimals.

The trial fills `TrialMetrics` (a misspelt metric is a TypeError, not a silently
missing column), tracking logs it, the sweep takes objective directions from it,
the report orders and prints its columns by it, and the README's metric table is
generated from it (`python -m harness.metrics`; a test checks the README).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal["maximize", "minimize"]
_KEY = "harness.metric"


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    direction: Direction | None = None  # which way is better; None: a reference or a count, not a goal
    digits: int = 3  # decimals in report tables


def _metric(description: str, direction: Direction | None = None, digits: int = 3, optional: bool = False) -> Any:
    """A TrialMetrics field carrying its own definition (optional ones default to None)."""
    meta = {_KEY: (description, direction, digits)}
    return field(default=None, metadata=meta) if optional else field(metadata=meta)


@dataclass(frozen=True)
class TrialMetrics:
    """One seed's numbers, or a configuration's over its seeds (same names), in reading order.

    A seed's run holds its own values (intervals over items); the configuration's run holds the mean
    over seeds (intervals over items x seeds). Scores come in two splits: `validation_*` chose the
    configuration (the sweep's objective, the pruner), `test_*` are reported and never chose anything.
    """

    validation_gap_closure: float = _metric(
        "gap closure on the validation split: what the sweep optimises (objective `gap_closure`, mean over seeds); "
        "NaN (trial failed) when teacher and baseline score the same there",
        "maximize",
    )
    validation_student_score: float = _metric(
        "the student's lm-eval main metric on the validation split (objective `student_score`)", "maximize"
    )
    validation_teacher_score: float = _metric("the teacher's (base model with c) score on the validation split")
    validation_baseline_score: float = _metric("the untrained model's score with c' on the validation split")
    test_gap_closure: float = _metric(
        "(student − baseline) / (teacher − baseline) on the test split: the share of the context's effect moved "
        "into the weights; reported only, never used to choose",
        "maximize",
    )
    test_gap_closure_low: float = _metric(
        "lower end of the 95% interval of `test_gap_closure`: bootstrap over items (x seeds for a configuration)"
    )
    test_gap_closure_high: float = _metric("upper end of that interval")
    test_student_score: float = _metric("the trained student's score with c' on the test split", "maximize")
    test_student_score_low: float = _metric("lower end of the 95% interval of `test_student_score` (items x seeds)")
    test_student_score_high: float = _metric("upper end of that interval")
    test_teacher_score: float = _metric(
        "lm-eval main metric on the test split: base model with the full context c (cached per study)"
    )
    test_baseline_score: float = _metric("the same for the base model with the shorter context c', untrained (cached)")
    seeds: float = _metric("training seeds behind these values (1 in a seed's own run)", None, 0)
    heldout_kl: float = _metric(
        "mean token KL(teacher with c ‖ student with c') on validation inputs, teacher top-k + tail bucket",
        "minimize",
        4,
    )
    untrained_heldout_kl: float = _metric("`heldout_kl` of the untrained student: where training started", None, 4)
    greedy_agreement: float = _metric(
        "share of validation inputs where the student's greedy answer equals the teacher's", "maximize"
    )
    untrained_greedy_agreement: float = _metric("`greedy_agreement` of the untrained student")
    context_tokens_saved: float = _metric("|c| − |c'| per query, in tokens of the rendered prompts", "maximize", 1)
    train_tokens: float = _metric("tokens through the student in training (prompts + targets)", "minimize", 0)
    target_tokens: float = _metric("target tokens the loss was computed on", None, 0)
    train_steps: float = _metric("optimizer steps (batches)", None, 0)
    final_train_loss: float = _metric("training loss of the last batch", None, 4)
    train_time_s: float = _metric("seconds in the training loop", "minimize", 1)
    teacher_time_s: float = _metric("seconds making teacher targets and top-k log-probs (near 0 when cached)", None, 1)
    eval_time_s: float = _metric("seconds scoring teacher, baseline and student with lm-eval (both splits)", None, 1)
    wall_time_s: float = _metric("seconds for one seed's trial, control task included", "minimize", 1)
    peak_memory_mb: float = _metric("peak GPU memory on CUDA, peak resident memory on CPU (MiB)", "minimize", 0)
    train_tokens_per_s: float = _metric("`train_tokens` / `train_time_s`", "maximize", 1)
    control_base_score: float | None = _metric(
        "`task.control` only: the untrained model's score on the unrelated control task (cached)", optional=True
    )
    control_student_score: float | None = _metric("the student's score on the control task, same prompt", optional=True)
    control_forgetting: float | None = _metric(
        "control base − student: skill lost to distillation (positive = forgot)", "minimize", optional=True
    )
    control_forgetting_low: float | None = _metric(
        "lower end of the 95% interval of `control_forgetting` (items x seeds)", optional=True
    )
    control_forgetting_high: float | None = _metric("upper end of that interval", optional=True)

    def logged(self) -> dict[str, float]:
        """The defined values by name (absent optional ones left out), as tracking logs them."""
        return {k: float(v) for k, v in dataclasses.asdict(self).items() if v is not None}


# Per-step metrics, logged during training (names with a slash group them in the MLflow UI).
TRAIN_LOSS = Metric("train/loss", "the trial's loss on each training batch", "minimize", 4)
TRAIN_LR = Metric("train/lr", "learning rate after each step", None, 6)
HELDOUT_KL = Metric(
    "heldout/kl",
    "`heldout_kl` at step 0 (untrained), at each eval point and at the end; the pruner's signal",
    "minimize",
    4,
)
STEP_METRICS: dict[str, Metric] = {m.name: m for m in (TRAIN_LOSS, TRAIN_LR, HELDOUT_KL)}

METRICS: dict[str, Metric] = {f.name: Metric(f.name, *f.metadata[_KEY]) for f in dataclasses.fields(TrialMetrics)}

# `sweep.objectives` names → the metric the study optimises: a score on the validation split, never on test.
OBJECTIVES: dict[str, str] = {
    "gap_closure": "validation_gap_closure",
    "student_score": "validation_student_score",
    "train_tokens": "train_tokens",
    "wall_time_s": "wall_time_s",
}


def markdown_table() -> str:
    """The README's metric table."""
    arrow = {"maximize": "↑", "minimize": "↓", None: ""}
    rows = ["| metric | better | what it is |", "|---|---|---|"]
    for m in (*METRICS.values(), *STEP_METRICS.values()):
        rows.append(f"| `{m.name}` | {arrow[m.direction]} | {m.description.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
