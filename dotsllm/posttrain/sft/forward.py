"""SFT's packed rows through the model: the forward step that keeps each conversation to itself, and
the padding numbers of a step's rows."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from dotsllm.posttrain.sft.packing import block_causal_mask, thd_packed_seq_params
from dotsllm.training.step import masked_token_loss


def sft_forward_step(data_iterator, model: torch.nn.Module, thd: bool = False):
    """Next-token loss of a micro-batch of packed rows, each conversation attending only to itself.

    On megatron's local layers a block-diagonal causal mask ``[b, 1, s, s]`` does it; with Transformer
    Engine (``thd``) the micro-batch is laid out as one row ``[1, b*s]`` with THD ``PackedSeqParams``
    (``cu_seqlens`` at each conversation and padding), so no O(s²) mask is built. Positions restart
    per conversation either way.
    """
    batch = next(data_iterator)
    tokens, labels, positions, loss_mask = (batch[k] for k in ("tokens", "labels", "position_ids", "loss_mask"))
    if thd:
        flat = [t.reshape(1, -1) for t in (tokens, labels, positions, loss_mask)]
        tokens, labels, positions, loss_mask = flat
        output = model(tokens, positions, None, labels=labels, packed_seq_params=thd_packed_seq_params(batch["segment_ids"]))
    else:
        output = model(tokens, positions, block_causal_mask(batch["segment_ids"]), labels=labels)
    return output, partial(masked_token_loss, loss_mask)


def packing_stats(step_batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Real (non-padding) tokens of the global batch, padding fraction and packing efficiency."""
    from megatron.core import parallel_state

    counts = torch.zeros(2, dtype=torch.float64, device=step_batches[0]["tokens"].device)
    for batch in step_batches:
        counts += torch.stack([(batch["segment_ids"] >= 0).sum(), torch.tensor(batch["segment_ids"].numel())]).double().to(counts.device)
    torch.distributed.all_reduce(counts, group=parallel_state.get_data_parallel_group())
    real, capacity = counts.tolist()
    return {"real_tokens": int(real), "packing_efficiency": real / capacity, "padding_fraction": 1 - real / capacity}
