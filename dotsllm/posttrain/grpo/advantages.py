"""Group-relative advantages of GRPO as a pure function of the rewards."""

from __future__ import annotations

import typing
from typing import Literal

import torch

Scaling = Literal["group", "batch", "none"]
SCALINGS = typing.get_args(Scaling)


def group_advantages(
    rewards: torch.Tensor, scale: Scaling = "group", eps: float = 1e-6, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Advantages ``[groups, G]`` of the rewards ``[groups, G]`` (the G responses to each prompt).

    Each reward minus its group's mean, divided by the (unbiased) standard deviation of its group
    (``scale="group"``, GRPO), of the whole batch (``"batch"``), or not at all (``"none"``: Dr.GRPO,
    std off). ``eps`` guards the division; a group whose rewards are all equal gets 0 everywhere.
    ``valid`` (bool ``[groups, G]``) marks the rewards that count: the others (a reward that failed)
    take no part in the means and deviations and get advantage 0.
    """
    if scale not in SCALINGS:
        raise ValueError(f"advantage scale must be one of {SCALINGS}, not {scale!r}")
    rewards = rewards.to(torch.float64)
    if valid is not None and not bool(valid.all()):
        return _masked_advantages(rewards, scale, eps, valid.to(torch.bool))
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "none":
        return centered
    if scale == "group":
        std = _std(rewards, dim=1)
    else:
        std = _std(rewards.reshape(1, -1), dim=1)
    return centered / (std + eps)


def _std(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Unbiased std along ``dim`` (kept), 0 for a single value."""
    if values.shape[dim] < 2:
        return torch.zeros_like(values.select(dim, 0)).unsqueeze(dim)
    return values.std(dim=dim, keepdim=True)


def _masked_advantages(rewards: torch.Tensor, scale: Scaling, eps: float, valid: torch.Tensor) -> torch.Tensor:
    """:func:`group_advantages` over the ``valid`` rewards only (0 elsewhere)."""
    weight = valid.to(rewards.dtype)
    counts = weight.sum(dim=1, keepdim=True)
    centered = (rewards - (rewards * weight).sum(dim=1, keepdim=True) / counts.clamp(min=1)) * weight
    if scale == "none":
        return centered
    if scale == "group":
        squares, n = (centered**2).sum(dim=1, keepdim=True), counts
    else:  # the deviation of every valid reward of the batch from their mean
        n = counts.sum().reshape(1, 1)
        squares = (((rewards - (rewards * weight).sum() / n.clamp(min=1)) * weight) ** 2).sum().reshape(1, 1)
    std = torch.where(n > 1, (squares / (n - 1).clamp(min=1)).sqrt(), torch.zeros_like(n))
    return centered / (std + eps)
