"""The peer: TRL's GKDTrainer step (lmbda=0, beta=0: forward KL, the teacher's forward every step).

TRL is the `perf` extra (pinned in constraints.txt), imported only when this arm is built.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import torch

from harness.perf.timing import Laps
from harness.train import Example


class TRLStep:
    """TRL GKDTrainer's own training step (compute_loss + backward) and its own default optimizer."""

    def __init__(
        self, student: torch.nn.Module, teacher_model: torch.nn.Module, tok: Any, batch: list[Example], *, bf16: bool
    ) -> None:
        """`bf16`: TRL's default (bf16 autocast, also on CPU); False runs fp32 like the harness on CPU.

        Give it its own copies of the models: accelerate wraps their `forward` (autocast) in place.
        """
        from datasets import Dataset
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        args = GKDConfig(
            output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "harness-perf-trl"),
            lmbda=0.0,
            beta=0.0,
            temperature=1.0,
            report_to=[],
            per_device_train_batch_size=len(batch),
            use_cpu=not torch.cuda.is_available(),
            learning_rate=1e-6,
            max_grad_norm=1.0,
            disable_tqdm=True,
            save_strategy="no",
            bf16=bf16,
        )
        msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        self.trainer: Any = GKDTrainer(
            model=student,
            teacher_model=teacher_model,
            args=args,
            train_dataset=Dataset.from_list([{"messages": msgs}]),
            processing_class=tok,
        )
        self.trainer.create_optimizer()
        self.trainer.current_gradient_accumulation_steps = 1  # what `Trainer.train` sets for each step
        self.optim_name = str(getattr(args.optim, "value", args.optim))
        self.inputs = _inputs(batch, tok.pad_token_id, next(student.parameters()).device)

    def step(self) -> None:
        """One inner-loop step as `Trainer.train` does it (no gradient accumulation)."""
        tr = self.trainer
        tr.training_step(tr.model, dict(self.inputs))
        self._update()

    def _update(self) -> None:
        tr = self.trainer
        tr.accelerator.clip_grad_norm_(tr.model.parameters(), tr.args.max_grad_norm)
        tr.optimizer.step()
        tr.model.zero_grad()

    def phases(self) -> dict[str, float]:
        """GKDTrainer.compute_loss cut into phases (its calls, in its order), then its optimizer step."""
        tr, inputs = self.trainer, self.inputs
        tr.model.train()
        laps = Laps()
        s_out = tr.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        laps.lap("student forward (LM head on all positions)")
        tr.teacher_model.eval()
        with torch.no_grad():
            t_out = tr.teacher_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        laps.lap("teacher forward")
        loss = tr.generalized_jsd_loss(
            student_logits=s_out.logits[:, :-1, :],
            teacher_logits=t_out.logits[:, :-1, :],
            labels=inputs["labels"][:, 1:],
            beta=tr.beta,
        )
        laps.lap("loss")
        loss.backward()
        laps.lap("backward")
        self._update()
        laps.lap("clip + optimizer")
        return laps.seconds

    def close(self) -> None:
        """accelerate keeps references to what it prepared: let the model copies go."""
        self.trainer.accelerator.free_memory()
        tr = self.trainer
        tr.model = tr.model_wrapped = tr.teacher_model = tr.optimizer = None
        gc.collect()


def _inputs(batch: list[Example], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    """GKD's collated batch: (prompt + target) right-padded, labels on the target tokens only."""
    seqs = [e.prompt + e.target for e in batch]
    ids = torch.full((len(seqs), max(len(s) for s in seqs)), pad)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (e, s) in enumerate(zip(batch, seqs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, len(e.prompt) : len(s)] = torch.tensor(e.target)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
