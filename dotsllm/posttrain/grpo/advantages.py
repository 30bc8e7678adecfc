"""Group-relative advantages of GRPO as a pure function of the rewards."""

from __future__ import annotations

import typing
from typing import Literal

import torch

Scaling = Literal["group", "batch", "none"]
SCALINGS = typing.get_args(Scaling)


def group_advantages(rewards: torch.Tensor, scale: Scaling = "group", eps: float = 1e-6) -> torch.Tensor:
    """Advantages ``[groups, G]`` of the rewards ``[groups, G]`` (the G responses to each prompt).

    Each reward minus its group's mean, divided by the (unbiased) standard deviation of its group
    (``scale="group"``, GRPO), of the whole batch (``"batch"``), or not at all (``"none"``: Dr.GRPO,
    std off). ``eps`` guards the division; a group whose rewards are all equal gets 0 everywhere.
    """
    if scale not in SCALINGS:
        raise ValueError(f"advantage scale must be one of {SCALINGS}, not {scale!r}")
    rewards = rewards.to(torch.float64)
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
