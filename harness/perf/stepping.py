"""The harness's training arms: the real `train` loop, advanced one optimizer step at a time."""

from __future__ import annotations

import threading
import time

import torch

from harness import teacher
from harness.batching import make_batch, target_logits
from harness.losses import compute_loss
from harness.perf.timing import Laps
from harness.perf.workload import settings
from harness.train import Example, train

KL_LOSSES = ("forward_kl", "reverse_kl", "jsd")
LOSS_PARAMS: dict[str, dict[str, float]] = {"jsd": {"beta": 0.5}}


class _Enough(Exception):
    """Raised in `on_step` to end a `train` call after the steps the benchmark wanted."""


class SteppedTrain:
    """The real `train` loop in a thread of its own, advanced one optimizer step per `step()` call.

    One `train` call per arm for the whole benchmark (its optimizer keeps its state, as in a trial of
    many steps), yet arms interleave step by step: the loop waits in its `on_step` callback until the
    next `step()`. Only one arm runs at a time. Batches of `batch_size` examples (default: all).
    """

    def __init__(
        self,
        student: torch.nn.Module,
        examples: list[Example],
        loss: str,
        pad_id: int,
        total: int,
        batch_size: int | None = None,
    ) -> None:
        self.total, self.done_steps = total, 0
        self._go, self._done = threading.Semaphore(0), threading.Semaphore(0)
        self._times: list[float] = []
        self._error: BaseException | None = None
        self._t0 = 0.0
        bs = batch_size or len(examples)
        loop = settings(1e-6, -(-total // -(-len(examples) // bs)), bs)

        def on_step(step: int, _m: dict[str, float]) -> None:
            self._times.append(time.perf_counter() - self._t0)
            self._done.release()
            if step >= total:
                raise _Enough
            self._go.acquire()
            self._t0 = time.perf_counter()

        def body() -> None:
            self._go.acquire()
            self._t0 = time.perf_counter()
            try:
                train(student, examples, loss, LOSS_PARAMS.get(loss, {}), loop, pad_id=pad_id, on_step=on_step)
            except _Enough:
                pass
            except BaseException as e:  # handed to the caller of step()
                self._error = e
                self._done.release()

        threading.Thread(target=body, daemon=True, name=f"train {loss}").start()

    def step(self) -> float:
        """Seconds of the next optimizer step (one full loop iteration)."""
        if self.done_steps >= self.total:
            raise RuntimeError("no steps left")
        self._go.release()
        self._done.acquire()
        if self._error is not None:
            raise self._error
        self.done_steps += 1
        return self._times[-1]


def phases(
    student: torch.nn.Module, opt: torch.optim.Optimizer, batch: list[Example], loss: str, pad: int
) -> dict[str, float]:
    """One step of `train` cut into phases (the loop's calls, in its order): seconds per phase."""
    device = next(student.parameters()).device
    laps = Laps()
    b = make_batch([e.prompt for e in batch], [e.target for e in batch], pad)
    dist = None
    if loss != "self_target_nll":
        d = teacher.stack([e.teacher for e in batch if e.teacher is not None], b.target_ids.shape[1])
        dist = type(d)(*(x.to(device) for x in (d.indices, d.logprobs, d.tail)))
    b = b.to(device)
    laps.lap("batch")
    logits = target_logits(student, b)
    laps.lap("student forward (LM head on targets)")
    value = compute_loss(loss, logits.float(), b.target_ids, b.mask, dist, None, **LOSS_PARAMS.get(loss, {}))
    laps.lap("loss")
    value.backward()
    laps.lap("backward")
    torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    laps.lap("clip + optimizer")
    return laps.seconds
