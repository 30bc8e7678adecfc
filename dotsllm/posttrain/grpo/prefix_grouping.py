"""Prefix grouping (Prefix Grouper, arXiv 2506.05433): each GRPO prompt encoded once for its whole group.

A group's row is ``[P; R1; …; RG]`` (:func:`dotsllm.posttrain.grpo.batch.training_rows` with groups):
the prompt attends causally to itself, each response to the prompt and causally to itself, and each
response's positions restart at ``len(P)``. Every response token then sees exactly the keys, values
and positions it sees in its own row ``[P; Ri]``; the loss reads response tokens only, and the
prompt's gradient is the sum of its G uses, so loss and gradients equal the standard forward's.

Attention: a model built with ``prefix_grouping`` (:func:`dotsllm.model.builder.build_model`) swaps its
core attention for :mod:`dotsllm.model.prefix_grouped_attention`, the paper's two calls without an
``s × s`` mask, on megatron's local layers and under Transformer Engine alike; the rows' layout
(:class:`~dotsllm.model.prefix_grouped_attention.PrefixGroupLayout`, from ``segment_ids``) is passed as
the attention mask. Without a layout (the rollouts) the model attends as megatron does.

MoE. A grouped row routes its prompt once where the standard rows route it G times, and megatron's
sequence aux loss and the tokens-per-expert counts that move the expert bias are per row (padding
included). They cannot be made equal by reweighting the prompt alone (the standard rows' padding
enters them too), so grouping refuses an aux-loss coefficient or an expert-bias rate other than 0
(:class:`~dotsllm.posttrain.grpo.config.GRPOConfig`). Router replay works unchanged: a grouped row
carries the prompt's routing once, then each response's.
"""

from __future__ import annotations


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
