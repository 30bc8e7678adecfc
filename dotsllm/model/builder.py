"""Build the dots1 ``GPTModel`` (one pipeline stage of it) from a :class:`Dots1ModelConfig`."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch

from dotsllm.model.config import Dots1ModelConfig

Backend = Literal["auto", "te", "local"]


def resolve_backend(requested: Backend = "auto") -> Literal["te", "local"]:
    """Transformer Engine layers when TE and CUDA are present, megatron-core's local layers otherwise."""
    if requested == "local":
        return "local"
    from megatron.core.extensions.transformer_engine import HAVE_TE

    have_te = HAVE_TE and torch.cuda.is_available()
    if requested == "te" and not have_te:
        raise RuntimeError("backend 'te' needs CUDA and Transformer Engine: pip install 'dotsllm[gpu]'")
    if requested not in ("auto", "te"):
        raise ValueError(f"unknown layer backend {requested!r}; use auto, te or local")
    return "te" if have_te else "local"


def build_model(
    model: Dots1ModelConfig,
    *,
    backend: Backend = "auto",
    params_dtype: torch.dtype = torch.float32,
    vp_stage: int | None = None,
    config_overrides: dict[str, Any] | None = None,
    prefix_grouping: bool = False,
):
    """The part of the dots1 model this rank holds in the layout ``parallel_state`` was initialized with
    (process groups are set up before any model is built).

    The returned ``GPTModel`` (:class:`~dotsllm.model.gpt.Dots1GPTModel`) takes an explicit boolean
    ``attention_mask`` ([b, 1, s, s], True = masked out) and ``position_ids`` ([b, s], which RoPE
    follows) in its forward: packed sequences. ``prefix_grouping``: its core attention also takes
    prefix-grouped GRPO rows, a :class:`~dotsllm.model.prefix_grouped_attention.PrefixGroupLayout` as
    ``attention_mask`` (and is megatron's own otherwise).
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    from dotsllm.model.gpt import Dots1GPTModel
    from dotsllm.model.prefix_grouped_attention import prefix_grouped_core_attention

    chosen = resolve_backend(backend)
    overrides = {"moe_grouped_gemm": chosen == "te", **(config_overrides or {})}
    config = model.transformer_config(**initialized_layout(), params_dtype=params_dtype, **overrides)
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    spec = get_gpt_decoder_block_spec(
        config, use_transformer_engine=chosen == "te", normalization="RMSNorm", vp_stage=vp_stage, pp_rank=pp_rank
    )
    if prefix_grouping:
        spec = with_core_attention(spec, prefix_grouped_core_attention(chosen))
    return Dots1GPTModel(
        config=config,
        transformer_layer_spec=spec,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        vp_stage=vp_stage,
        **model.gpt_model_kwargs(),
    )


def initialized_layout() -> dict[str, int | None]:
    """The sizes ``parallel_state`` was initialized with, as :meth:`Dots1ModelConfig.transformer_config` takes them."""
    from megatron.core import parallel_state as ps

    return dict(
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        ep=ps.get_expert_model_parallel_world_size(),
        etp=ps.get_expert_tensor_parallel_world_size(),
        cp=ps.get_context_parallel_world_size(),
        vpp=ps.get_virtual_pipeline_model_parallel_world_size(),
    )


def with_core_attention(block_spec, core_attention: type):
    """A copy of a decoder ``block_spec`` (megatron's ``TransformerBlockSubmodules``) whose layers'
    self-attention uses ``core_attention``."""

    def layer(spec):
        attention = spec.submodules.self_attention
        attention = dataclasses.replace(
            attention, submodules=dataclasses.replace(attention.submodules, core_attention=core_attention)
        )
        return dataclasses.replace(spec, submodules=dataclasses.replace(spec.submodules, self_attention=attention))

    return dataclasses.replace(block_spec, layer_specs=[layer(spec) for spec in block_spec.layer_specs])
