"""Training rows of a rollout batch, and their split into data-parallel shares and micro-batches.

A row is one sample, ``prompt + response`` right-padded to ``seq_length`` (causal attention, so the
padding after a sample changes nothing before it). Per-response tensors are in the response layout
``[rows, max_new_tokens]`` of :mod:`dotsllm.posttrain.grpo.losses`; ``response_start`` is the position
whose next token is the first response token (``len(prompt) − 1``).

Every data-parallel rank runs the same number of micro-batches of the same shape (pipeline and
expert-parallel communication need it): a share that falls short is filled with padding rows, which
have no response tokens and weigh nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dotsllm.model.routing_replay import ROUTING_DTYPE
from dotsllm.posttrain.grpo.rollout import Sample


def training_rows(samples: Sequence[Sample], seq_length: int, max_new_tokens: int) -> dict[str, torch.Tensor]:
    """The rows of ``samples``: ``tokens``, ``position_ids`` ``[n, seq_length]``, ``response_start``
    ``[n]``, ``response_tokens``, ``response_mask``, ``behaviour_log_probs`` ``[n, max_new_tokens]``, and
    ``routing`` ``[n, seq_length, layers, k]`` when every sample has one (positions without a recorded
    routing, the last token and the padding, take experts 0..k-1: no loss position depends on them)."""
    n = len(samples)
    rows = {
        "tokens": torch.zeros(n, seq_length, dtype=torch.long),
        "position_ids": torch.arange(seq_length).expand(n, seq_length).clone(),
        "response_start": torch.zeros(n, dtype=torch.long),
        "response_tokens": torch.zeros(n, max_new_tokens, dtype=torch.long),
        "response_mask": torch.zeros(n, max_new_tokens, dtype=torch.bool),
        "behaviour_log_probs": torch.zeros(n, max_new_tokens),
    }
    for i, sample in enumerate(samples):
        prompt, response = sample.prompt.ids, sample.response
        if len(prompt) + len(response) > seq_length or len(response) > max_new_tokens:
            raise ValueError(f"sample {i}: {len(prompt)} + {len(response)} tokens do not fit a row of {seq_length}")
        rows["tokens"][i, : len(prompt) + len(response)] = torch.tensor([*prompt, *response])
        rows["response_start"][i] = len(prompt) - 1
        rows["response_tokens"][i, : len(response)] = torch.tensor(response, dtype=torch.long)
        rows["response_mask"][i, : len(response)] = True
        rows["behaviour_log_probs"][i, : len(response)] = torch.tensor(sample.log_probs)
    if n and all(s.routing is not None for s in samples):
        layers, topk = samples[0].routing.shape[1:]
        routing = torch.arange(topk, dtype=ROUTING_DTYPE).expand(n, seq_length, layers, topk).clone()
        for i, sample in enumerate(samples):
            routing[i, : len(sample.routing)] = sample.routing
        rows["routing"] = routing
    return rows


def rank_share(num_rows: int, dp_rank: int, dp_size: int, micro_batch_size: int) -> list[int | None]:
    """Row indices of this data-parallel rank's share of ``num_rows`` (contiguous), None for padding
    rows; every rank gets the same whole number of micro-batches."""
    per_rank = math.ceil(math.ceil(num_rows / dp_size) / micro_batch_size) * micro_batch_size
    start = dp_rank * per_rank
    return [i if i < num_rows else None for i in range(start, start + per_rank)]


def select_rows(rows: dict[str, torch.Tensor], indices: Sequence[int | None]) -> dict[str, torch.Tensor]:
    """``rows`` at ``indices``; a None index gives a padding row (zeros, no response)."""
    real = torch.tensor([i if i is not None else 0 for i in indices], dtype=torch.long)
    is_padding = torch.tensor([i is None for i in indices])
    selected = {}
    for name, tensor in rows.items():
        picked = tensor[real].clone()
        if is_padding.any() and name not in ("position_ids", "routing"):
            picked[is_padding] = 0
        selected[name] = picked
    return selected


def micro_batches(rows: dict[str, torch.Tensor], micro_batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive ``micro_batch_size`` rows (the number of rows is a multiple of it)."""
    count = len(next(iter(rows.values())))
    starts = range(0, count, micro_batch_size)
    return [{name: t[start : start + micro_batch_size] for name, t in rows.items()} for start in starts]
