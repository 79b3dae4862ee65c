"""Objective parity: the harness's divergences against TRL 1.16's own loss functions, to 1e-5.

What is matched, on identical random logits (float32, the dtype both compute in):

- GKD (`GKDTrainer.generalized_jsd_loss`, reduction "batchmean" with labels = -100 off the mask): a mean over
  masked tokens, temperature dividing both sides' logits, no tau**2 factor -- the harness's conventions exactly.
  beta = 0 is forward KL(t||s), beta = 1 reverse KL(s||t); in between TRL's mixture is M = beta*p_t + (1-beta)*p_s
  with JSD = beta*KL(t||M) + (1-beta)*KL(s||M), the harness's numerator. The one genuine difference: the harness
  divides by beta*(1-beta) (so the loss is continuous in beta, equal to the KLs at the ends), TRL does not, so
  harness_jsd * beta*(1-beta) == trl_jsd.
- DistillationTrainer's chunked JSD (`_chunked_divergence_loss`, the torch tile path used on CPU): the same
  divergence and token mean from hidden states and an lm_head; with an identity lm_head the hidden states are the
  logits, so it is compared to the harness on full-vocabulary logits (k = V, tail = -inf).
- SDFT (`trl.experimental.sdft` topk_logits with `distillation_add_tail=True`): TRL's alpha is the harness's beta
  (0 forward, 1 reverse, same mixture, no 1/(beta(1-beta))). Two genuine differences:
  (a) support: SDFT keeps the *student's* top-k tokens (and gathers the teacher there); the harness keeps the
      *teacher's* top-k (what its cache stores). They coincide when both have the same top-k set, which the test
      constructs; on the teacher's support, TRL's own `add_tail_bucket` + `compute_divergence` applied to the
      harness's stored representation (teacher top-k log-probs + the student gathered there) is matched exactly.
  (b) reduction: SDFT averages each sequence over its masked tokens, then averages sequences; the harness (like GKD
      and DistillationTrainer) averages over all masked tokens of the batch. They agree when every row has the same
      number of masked tokens (tested); with ragged rows they differ, and the test shows SDFT's value is the
      per-row mean of the harness's per-token values.
  SDFT has no temperature inside the loss (it divides both logits by its generation temperature before), so it is
  compared at tau = 1 on logits already divided by tau.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from harness.losses import forward_kl, jsd, reverse_kl, topk_with_tail

# Imported, not skipped when missing: `nox -s tests` installs TRL (the `perf` extra), so parity is always checked.
trl_gkd = importlib.import_module("trl.experimental.gkd")
sdft_loss = importlib.import_module("trl.experimental.sdft.loss_utils")
distill = importlib.import_module("trl.trainer.distillation_trainer")

B, T, V = 3, 7, 50
TOL = dict(rtol=1e-5, atol=1e-5)


def _logits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, V, generator=g) * 2.0
    t = torch.randn(B, T, V, generator=g) * 2.0
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = True
    return s, t, mask


def _harness(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, beta: float, tau: float, k: int | None):
    """The harness's value in TRL's scale (jsd times beta*(1-beta)), from the cache's top-k + tail."""
    teacher = topk_with_tail(t, k, temperature=tau)
    y = torch.zeros(B, T, dtype=torch.long)
    if beta == 0.0:
        return forward_kl(s, y, mask, teacher, temperature=tau)
    if beta == 1.0:
        return reverse_kl(s, y, mask, teacher, temperature=tau)
    return jsd(s, y, mask, teacher, beta=beta, temperature=tau) * beta * (1.0 - beta)


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_full_vocab_matches_gkd_generalized_jsd(beta: float, tau: float) -> None:
    s, t, mask = _logits(0)
    labels = torch.where(mask, torch.zeros(B, T, dtype=torch.long), torch.full((B, T), -100))
    ref = trl_gkd.GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=tau)
    torch.testing.assert_close(_harness(s, t, mask, beta, tau, None), ref, **TOL)


@pytest.mark.parametrize("tau", [1.0, 1.5])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_full_vocab_matches_distillation_trainer_chunked_jsd(beta: float, tau: float) -> None:
    s, t, mask = _logits(1)
    eye = torch.eye(V)  # lm_head = identity: the hidden states are the logits
    loss, _entropy, n = distill._chunked_divergence_loss(s, t, eye, eye, mask.long(), beta, temperature=tau)
    assert int(n) == int(mask.sum())
    torch.testing.assert_close(_harness(s, t, mask, beta, tau, None), loss, **TOL)


def _same_topk_pair(seed: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits whose top-k token sets coincide (a +8 margin on k shared tokens)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(B, T, V, generator=g)
    s = torch.randn(B, T, V, generator=g)
    top = torch.rand(B, T, V, generator=g).argsort(-1)[..., :k]
    boost = torch.zeros(B, T, V).scatter(-1, top, 8.0)
    return s + boost, t + boost


@pytest.mark.parametrize("k", [4, 16])
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_topk_tail_matches_sdft_when_supports_coincide(beta: float, k: int) -> None:
    s, t = _same_topk_pair(2, k)
    mask = torch.ones(B, T, dtype=torch.bool)  # equal row lengths: SDFT's per-row mean == the token mean
    per_token = sdft_loss.compute_topk_self_distillation_loss(
        s, t, distillation_topk=k, distillation_alpha=beta, distillation_add_tail=True
    )
    m = mask.float()
    ref = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()  # SDFTTrainer's reduction
    torch.testing.assert_close(_harness(s, t, mask, beta, 1.0, k), ref, **TOL)


@pytest.mark.parametrize("k", [1, 8, 32])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_topk_tail_matches_trl_buckets_on_the_stored_representation(beta: float, k: int) -> None:
    """TRL's tail bucket and divergence, fed what the harness's cache stores (the teacher's top-k)."""
    s, t, mask = _logits(3)
    teacher = topk_with_tail(t, k)
    s_lp = torch.log_softmax(s, dim=-1).gather(-1, teacher.indices)
    per_token = sdft_loss.compute_divergence(
        sdft_loss.add_tail_bucket(s_lp), sdft_loss.add_tail_bucket(teacher.logprobs), beta
    )
    ref = per_token[mask].mean()
    torch.testing.assert_close(_harness(s, t, mask, beta, 1.0, k), ref, **TOL)
    # the stored tail is TRL's tail bucket (log of 1 - the kept mass), computed without the cancellation
    torch.testing.assert_close(teacher.tail, sdft_loss.add_tail_bucket(teacher.logprobs)[..., -1], **TOL)


def test_sdft_reduction_differs_on_ragged_rows() -> None:
    """Documented difference: SDFT averages rows then the batch; the harness averages all masked tokens."""
    k, beta = 16, 0.0
    s, t = _same_topk_pair(4, k)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 2:] = False  # row 0 has 2 tokens, the others 7
    per_token = sdft_loss.compute_topk_self_distillation_loss(
        s, t, distillation_topk=k, distillation_alpha=beta, distillation_add_tail=True
    )
    m = mask.float()
    sdft = ((per_token * m).sum(-1) / m.sum(-1)).mean()
    rows = torch.stack([_harness(s[i : i + 1], t[i : i + 1], mask[i : i + 1], beta, 1.0, k) for i in range(B)])
    torch.testing.assert_close(rows.mean(), sdft, **TOL)  # SDFT = mean of per-row harness values
    token_mean = per_token[mask].mean()
    torch.testing.assert_close(_harness(s, t, mask, beta, 1.0, k), token_mean, **TOL)
    assert not torch.isclose(sdft, token_mean, rtol=1e-3)
