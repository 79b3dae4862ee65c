"""SDFT's EMA teacher (`on_policy` targets with `teacher: ema`): the student's weights, averaged over training.

TRL's SDFTTrainer (`teacher_model_kind="ema"`, trl/experimental/sdft/teacher_sync.py) keeps a teacher whose
weights follow the student's: every `teacher_sync_steps` optimizer steps, teacher ← (1 − α) · teacher + α · student
with α = `teacher_update_rate` (defaults 0.05 and 1). The teacher still sees the full context c; only its weights
move. Here the average is kept for the student's trainable tensors only (the rest is shared and frozen, so it is
its own average): all weights for full fine-tuning, the adapters for LoRA. It starts at the student's initial
weights, i.e. at the base teacher (TRL's LoRA variant starts a separate adapter at zeros, also the base). To score
with it, the averaged tensors are swapped into the student's parameters (pointer swaps, no copy, no second model)
and swapped back before the next optimizer step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["EmaTeacher"]


class EmaTeacher:
    """The averaged weights of `student`'s trainable parameters, and a context under which the student is them."""

    def __init__(self, student: torch.nn.Module, update_rate: float, sync_steps: int) -> None:
        if not 0 < update_rate <= 1:
            raise ValueError(f"update_rate must be in (0, 1], not {update_rate}")
        if sync_steps < 1:
            raise ValueError(f"sync_steps must be >= 1, not {sync_steps}")
        self.student = student
        self.params = [p for p in student.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("an EMA teacher averages trained weights, and this student trains none")
        self.shadow = [p.detach().clone() for p in self.params]
        self.update_rate, self.sync_steps = update_rate, sync_steps
        self.seen = 0  # optimizer updates seen
        self.updates = 0  # EMA updates made
        self._swapped = False

    @property
    def elements(self) -> int:
        """Averaged values (what one update reads and writes)."""
        return sum(s.numel() for s in self.shadow)

    @property
    def nbytes(self) -> int:
        """Memory the average takes beside the student."""
        return sum(s.numel() * s.element_size() for s in self.shadow)

    @torch.no_grad()
    def step(self) -> None:
        """After an optimizer update: every `sync_steps` of them, teacher ← (1 − α) · teacher + α · student."""
        if self._swapped:
            raise RuntimeError("the EMA teacher is swapped in; an optimizer step must not run inside as_teacher")
        self.seen += 1
        if self.seen % self.sync_steps:
            return
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], self.update_rate)
        self.updates += 1

    def _swap(self) -> None:
        for i, p in enumerate(self.params):
            p.data, self.shadow[i] = self.shadow[i], p.data
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def as_teacher(self) -> Iterator[None]:
        """Within the block the student module holds the averaged weights (eval mode); restored afterwards."""
        was_training = self.student.training
        self.student.eval()
        self._swap()
        try:
            yield
        finally:
            self._swap()
            self.student.train(was_training)
