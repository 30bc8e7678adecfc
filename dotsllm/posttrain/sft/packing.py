"""Packed rows of conversations: the first-fit-decreasing packer, rows as tensors, and the attention
each row needs (a block-diagonal causal mask on megatron's local layers, THD ``PackedSeqParams`` with
Transformer Engine). Pure functions: tensors in, tensors out.

A conversation of ``n`` tokens takes ``n - 1`` slots of a row: inputs ``ids[:-1]``, labels ``ids[1:]``,
loss mask ``targets[1:]``, positions ``0 .. n-2``. The rest of a row is padding (token 0, no loss), a
segment of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dotsllm.chat_template import EncodedConversation


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item indices, each bin's lengths summing to at most ``capacity``: items by decreasing
    length (ties by index), each into the first open bin it fits.

    Hand-written (no maintained library packs this way): a max-tree over the bins' free space finds
    the first bin that fits in O(log bins), so a million items pack in seconds.
    """
    if any(n > capacity or n <= 0 for n in lengths):
        raise ValueError(f"every length must be in 1..{capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    free = [0] * (2 * size)  # free[size + b]: bin b's free space; inner nodes: max of children
    bins: list[list[int]] = []
    for item in order:
        need = lengths[item]
        if free[1] >= need:
            node = 1
            while node < size:
                node = 2 * node if free[2 * node] >= need else 2 * node + 1
            b = node - size
        else:
            b = len(bins)
            bins.append([])
            node = size + b
            free[node] = capacity
        bins[b].append(item)
        free[node] -= need
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


def build_row(conversations: Sequence[EncodedConversation], seq_length: int) -> dict[str, torch.Tensor]:
    """One row of ``seq_length`` slots holding ``conversations`` back to back, then padding.

    ``segment_ids`` number the conversations 0, 1, ... and the padding -1.
    """
    tokens = torch.zeros(seq_length, dtype=torch.long)
    labels = torch.zeros(seq_length, dtype=torch.long)
    loss_mask = torch.zeros(seq_length, dtype=torch.float32)
    position_ids = torch.zeros(seq_length, dtype=torch.long)
    segment_ids = torch.full((seq_length,), -1, dtype=torch.long)
    start = 0
    for index, conversation in enumerate(conversations):
        n = len(conversation) - 1
        if start + n > seq_length:
            raise ValueError(f"conversations of {start + n} slots do not fit a row of {seq_length}")
        ids = torch.tensor(conversation.ids, dtype=torch.long)
        tokens[start : start + n] = ids[:-1]
        labels[start : start + n] = ids[1:]
        loss_mask[start : start + n] = torch.tensor(conversation.targets[1:], dtype=torch.float32)
        position_ids[start : start + n] = torch.arange(n)
        segment_ids[start : start + n] = index
        start += n
    position_ids[start:] = torch.arange(seq_length - start)
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids,
            "segment_ids": segment_ids}  # fmt: skip


def collate(rows: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """``[b, 1, s, s]`` boolean, True = masked out (megatron's convention): each token attends to the
    earlier tokens of its own segment only."""
    s = segment_ids.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return ~(same & causal)[:, None]


def cu_seqlens(segment_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative segment boundaries (int32, starting at 0) of the rows of ``segment_ids`` laid end to end,
    as THD attention takes them: a new segment wherever the id changes or a row starts."""
    b, s = segment_ids.shape
    flat = segment_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[torch.arange(b, device=flat.device) * s] = True
    bounds = torch.nonzero(starts).reshape(-1)
    return torch.cat([bounds, bounds.new_tensor([b * s])]).to(torch.int32)


def thd_packed_seq_params(segment_ids: torch.Tensor):
    """megatron's ``PackedSeqParams`` (THD) for the micro-batch flattened into one row ``[1, b*s]``."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = cu_seqlens(segment_ids)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest, max_seqlen_kv=longest)
