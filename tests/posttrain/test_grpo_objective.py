"""GRPO's objective as pure functions: the loss in every mode against a hand-computed reference (value
and gradient), split over micro-batches as the trainer splits it, and the advantages."""

import math
import statistics

import pytest
import torch

from dotsllm.posttrain.grpo.advantages import group_advantages
from dotsllm.posttrain.grpo.losses import LossSettings, aggregate, policy_loss, sequence_weights

LENGTHS = [5, 2, 0, 6, 3, 1]  # response tokens per sequence; the empty one is a padding row
MAX_LEN = 6
BUDGET = 8  # Dr.GRPO's normalizer: the generation budget
ADVANTAGES = [1.3, -0.7, 0.0, -1.9, 0.6, 2.2]
PARTS = [(0, 2), (2, 5), (5, 6)]  # micro-batches (the last a "rank" of its own)


@pytest.fixture(scope="module")
def tensors():
    generator = torch.Generator().manual_seed(3)
    n = len(LENGTHS)
    mask = torch.arange(MAX_LEN)[None, :] < torch.tensor(LENGTHS)[:, None]
    log_probs = -torch.rand(n, MAX_LEN, generator=generator, dtype=torch.float64) * 3
    # old log-probs 0.6 apart at most: ratios from 0.55 to 1.8, on both sides of every clip
    old = log_probs + (torch.rand(n, MAX_LEN, generator=generator, dtype=torch.float64) - 0.5) * 1.2
    ref = log_probs + (torch.rand(n, MAX_LEN, generator=generator, dtype=torch.float64) - 0.5) * 0.8
    entropy = torch.rand(n, MAX_LEN, generator=generator, dtype=torch.float64) * 2
    return log_probs, old, ref, entropy, torch.tensor(ADVANTAGES, dtype=torch.float64), mask


def reference_loss(log_probs, old, ref, entropy, advantages, s: LossSettings, aggregation: str):
    """The objective written out sequence by sequence, token by token (GSPO at the sequence level)."""
    per_sequence = []
    for i, n in enumerate(LENGTHS):
        if n == 0:
            continue
        a = advantages[i]
        if s.ratio == "sequence":
            seq_ratio = torch.exp(sum(log_probs[i, t] - old[i, t] for t in range(n)) / n)
        token_losses = []
        for t in range(n):
            rho = torch.exp(log_probs[i, t] - old[i, t]) if s.ratio == "token" else seq_ratio
            clipped = torch.clamp(rho, 1 - s.clip_low, 1 + s.clip_high)
            loss = torch.maximum(-a * rho, -a * clipped)
            if s.dual_clip is not None and a < 0:
                loss = torch.minimum(loss, -a * s.dual_clip)
            if s.kl_beta:
                r = ref[i, t] - log_probs[i, t]
                loss = loss + s.kl_beta * (torch.exp(r) - r - 1)
            loss = loss - s.entropy_coef * entropy[i, t]
            token_losses.append(loss)
        per_sequence.append((n, sum(token_losses)))
    sequences = len(per_sequence)
    if aggregation == "token-mean":
        return sum(total for _, total in per_sequence) / sum(n for n, _ in per_sequence)
    if aggregation == "seq-mean-token-mean":
        return sum(total / n for n, total in per_sequence) / sequences
    return sum(total / BUDGET for _, total in per_sequence) / sequences


def split_loss(log_probs, old, ref, entropy, advantages, mask, s: LossSettings):
    """What the trainer computes: weights from the mini-batch's totals, each part's weighted sum, added."""
    weights = sequence_weights(mask, s.aggregation, int(mask.sum()), int((mask.sum(-1) > 0).sum()), BUDGET)
    total = 0
    for start, end in PARTS:
        part = slice(start, end)
        terms = policy_loss(
            log_probs[part], old[part], advantages[part], mask[part], s,
            ref_log_probs=ref[part] if s.kl_beta else None, entropy=entropy[part],
        )  # fmt: skip
        total = total + aggregate(terms.loss, weights[part])
    return total


MODES = [
    LossSettings(aggregation="token-mean"),  # DAPO: clip-higher 0.2 / 0.28
    LossSettings(aggregation="seq-mean-token-mean", clip_high=0.2),  # GRPO, symmetric clip
    LossSettings(aggregation="seq-mean-token-sum-norm", clip_high=0.2),  # Dr.GRPO
    LossSettings(aggregation="token-mean", clip_low=0.1, clip_high=0.3, dual_clip=1.2),
    LossSettings(aggregation="seq-mean-token-mean", ratio="sequence", clip_low=0.05, clip_high=0.08),  # GSPO
    LossSettings(aggregation="token-mean", ratio="sequence", clip_low=0.05, clip_high=0.08, dual_clip=1.05),
    LossSettings(aggregation="seq-mean-token-sum-norm", kl_beta=0.04, entropy_coef=0.01),
    LossSettings(aggregation="token-mean", kl_beta=0.1, dual_clip=1.3, clip_high=0.28),
]


@pytest.mark.parametrize("settings", MODES, ids=lambda s: f"{s.aggregation}-{s.ratio}-dual{s.dual_clip}-kl{s.kl_beta}")
def test_loss_and_gradient_equal_the_hand_computed_reference(tensors, settings):
    log_probs, old, ref, entropy, advantages, mask = tensors
    mine = log_probs.clone().requires_grad_()
    theirs = log_probs.clone().requires_grad_()
    loss = split_loss(mine, old, ref, entropy, advantages, mask, settings)
    expected = reference_loss(theirs, old, ref, entropy, advantages, settings, settings.aggregation)
    loss.backward()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-14)
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-13)
    assert mine.grad[~mask].abs().max() == 0 and mine.grad[mask].abs().max() > 0


def test_modes_differ_and_clipping_is_counted(tensors):
    """The fixture reaches every clip: the modes give different losses and the fractions are exact."""
    log_probs, old, ref, entropy, advantages, mask = tensors
    losses = {s: reference_loss(log_probs, old, ref, entropy, advantages, s, s.aggregation).item() for s in MODES}
    assert len({round(v, 12) for v in losses.values()}) == len(MODES)
    s = LossSettings(clip_low=0.1, clip_high=0.3, dual_clip=1.2)
    terms = policy_loss(log_probs, old, advantages, mask, s)
    ratio = torch.exp(log_probs - old)
    a = advantages[:, None].expand_as(ratio)
    assert terms.clipped_low.sum() == ((ratio < 0.9) & (a < 0) & mask).sum() > 0
    assert terms.clipped_high.sum() == ((ratio > 1.3) & (a > 0) & mask).sum() > 0
    assert terms.dual_clipped.sum() == ((ratio > 1.2) & (a < 0) & mask).sum() > 0


def test_k3_estimator_and_its_clamps():
    log_probs = torch.tensor([[-1.0, -2.0, -30.0, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, -1.5, -1.0, -40.0]], dtype=torch.float64)
    s = LossSettings(kl_beta=1.0)
    terms = policy_loss(log_probs, log_probs.clone(), torch.zeros(1), torch.ones(1, 4, dtype=torch.bool), s, ref)
    r = 0.5
    # r = 29 and r = −39 are clamped to ±20, and e^20 − 21 and e^−20 + 19 to the KL limit 10
    expected = [0.0, math.exp(r) - r - 1, 10.0, 10.0]
    torch.testing.assert_close(terms.kl, torch.tensor([expected], dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("ratio", ["token", "sequence"])
def test_first_update_has_ratio_one_and_nothing_clipped(tensors, ratio):
    """old = current log-probs (the first update after the log-prob pass): ρ = 1 exactly; the loss is
    −A per token and the gradient that of the plain policy gradient."""
    log_probs, _, _, _, advantages, mask = tensors
    current = log_probs.clone().requires_grad_()
    s = LossSettings(ratio=ratio, dual_clip=2.0)
    terms = policy_loss(current, log_probs.clone(), advantages, mask, s)
    assert torch.equal(terms.ratio[mask], torch.ones(int(mask.sum()), dtype=torch.float64))
    assert terms.clipped_low.sum() == terms.clipped_high.sum() == terms.dual_clipped.sum() == 0
    torch.testing.assert_close(terms.loss, (-advantages[:, None] * mask).expand_as(terms.loss), rtol=0, atol=0)
    aggregate(terms.loss, torch.ones(len(LENGTHS), dtype=torch.float64)).backward()
    pg = (-advantages[:, None] * mask).expand_as(current)  # d(−A·ρ)/dlogp at ρ = 1, for both ratio levels
    torch.testing.assert_close(current.grad, pg, rtol=1e-12, atol=0)


def test_sequence_weights_of_each_aggregation():
    mask = torch.arange(4)[None, :] < torch.tensor([4, 1, 0])[:, None]
    torch.testing.assert_close(sequence_weights(mask, "token-mean", 10, 4, 8), torch.tensor([0.1, 0.1, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        sequence_weights(mask, "seq-mean-token-mean", 10, 4, 8), torch.tensor([1 / 16, 1 / 4, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        sequence_weights(mask, "seq-mean-token-sum-norm", 10, 4, 8), torch.tensor([1 / 32, 1 / 32, 0.0], dtype=torch.float64)
    )


REWARDS = [[1.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 2.0, 0.0, 1.0]]


def test_zero_variance_group_gets_zero_in_every_scaling():
    for scale in ("group", "batch", "none"):
        advantages = group_advantages(torch.tensor(REWARDS), scale)
        assert torch.isfinite(advantages).all()
        assert torch.equal(advantages[1], torch.zeros(4, dtype=torch.float64)), scale
    alone = group_advantages(torch.tensor([[0.5, 0.5, 0.5]]), "batch")  # the batch std is 0 too
    assert torch.equal(alone, torch.zeros(1, 3, dtype=torch.float64))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_the_reference(scale):
    eps = 1e-6
    flat = [r for group in REWARDS for r in group]
    expected = []
    for group in REWARDS:
        mean = statistics.fmean(group)
        std = {"group": statistics.stdev(group), "batch": statistics.stdev(flat), "none": None}[scale]
        expected.append([(r - mean) / (std + eps) if std is not None else r - mean for r in group])
    got = group_advantages(torch.tensor(REWARDS), scale, eps)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-15)
