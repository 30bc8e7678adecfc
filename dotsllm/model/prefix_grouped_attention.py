"""Core attention of prefix-grouped rows ``[P; R1; …; RG]`` without an ``s × s`` mask (Prefix Grouper,
arXiv 2506.05433, its two calls).

Per row: (1) the prompt's causal self-attention; (2) the G responses batched, each one's queries over
the keys and values ``[K_P; K_Ri]`` (K_P repeated per response, the responses padded to the longest),
causal aligned bottom-right (query t of a response sees the prompt and the response's tokens up to t).
Its mask is ``[Lr, Lp + Lr]``: the cost is ``O(Lp² + G·Lr·(Lp + Lr))``, never ``O(s²)``.

The rows' layout reaches the module as the model's ``attention_mask`` argument (a
:class:`PrefixGroupLayout`), which megatron forwards untouched from ``GPTModel.forward`` to core
attention. Not megatron's ``packed_seq_params``: megatron reads it on the way (THD reshapes, RoPE by
``cu_seqlens``), and no THD range is a response's non-contiguous ``[K_P; K_Ri]``. Without a layout (a
plain causal forward, the rollouts' KV-cache decoding, an explicit mask) the module is megatron's own
core attention, unchanged: it subclasses it (the state dict is the same too).

Written by hand: neither megatron nor Transformer Engine has shared-prefix attention; the kernels
are ``torch.nn.functional.scaled_dot_product_attention``'s (flash / memory-efficient on a GPU).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention

PROMPT_SEGMENT, PADDING_SEGMENT = 0, -1


@dataclass(frozen=True)
class RowLayout:
    """One row: its prompt length, its length without padding and, for its responses (``[G, Lr]``, Lr
    the longest), the row position of each response token (padding slots repeat the row's last position)
    and which are real."""

    prompt_length: int
    used_length: int
    response_positions: torch.Tensor | None
    response_present: torch.Tensor | None


@dataclass(frozen=True)
class PrefixGroupLayout:
    """Where the prompt and the responses of each row of a micro-batch lie."""

    rows: tuple[RowLayout, ...]
    seq_length: int

    @classmethod
    def from_segment_ids(cls, segment_ids: torch.Tensor) -> PrefixGroupLayout:
        """The layout of rows with ``segment_ids`` ``[b, s]`` (0 the prompt, j > 0 response j, -1 padding),
        each ``[P; R1; …; RG]`` then padding (:func:`dotsllm.posttrain.grpo.batch.training_rows`)."""
        rows = []
        for r, ids in enumerate(segment_ids.tolist()):  # one host copy per micro-batch
            used = len(ids) - ids.count(PADDING_SEGMENT)
            lp = ids.count(PROMPT_SEGMENT)
            lengths = [ids.count(j) for j in range(1, max(ids[:used], default=0) + 1)]
            expected = [PROMPT_SEGMENT] * lp + [j + 1 for j, n in enumerate(lengths) for _ in range(n)]
            if ids[:used] != expected or lp == 0 or 0 in lengths:
                raise ValueError(f"row {r}: segment ids {ids} are not [P; R1; …; RG] then padding (-1)")
            if not lengths:
                rows.append(RowLayout(lp, used, None, None))
                continue
            starts = torch.tensor([lp + sum(lengths[:j]) for j in range(len(lengths))])
            offsets = torch.arange(max(lengths))
            present = offsets < torch.tensor(lengths)[:, None]
            positions = torch.where(present, starts[:, None] + offsets, used - 1)
            device = segment_ids.device
            rows.append(RowLayout(lp, used, positions.to(device), present.to(device)))
        return cls(tuple(rows), segment_ids.shape[1])


def grouped_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: PrefixGroupLayout, scale: float
) -> torch.Tensor:
    """Attention of prefix-grouped rows: ``query`` ``[s, b, heads, d]``, ``key``/``value``
    ``[s, b, groups, d]`` (GQA: heads a multiple of groups) to ``[s, b, heads × d]``, padding positions 0."""
    s, b, heads, d = query.shape
    gqa = heads != key.shape[2]
    rows = []
    for r, row in enumerate(layout.rows):
        q, k, v = query[:, r].transpose(0, 1), key[:, r].transpose(0, 1), value[:, r].transpose(0, 1)  # [h, s, d]
        lp = row.prompt_length
        prompt = F.scaled_dot_product_attention(
            q[:, :lp], k[:, :lp], v[:, :lp], is_causal=True, scale=scale, enable_gqa=gqa
        )  # fmt: skip
        parts = [prompt.transpose(0, 1)]  # [lp, h, d]
        if row.response_positions is not None:
            positions, present = row.response_positions, row.response_present
            g, lr = positions.shape

            def keys_of(x: torch.Tensor) -> torch.Tensor:  # [G, h, Lp + Lr, d]: [X_P; X_Ri] per response
                return torch.cat((x[:, :lp].expand(g, -1, -1, -1), x[:, positions].transpose(0, 1)), dim=2)

            visible = torch.ones(lr, lp + lr, dtype=torch.bool, device=q.device).tril(lp)  # causal, bottom-right
            responses = F.scaled_dot_product_attention(
                q[:, positions].transpose(0, 1), keys_of(k), keys_of(v), attn_mask=visible, scale=scale,
                enable_gqa=gqa,
            )  # fmt: skip
            parts.append(responses.transpose(1, 2)[present])  # [sum of Lri, h, d], in row order
        parts.append(query.new_zeros(s - row.used_length, heads, d))
        rows.append(torch.cat(parts))
    return torch.stack(rows, dim=1).reshape(s, b, heads * d)


class PrefixGroupedAttention:
    """Mixin over a megatron core-attention class: :func:`grouped_attention` when the ``attention_mask``
    is a :class:`PrefixGroupLayout`, the base class's forward otherwise (see the module doc)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        config = kwargs["config"]
        refused = {
            "attention_dropout": config.attention_dropout != 0,  # would need the base's RNG stream
            "apply_query_key_layer_scaling": config.apply_query_key_layer_scaling,
            "context_parallel_size": config.context_parallel_size != 1,
            "recompute of core attention": config.recompute_granularity == "full"
            or (config.recompute_granularity == "selective" and "core_attn" in config.recompute_modules),
            "softmax_type": config.softmax_type != "vanilla",
        }
        if any(refused.values()):
            raise ValueError(f"prefix-grouped attention does not support {[k for k, v in refused.items() if v]}")
        softmax_scale = kwargs.get("softmax_scale")
        self.grouped_softmax_scale = 1 / math.sqrt(config.kv_channels) if softmax_scale is None else softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None, **kwargs):  # fmt: skip
        if not isinstance(attention_mask, PrefixGroupLayout):
            return super().forward(
                query, key, value, attention_mask, attn_mask_type=attn_mask_type, attention_bias=attention_bias,
                packed_seq_params=packed_seq_params, **kwargs,
            )  # fmt: skip
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("prefix-grouped rows take no attention bias and no packed-sequence parameters")
        return grouped_attention(query, key, value, attention_mask, self.grouped_softmax_scale)


class LocalPrefixGroupedAttention(PrefixGroupedAttention, DotProductAttention):
    """Over megatron's local ``DotProductAttention``."""


@functools.cache
def prefix_grouped_core_attention(backend: str) -> type:
    """The core-attention class of prefix-grouped models on ``backend`` ("local" or "te")."""
    if backend == "local":
        return LocalPrefixGroupedAttention
    from megatron.core.extensions.transformer_engine import TEDotProductAttention

    return type("TEPrefixGroupedAttention", (PrefixGroupedAttention, TEDotProductAttention), {})
