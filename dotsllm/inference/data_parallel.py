"""Requests split over data-parallel ranks and their results gathered back in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

from dotsllm.inference.generate import GenerationRequest, GenerationResult, generate

T = TypeVar("T")


def data_parallel_share(items: Sequence[T], rank: int, size: int) -> list[T]:
    """Rank ``rank``'s contiguous share of ``items`` (sizes differ by at most one, earlier ranks larger).

    Contiguous, so that copies of a prompt placed side by side stay on one rank and share its prefill.
    """
    base, extra = divmod(len(items), size)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (rank < extra)])


def gather_from_data_parallel(local: list[T]) -> list[T]:
    """Every data-parallel rank's ``local`` list, concatenated in rank order, on every rank."""
    from megatron.core import parallel_state

    size = parallel_state.get_data_parallel_world_size()
    if size == 1:
        return list(local)
    gathered: list[list[T] | None] = [None] * size
    torch.distributed.all_gather_object(gathered, local, group=parallel_state.get_data_parallel_group())
    return [item for part in gathered for item in part]


def generate_data_parallel(
    model: torch.nn.Module | Sequence[torch.nn.Module], requests: Sequence[GenerationRequest], **options
) -> list[GenerationResult]:
    """:func:`generate` on all of ``requests`` (the same list on every rank), split over the
    data-parallel ranks; every rank gets all results, in the order of ``requests``."""
    from megatron.core import parallel_state

    share = data_parallel_share(
        requests, parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    )
    return gather_from_data_parallel(generate(model, share, **options))
