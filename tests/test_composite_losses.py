"""mix, hidden_mse / hidden_cosine and sampled_kl against values computed by hand from explicit probabilities.

One batch row: a context position (masked out, filled with NaN where it may leak) and two target tokens.
Student probabilities are chosen so that every expected number is a short formula in ln 2.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.losses import LOSSES, Extras, TeacherNeeds, TeacherTopK, compute_loss, teacher_needs
from harness.registry import RegistryError
from harness.spec import AxisValue

LN2 = math.log(2.0)
MASK = torch.tensor([[False, True, True]])
TARGETS = torch.tensor([[2, 0, 1]])  # position 0 is context; the two targets are tokens 0 and 1
# Student q at the two target positions: [1/2, 1/4, 1/4] and [1/4, 1/4, 1/2].
Q = [[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]
# Teacher p (its full distribution, k = V): [1/4, 1/2, 1/4] and equal to q at the second position.
P = [[0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]


def student() -> torch.Tensor:
    logits = [[math.nan] * 3] + [[math.log(v) for v in row] for row in Q]  # logits = log q: softmax gives q back
    return torch.tensor([logits], dtype=torch.float64, requires_grad=True)


def teacher() -> TeacherTopK:
    logp = torch.tensor([[[0.0, -1e4, -1e4]] + [[math.log(v) for v in row] for row in P]], dtype=torch.float64)
    return TeacherTopK(torch.tensor([[[0, 1, 2]] * 3]), logp, torch.full((1, 3), -math.inf, dtype=torch.float64))


def kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


# Hand values: NLL of the targets under q, forward KL(p‖q) per position.
NLL = (-math.log(0.5) - math.log(0.25)) / 2  # = 1.5 ln 2
FKL = (0.25 * math.log(0.25 / 0.5) + 0.5 * math.log(0.5 / 0.25) + 0.0) / 2  # = 0.125 ln 2


def test_hand_values_are_what_the_formulas_say():
    assert NLL == pytest.approx(1.5 * LN2) and FKL == pytest.approx(0.125 * LN2)
    assert FKL == pytest.approx((kl(P[0], Q[0]) + kl(P[1], Q[1])) / 2)


# --------------------------------------------------------------------------- mix


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 1.0])
def test_mix_is_the_weighted_sum_of_its_parts(weight):
    got = compute_loss("mix", student(), TARGETS, MASK, teacher(), a="self_target_nll", b="forward_kl", weight=weight)
    assert float(got.detach()) == pytest.approx(weight * NLL + (1 - weight) * FKL, abs=1e-12)


def test_mix_parts_carry_their_own_parameters():
    beta = 0.3

    def jsd(p, q):  # generalised JSD, normalised by β(1−β), written out
        m = [beta * x + (1 - beta) * y for x, y in zip(p, q, strict=True)]
        return (beta * kl(p, m) + (1 - beta) * kl(q, m)) / (beta * (1 - beta))

    expected_jsd = (jsd(P[0], Q[0]) + jsd(P[1], Q[1])) / 2
    b = {"name": "jsd", "beta": beta}
    got = compute_loss("mix", student(), TARGETS, MASK, teacher(), a="reverse_kl", b=b, weight=0.4)
    expected_rkl = (kl(Q[0], P[0]) + kl(Q[1], P[1])) / 2
    assert float(got.detach()) == pytest.approx(0.4 * expected_rkl + 0.6 * expected_jsd, abs=1e-12)
    # at temperature 2 on both sides of the NLL part: q ∝ q^(1/2)
    a = {"name": "self_target_nll", "temperature": 2.0}
    got = compute_loss("mix", student(), TARGETS, MASK, teacher(), a=a, b="forward_kl", weight=1.0)
    q_tau = [[math.sqrt(v) / sum(math.sqrt(x) for x in row) for v in row] for row in Q]
    assert float(got.detach()) == pytest.approx((-math.log(q_tau[0][0]) - math.log(q_tau[1][1])) / 2, abs=1e-12)


def test_mix_gradient_is_the_weighted_gradient():
    s1, s2, s3 = student(), student(), student()
    compute_loss("mix", s1, TARGETS, MASK, teacher(), weight=0.25).backward()
    compute_loss("self_target_nll", s2, TARGETS, MASK, None).backward()
    compute_loss("forward_kl", s3, TARGETS, MASK, teacher()).backward()
    assert torch.allclose(s1.grad, 0.25 * s2.grad + 0.75 * s3.grad)
    assert torch.equal(s1.grad[0, 0], torch.zeros(3, dtype=torch.float64))  # the context position: no gradient


def test_what_the_teacher_must_supply_follows_from_the_parts():
    assert teacher_needs("mix", {"a": "self_target_nll", "b": "self_target_nll"}) == TeacherNeeds()
    assert teacher_needs("mix", {"b": {"name": "jsd", "top_k": 8, "temperature": 2}}).topk == (8, 2.0)
    assert teacher_needs("mix", {"a": "sampled_kl", "b": "self_target_nll"}) == TeacherNeeds(sampled_logprobs=True)
    assert teacher_needs("hidden_cosine", {"layers": [1, -1], "token": "self_target_nll"}) == TeacherNeeds(
        hidden_layers=(1, -1)
    )
    assert teacher_needs("hidden_mse", {}) == TeacherNeeds(topk=(None, 1.0), hidden_layers=(-1,))
    assert teacher_needs("sampled_kl", {"off_policy": "forward_kl"}) == TeacherNeeds((None, 1.0), True)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"weight": 1.5}, r"weight: Input should be less than or equal to 1"),
        ({"weight": -0.1}, r"weight: Input should be greater than or equal to 0"),
        ({"a": "nll"}, r"a\.name: unknown loss 'nll' \(known: forward_kl, hidden_cosine"),
        ({"b": {"name": "jsd", "beta": 2}}, r"b\.beta: Input should be less than or equal to 1"),
        ({"b": {"name": "mix"}}, r"b: 'mix' cannot be a part of another loss"),
        ({"a": "hidden_mse"}, r"a: 'hidden_mse' cannot be a part of another loss; give the mix as hidden_mse's"),
        ({"a": {"beta": 0.5}}, r"a: give a loss name or a mapping with `name`"),
        ({"a": {"name": "forward_kl", "top_k": 8}, "b": "reverse_kl"}, r"the parts read the teacher's top-k at diff"),
        ({"c": "jsd"}, r"c: unknown parameter \(known: a, b, weight\)"),
    ],
)
def test_mix_refuses_bad_values(params, message):
    with pytest.raises(RegistryError, match=message):
        LOSSES.resolve("mix", params)


def test_nested_values_label_and_normalise():
    value = AxisValue(name="mix", a="self_target_nll", b={"name": "jsd", "beta": 0.5}, weight=0.3)
    assert value.label == "mix(a=self_target_nll,b=jsd(beta=0.5),weight=0.3)"
    effective = LOSSES.validate("mix", value.params)
    assert effective["b"] == {"name": "jsd", "beta": 0.5, "temperature": 1.0, "top_k": None}
    assert LOSSES.validate("mix", effective) == effective  # normalised values validate to themselves


# --------------------------------------------------------------------------- hidden states

NAN = [math.nan, math.nan]


def hidden(student_rows, teacher_rows) -> Extras:
    """[1, 3, L, 2] hidden states; position 0 (context) is NaN and must not leak."""
    s = torch.tensor([[[NAN] * len(student_rows[0])] + student_rows], dtype=torch.float64)
    t = torch.tensor([[[NAN] * len(teacher_rows[0])] + teacher_rows], dtype=torch.float64)
    return Extras(student_hidden=s.requires_grad_(), teacher_hidden=t)


def test_hidden_mse_by_hand():
    # one layer: (1, 2) vs (0, 0) → mean(1, 4) = 2.5; (3, 0) vs (1, 0) → mean(4, 0) = 2; token mean 2.25
    ex = hidden([[[1.0, 2.0]], [[3.0, 0.0]]], [[[0.0, 0.0]], [[1.0, 0.0]]])
    got = compute_loss("hidden_mse", student(), TARGETS, MASK, None, ex, token="self_target_nll", weight=0.5)
    assert float(got.detach()) == pytest.approx(NLL + 0.5 * 2.25, abs=1e-12)
    # two layers: the second adds (0, 0) vs (1, 1) → 1 and (2, 2) vs (0, 2) → 2; mean over layers then tokens
    ex = hidden(
        [[[1.0, 2.0], [0.0, 0.0]], [[3.0, 0.0], [2.0, 2.0]]], [[[0.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 2.0]]]
    )
    got = compute_loss("hidden_mse", student(), TARGETS, MASK, teacher(), ex, layers=[-1, 1], weight=2.0)
    assert float(got.detach()) == pytest.approx(FKL + 2.0 * ((2.5 + 1) / 2 + (2 + 2) / 2) / 2, abs=1e-12)
    got.backward()
    assert torch.isfinite(ex.student_hidden.grad).all() and not ex.student_hidden.grad[0, 0].any()


def test_hidden_cosine_by_hand():
    # orthogonal → 1 − 0; parallel → 1 − 1; opposite → 1 − (−1); (0, 1) vs (1, 1) → 1 − 1/√2
    ex = hidden(
        [[[1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]]], [[[0.0, 1.0], [-1.0, 0.0]], [[2.0, 2.0], [1.0, 1.0]]]
    )
    got = compute_loss("hidden_cosine", student(), TARGETS, MASK, None, ex, layers=[0, 2], token="self_target_nll")
    expected = ((1 + 2) / 2 + (0 + 1 - 1 / math.sqrt(2)) / 2) / 2
    assert float(got.detach()) == pytest.approx(NLL + expected, abs=1e-12)
    scaled = hidden(
        [[[5.0, 0.0], [3.0, 0.0]], [[7.0, 7.0], [0.0, 0.5]]], [[[0.0, 1.0], [-1.0, 0.0]], [[2.0, 2.0], [1.0, 1.0]]]
    )
    again = compute_loss(
        "hidden_cosine", student(), TARGETS, MASK, None, scaled, layers=[0, 2], token="self_target_nll"
    )
    assert float(again.detach()) == pytest.approx(float(got.detach()), abs=1e-12)  # norms do not matter, directions do


def test_hidden_losses_take_a_mix_as_their_token_loss_and_refuse_bad_values():
    ex = hidden([[[1.0, 2.0]], [[3.0, 0.0]]], [[[0.0, 0.0]], [[1.0, 0.0]]])
    got = compute_loss("hidden_mse", student(), TARGETS, MASK, teacher(), ex, token={"name": "mix", "weight": 0.5})
    assert float(got.detach()) == pytest.approx(0.5 * NLL + 0.5 * FKL + 2.25, abs=1e-12)
    for params, message in [
        ({"layers": []}, r"layers: .*at least 1 item"),
        ({"layers": [1, 1]}, r"layers: layers repeat: \[1, 1\]"),
        ({"layers": [1.5]}, r"layers\.0: Input should be a valid integer"),
        ({"weight": -1}, r"weight: Input should be greater than or equal to 0"),
        ({"token": "hidden_cosine"}, r"token: 'hidden_cosine' cannot be the token loss of a hidden-state loss"),
    ]:
        with pytest.raises(RegistryError, match=message):
            LOSSES.resolve("hidden_mse", params)
    with pytest.raises(ValueError, match="needs the student's and the teacher's hidden states"):
        compute_loss("hidden_mse", student(), TARGETS, MASK, teacher())
    short = Extras(student_hidden=ex.student_hidden[:, :, :1], teacher_hidden=ex.teacher_hidden[:, :2])
    with pytest.raises(ValueError, match=r"must both be \[B, T, n_layers, H\]"):
        compute_loss("hidden_mse", student(), TARGETS, MASK, teacher(), short)


# --------------------------------------------------------------------------- sampled_kl

# The student sampled the targets (tokens 0 and 1): q(y) = 1/2 and 1/4; the teacher's p(y) = 1/4 and 1/2.
R = [0.25 / 0.5, 0.5 / 0.25]  # r = p/q
HAND = {
    ("k1", "reverse"): sum(-math.log(r) for r in R) / 2,  # = 0
    ("k3", "reverse"): sum(r - 1 - math.log(r) for r in R) / 2,  # = 1/4
    ("k1", "forward"): sum(r * math.log(r) for r in R) / 2,  # = 3/4 ln 2
    ("k3", "forward"): sum(r * math.log(r) - (r - 1) for r in R) / 2,  # = 3/4 ln 2 − 1/4
}


def sampled(logp_teacher: list[float]) -> Extras:
    return Extras(sampled=True, teacher_token_logprobs=torch.tensor([[math.nan, *logp_teacher]], dtype=torch.float64))


@pytest.mark.parametrize(("estimator", "direction"), list(HAND))
def test_sampled_kl_estimators_by_hand(estimator, direction):
    assert HAND[("k3", "reverse")] == pytest.approx(0.25) and HAND[("k1", "forward")] == pytest.approx(0.75 * LN2)
    ex = sampled([math.log(0.25), math.log(0.5)])
    got = compute_loss("sampled_kl", student(), TARGETS, MASK, None, ex, estimator=estimator, direction=direction)
    assert float(got.detach()) == pytest.approx(HAND[(estimator, direction)], abs=1e-12)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_sampled_kl_gradient_is_the_named_kls_in_expectation(estimator, direction):
    """Σ_y q(y) ∇loss(y), every token y taken as the sample, equals ∇ of the exact KL at that position."""
    g = torch.Generator().manual_seed(0)
    s_logits, t_logits = torch.randn(1, 1, 5, generator=g, dtype=torch.float64), torch.randn(5, generator=g)
    p = torch.softmax(t_logits.double(), -1)
    q = torch.softmax(s_logits[0, 0], -1)
    expected_grad = torch.zeros(5, dtype=torch.float64)
    for y in range(5):
        s = s_logits.clone().requires_grad_()
        ex = Extras(sampled=True, teacher_token_logprobs=torch.log(p[y]).reshape(1, 1))
        loss = compute_loss(
            "sampled_kl",
            s,
            torch.tensor([[y]]),
            torch.tensor([[True]]),
            None,
            ex,
            estimator=estimator,
            direction=direction,
        )
        loss.backward()
        expected_grad += q[y] * s.grad[0, 0]
    s = s_logits.clone().requires_grad_()
    qs = torch.softmax(s[0, 0], -1)
    exact = (qs * (qs.log() - p.log())).sum() if direction == "reverse" else (p * (p.log() - qs.log())).sum()
    exact.backward()
    assert torch.allclose(expected_grad, s.grad[0, 0], atol=1e-10)
    # and the estimate itself is unbiased: Σ_y q(y) estimate(y) is the exact KL
    values = [
        float(
            compute_loss(
                "sampled_kl",
                s_logits,
                torch.tensor([[y]]),
                torch.tensor([[True]]),
                None,
                Extras(sampled=True, teacher_token_logprobs=torch.log(p[y]).reshape(1, 1)),
                estimator=estimator,
                direction=direction,
            )
        )
        for y in range(5)
    ]
    assert sum(float(q[y]) * v for y, v in enumerate(values)) == pytest.approx(exact.item(), abs=1e-10)


def test_sampled_kl_trains_batches_it_did_not_sample_on_its_off_policy_loss():
    for ex in (None, Extras(sampled=False)):
        assert compute_loss("sampled_kl", student(), TARGETS, MASK, None, ex).item() == pytest.approx(NLL, abs=1e-12)
    got = compute_loss("sampled_kl", student(), TARGETS, MASK, teacher(), None, off_policy="forward_kl")
    assert float(got.detach()) == pytest.approx(FKL, abs=1e-12)
    with pytest.raises(ValueError, match="needs the teacher's log-probs of the sampled tokens"):
        compute_loss("sampled_kl", student(), TARGETS, MASK, None, Extras(sampled=True))
    with pytest.raises(ValueError, match=r"teacher_token_logprobs \(1, 2\) must be \[B, T\] = \(1, 3\)"):
        compute_loss("sampled_kl", student(), TARGETS, MASK, None, sampled([0.0]))
    for params, message in [
        ({"estimator": "k2"}, r"estimator: Input should be 'k1' or 'k3'"),
        ({"direction": "both"}, r"direction: Input should be 'reverse' or 'forward'"),
        ({"off_policy": "sampled_kl"}, r"off_policy: 'sampled_kl' cannot be its own off-policy loss"),
        ({"off_policy": "hidden_mse"}, r"off_policy: 'hidden_mse' cannot be sampled_kl's off-policy loss"),
        ({"temperature": 2}, r"temperature: unknown parameter \(known: estimator, direction, off_policy\)"),
    ]:
        with pytest.raises(RegistryError, match=message):
            LOSSES.resolve("sampled_kl", params)
