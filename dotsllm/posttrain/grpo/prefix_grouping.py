"""Prefix grouping (Prefix Grouper, arXiv 2506.05433): each GRPO prompt encoded once for its whole group.

A group's row is ``[P; R1; …; RG]`` (:func:`dotsllm.posttrain.grpo.batch.training_rows` with groups):
the prompt attends causally to itself, each response to the prompt and causally to itself, and each
response's positions restart at ``len(P)``. Every response token then sees exactly the keys, values
and positions it sees in its own row ``[P; Ri]``; the loss reads response tokens only, and the
prompt's gradient is the sum of its G uses, so loss and gradients equal the standard forward's.

Attention. On megatron's local layers (CPU, or a GPU without Transformer Engine) the rows carry an
explicit boolean mask ``[b, 1, s, s]`` (:func:`prefix_group_mask`), which the local softmax applies.
With Transformer Engine grouping is refused (:func:`check_backend`): megatron's ``SelfAttention`` gives
TE one token stream for queries and keys, and THD packing (``cu_seqlens_q``/``cu_seqlens_kv``) gives
each query segment one *contiguous* key range, while a response needs ``[K_P; K_Ri]``, which is not
contiguous in ``[P; R1; …; RG]`` for i > 1. One THD call could still express it over a *gathered*
key/value stream ``[P][P; R1][P; R2]…`` (K_P repeated per response, ``cu_seqlens_kv`` over it, query
segments ``[P][R1][R2]…``, causal aligned bottom-right), but that needs a core-attention module of our
own in place of megatron's ``TEDotProductAttention`` and RoPE kept on ``position_ids`` (megatron's THD
RoPE restarts positions per ``cu_seqlens`` segment, wrong for a response that starts at ``len(P)``);
without a GPU to run it, that would be unverified code, so it is not here.

MoE. A grouped row routes its prompt once where the standard rows route it G times, and megatron's
sequence aux loss and the tokens-per-expert counts that move the expert bias are per row (padding
included). They cannot be made equal by reweighting the prompt alone (the standard rows' padding
enters them too), so grouping refuses an aux-loss coefficient or an expert-bias rate other than 0
(:class:`~dotsllm.posttrain.grpo.config.GRPOConfig`). Router replay works unchanged: a grouped row
carries the prompt's routing once, then each response's.
"""

from __future__ import annotations

import torch


def prefix_group_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """``[b, 1, s, s]`` boolean, True = masked out (megatron's convention), of rows with ``segment_ids``
    ``[b, s]`` (0: the prompt, j > 0: response j, -1: padding): a token attends to the earlier tokens
    of its own segment and of the prompt."""
    s = segment_ids.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    keys = segment_ids[:, None, :]
    visible = (segment_ids[:, :, None] == keys) | (keys == 0)
    return ~(visible & causal)[:, None]


def check_backend(backend: str) -> None:
    """Grouped rows need megatron's local attention layers (see the module doc)."""
    if backend != "local":
        raise ValueError(
            "training.prefix_grouping needs megatron's local attention layers (explicit masks); with "
            "Transformer Engine it is not implemented: a response's keys [K_P; K_Ri] are not one contiguous "
            "THD range of the packed row (see dotsllm/posttrain/grpo/prefix_grouping.py)"
        )


def attention_flops_ratio(lp: float, lr: float, g: int) -> float:
    """Grouped over standard causal attention FLOPs (the paper's App. A.2):
    ``(Lp² + G·Lr(2Lp+Lr)) / (G(Lp+Lr)²)``."""
    return (lp**2 + g * lr * (2 * lp + lr)) / (g * (lp + lr) ** 2)


def pointwise_flops_ratio(lp: float, lr: float, g: int) -> float:
    """Grouped over standard FLOPs of everything per token (projections, MLP/MoE, output layer):
    ``(Lp+G·Lr) / (G(Lp+Lr))``."""
    return (lp + g * lr) / (g * (lp + lr))


def model_flops_ratio(matmul_params: int, num_layers: int, attention_width: int, lp: int, lr: int, g: int) -> float:
    """Grouped over standard training FLOPs of a model: ``6 N`` per token (N: its active matmul
    parameters) plus ``12 L A`` per attended query-key pair (as
    :func:`dotsllm.model.accounting.training_flops_per_token`), of which a causal row of s tokens has s²/2."""
    per_token, per_square = 6 * matmul_params, 6 * num_layers * attention_width
    standard = g * (per_token * (lp + lr) + per_square * (lp + lr) ** 2)
    grouped = per_token * (lp + g * lr) + per_square * (lp**2 + g * lr * (2 * lp + lr))
    return grouped / standard
