"""The GRPO policy loss on response tokens, as pure functions of tensors.

Every tensor is in the *response layout* ``[sequences, max response length]`` (token ``t`` of response
``i`` at ``[i, t]``; ``mask`` marks real tokens): what a training forward gathers from its rows, one
response per row here and several per row with shared-prefix grouping.

Per token: the importance ratio ρ (token-level, or GSPO's sequence-level one), the clipped surrogate
``−min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A)`` (clip-higher when ε_high > ε_low), optionally bounded by
``−c·A`` for A < 0 (dual clip), plus β times the k3 estimate of KL to the reference, minus an entropy
bonus. The per-token losses are aggregated with one weight per sequence (:func:`sequence_weights`):

- ``token-mean`` (DAPO): the mean over every response token of the batch;
- ``seq-mean-token-mean`` (GRPO): the mean over sequences of each sequence's token mean;
- ``seq-mean-token-sum-norm`` (Dr.GRPO): the mean over sequences of each sequence's token sum divided
  by the generation budget (a constant, so that long and short responses are not reweighted).

The weights use totals over the whole mini-batch (every micro-batch and data-parallel rank), so a
micro-batch's weighted sum is its exact share of the mini-batch loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

# token-mean (DAPO) | seq-mean-token-mean (GRPO) | seq-mean-token-sum-norm (Dr.GRPO)
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
RatioLevel = Literal["token", "sequence"]  # GSPO's sequence level: the geometric mean of a response's token ratios
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
RATIO_LEVELS: tuple[str, ...] = get_args(RatioLevel)
KL_LOG_RATIO_LIMIT = 20.0  # verl's clamps of the k3 estimator: its log-ratio, then its value
KL_LIMIT = 10.0


@dataclass(frozen=True)
class LossSettings:
    """The objective's knobs (the ``objective`` section of a GRPO config)."""

    aggregation: Aggregation = "token-mean"
    clip_low: float = 0.2  # ε_low: the ratio is clipped below 1 − ε_low
    clip_high: float = 0.28  # ε_high: above 1 + ε_high (DAPO's clip-higher; 0.2 is PPO's symmetric clip)
    dual_clip: float | None = None  # c > 1 bounds the loss of a negative advantage by −c·A (verl: 3.0)
    ratio: RatioLevel = "token"
    kl_beta: float = 0.0  # weight of the k3 KL to the reference model (its forward runs only when > 0)
    entropy_coef: float = 0.0  # weight of the entropy bonus (entropy is measured either way)

    def __post_init__(self) -> None:
        aggregation = self.aggregation
        problems = [
            "" if aggregation in AGGREGATIONS else f"aggregation must be one of {AGGREGATIONS}, not {aggregation!r}",
            "" if self.ratio in RATIO_LEVELS else f"ratio must be one of {RATIO_LEVELS}, not {self.ratio!r}",
            "clip_low must be in [0, 1)" if not 0 <= self.clip_low < 1 else "",
            "clip_high must be >= 0" if self.clip_high < 0 else "",
            "dual_clip must be > 1" if self.dual_clip is not None and self.dual_clip <= 1 else "",
            "kl_beta must be >= 0" if self.kl_beta < 0 else "",
        ]  # fmt: skip
        if any(problems):
            raise ValueError("objective: " + "; ".join(p for p in problems if p))


@dataclass
class PolicyLoss:
    """Per-token terms of :func:`policy_loss`, ``[sequences, length]``, zero outside the mask."""

    loss: torch.Tensor  # what is aggregated: surrogate + β·KL − entropy_coef·entropy
    surrogate: torch.Tensor  # the (dual-)clipped policy-gradient term
    ratio: torch.Tensor  # ρ (detached)
    clipped_low: torch.Tensor  # 1 where ρ < 1 − ε_low with A < 0 (the clip takes the gradient away)
    clipped_high: torch.Tensor  # 1 where ρ > 1 + ε_high with A > 0
    dual_clipped: torch.Tensor  # 1 where the dual clip bounds the loss
    kl: torch.Tensor | None  # k3 estimate, when reference log-probs are given (detached)


def importance_ratio(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor, level: str
) -> torch.Tensor:
    """ρ per token: ``exp(logp − old)``, or GSPO's ``sg[s_i]·exp(logp − sg[logp])`` with
    ``s_i = exp(mean_t(logp − old))`` over the response (its value s_i, its gradient that of s_i)."""
    log_ratio = (log_probs - old_log_probs) * mask
    if level == "token":
        return torch.exp(log_ratio)
    lengths = mask.sum(-1, keepdim=True).clamp(min=1)
    sequence = torch.exp(log_ratio.sum(-1, keepdim=True) / lengths)
    return sequence.detach() * torch.exp(log_probs - log_probs.detach())


def k3_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """The k3 estimator of KL(π‖π_ref) per token: ``exp(r) − r − 1``, ``r = ref − logp`` (clamped as verl)."""
    log_ratio = (ref_log_probs - log_probs).clamp(-KL_LOG_RATIO_LIMIT, KL_LOG_RATIO_LIMIT)
    return (torch.exp(log_ratio) - log_ratio - 1).clamp(-KL_LIMIT, KL_LIMIT)


def policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    settings: LossSettings,
    ref_log_probs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> PolicyLoss:
    """Per-token loss terms (see the module doc); ``advantages`` is one per sequence, ``[sequences]``."""
    mask = mask.to(log_probs.dtype)
    adv = advantages.to(log_probs.dtype)[:, None]
    ratio = importance_ratio(log_probs, old_log_probs, mask, settings.ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - settings.clip_low, 1 + settings.clip_high)
    surrogate = torch.maximum(unclipped, clipped)
    dual_clipped = torch.zeros_like(mask)
    if settings.dual_clip is not None:
        bound = -adv * settings.dual_clip
        dual_clipped = ((adv < 0) & (surrogate > bound)).to(mask.dtype)
        surrogate = torch.where(adv < 0, torch.minimum(surrogate, bound), surrogate)
    loss = surrogate
    kl = None
    if ref_log_probs is not None:
        kl = k3_kl(log_probs, ref_log_probs)
        loss = loss + settings.kl_beta * kl
        kl = kl.detach() * mask
    if entropy is not None and settings.entropy_coef:
        loss = loss - settings.entropy_coef * entropy
    ratio_value = ratio.detach()
    return PolicyLoss(
        loss=loss * mask,
        surrogate=surrogate.detach() * mask,
        ratio=ratio_value * mask,
        clipped_low=((ratio_value < 1 - settings.clip_low) & (adv < 0)).to(mask.dtype) * mask,
        clipped_high=((ratio_value > 1 + settings.clip_high) & (adv > 0)).to(mask.dtype) * mask,
        dual_clipped=dual_clipped * mask,
        kl=kl,
    )


def sequence_weights(
    mask: torch.Tensor, aggregation: str, total_tokens: int, total_sequences: int, max_response_tokens: int
) -> torch.Tensor:
    """The weight of each token of each sequence, ``[sequences]``, for ``aggregation`` over a mini-batch
    of ``total_tokens`` response tokens in ``total_sequences`` non-empty sequences (``mask``'s are part of
    it). A sequence without tokens (a padding row) weighs 0."""
    lengths = mask.sum(-1).to(torch.float64)
    if aggregation == "token-mean":
        weights = torch.full_like(lengths, 1.0 / max(total_tokens, 1))
    elif aggregation == "seq-mean-token-mean":
        weights = 1.0 / (lengths.clamp(min=1) * max(total_sequences, 1))
    elif aggregation == "seq-mean-token-sum-norm":
        weights = torch.full_like(lengths, 1.0 / (max_response_tokens * max(total_sequences, 1)))
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}; one of {AGGREGATIONS}")
    return torch.where(lengths > 0, weights, 0.0)


def aggregate(per_token: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_i weights_i · Σ_t per_token[i, t]`` in float64 (``per_token`` already zero outside the mask)."""
    return (per_token.double().sum(-1) * weights.double()).sum()
