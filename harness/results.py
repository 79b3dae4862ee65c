"""What a trial and a gap check hand back: typed, so callers read fields instead of string keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from harness.contexts import Context
from harness.metrics import TrialMetrics
from harness.scoring import ArmScore


@dataclass(frozen=True)
class Arms:
    """The lm-eval scores of one trial on one split: the three arms, plus the control task's two (test only)
    when the suite has one."""

    teacher: ArmScore
    baseline: ArmScore
    student: ArmScore
    control_base: ArmScore | None = None
    control_student: ArmScore | None = None

    def present(self) -> dict[str, ArmScore]:
        """Arm name → score, for the arms this trial scored."""
        return {f.name: a for f in dataclasses.fields(self) if (a := getattr(self, f.name)) is not None}


@dataclass(frozen=True)
class TrainingInput:
    """One distillation input as logged: the task's text, the dataset answer, the teacher's target decoded."""

    input: str
    reference: str
    teacher_target: str


@dataclass(frozen=True)
class TrialResult:
    """One configuration trained with one seed: its metrics and the per-item scores on both splits."""

    metrics: TrialMetrics
    validation: Arms
    test: Arms
    student_context: Context
    inputs: list[TrainingInput]
    seed: int
    ledger: dict[str, float] = dataclasses.field(default_factory=dict)  # `cost/*`, `topk/*` (harness.ledger)


@dataclass(frozen=True)
class ContextGap:
    """Teacher (c) against the untrained model under one c': is there a gap for distillation to close?"""

    context: str
    metric: str
    items: int
    teacher: float
    teacher_stderr: float
    baseline: float
    baseline_stderr: float
    gap: float
    gap_stderr: float
