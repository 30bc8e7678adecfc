"""Zero-sum learning metrics: how much of a step's per-token loss changes cancel out (arXiv 2506.05447).

With ℓ_i the loss of token i of a fixed held-out batch before an optimizer step and ℓ'_i after it,
Δℓ_i = ℓ'_i − ℓ_i and, over the n tokens (masked ones excluded):

    ΔL = (1/n)·Σ Δℓ_i                    the change of the mean loss
    M  = (1/n)·Σ |Δℓ_i|                  how much per-token losses move at all
    D  = 1 − |Σ Δℓ_i| / Σ |Δℓ_i|         destructive interference: 0 when all move the same way,
                                         1 when gains and losses cancel exactly

so that |ΔL| = (1 − D)·M. D is undefined (NaN) when no token's loss moved (Σ |Δℓ_i| = 0), and all
three are NaN for zero tokens. Sums are taken in float64.

:func:`zero_sum_stats` measures the tokens of one process; :func:`reduce_zero_sum_stats` those of a
batch split over the ranks of a process group, by adding each rank's partial sums
(:func:`loss_change_sums`) before dividing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Keys of the metrics in a metrics.jsonl record (besides the measurement's cost, ``zsl_seconds``).
RECORD_KEYS = {"D": "zsl_D", "M": "zsl_M", "delta_loss": "zsl_delta_loss"}


@dataclass(frozen=True)
class ZeroSumStats:
    D: float  # noqa: N815 - the paper's names
    M: float  # noqa: N815
    delta_loss: float
    tokens: int

    def as_record(self) -> dict[str, float]:
        """``{"zsl_D": D, "zsl_M": M, "zsl_delta_loss": ΔL}`` for a metrics record."""
        return {key: getattr(self, field) for field, key in RECORD_KEYS.items()}


def loss_change_sums(
    loss_before: torch.Tensor, loss_after: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """float64 ``[Σ Δℓ, Σ |Δℓ|, n]`` over the tokens where ``mask`` is non-zero (all if None).

    The tensors hold one loss per token in any shape (the same for all three).
    """
    if loss_before.shape != loss_after.shape or (mask is not None and mask.shape != loss_before.shape):
        shapes = [tuple(t.shape) for t in (loss_before, loss_after, mask) if t is not None]
        raise ValueError(f"per-token losses (before, after) and mask must have one shape, got {shapes}")
    delta = loss_after.detach().double() - loss_before.detach().double()
    if mask is not None:
        delta = delta[mask != 0]
    return torch.stack([delta.sum(), delta.abs().sum(), delta.new_tensor(delta.numel())])


def zero_sum_stats(
    loss_before: torch.Tensor, loss_after: torch.Tensor, mask: torch.Tensor | None = None
) -> ZeroSumStats:
    """D, M and ΔL of the tokens where ``mask`` is non-zero (all if None)."""
    return stats_from_sums(loss_change_sums(loss_before, loss_after, mask))


def stats_from_sums(sums: torch.Tensor) -> ZeroSumStats:
    """D, M and ΔL from ``[Σ Δℓ, Σ |Δℓ|, n]``."""
    total, total_abs, count = sums.tolist()
    if count == 0:
        return ZeroSumStats(math.nan, math.nan, math.nan, 0)
    D = 1.0 - abs(total) / total_abs if total_abs > 0 else math.nan  # noqa: N806
    return ZeroSumStats(D=D, M=total_abs / count, delta_loss=total / count, tokens=int(count))


def reduce_zero_sum_stats(
    loss_before: torch.Tensor,
    loss_after: torch.Tensor,
    mask: torch.Tensor | None = None,
    group: torch.distributed.ProcessGroup | None = None,
) -> ZeroSumStats:
    """The metrics of the tokens of all ranks in ``group``, each rank passing its own slice.

    ``group`` must hold the ranks with distinct tokens of the batch and one copy of each: in a
    megatron-core trainer, the last pipeline stage's data(+context)-parallel group,
    ``parallel_state.get_data_parallel_group(with_context_parallel=True)`` (tensor- and
    expert-parallel ranks hold the same per-token losses). None is the default (world) group.
    Every rank of the group gets the same result.
    """
    sums = loss_change_sums(loss_before, loss_after, mask)
    torch.distributed.all_reduce(sums, group=group)
    return stats_from_sums(sums)
