"""Parameters and training FLOPs of a dots1 model, whatever its parallel layout.

Parameter counts come from the model definition: megatron-core's ``GPTModel`` built on the meta
device (no memory), counted by role and by decoder layer; FLOPs per token are arithmetic on them.
What a model needs under a layout (pipeline stages, per-GPU memory, run time) is :mod:`dotsllm.plan`.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass

import torch

from dotsllm.model.config import Dots1ModelConfig

ROLES = (
    "embedding",
    "output_layer",
    "attention",
    "dense_mlp",
    "routed_experts",
    "shared_experts",
    "router",
    "norms",
)
# First match wins. Names as megatron-core's GPTModel gives them, local and TE specs alike (TE fuses
# norms into the next linear as `layer_norm_weight`).
_ROLE_OF_NAME = (
    ("norms", re.compile(r"norm")),
    ("embedding", re.compile(r"^embedding\.")),
    ("output_layer", re.compile(r"^output_layer\.")),
    ("attention", re.compile(r"\.self_attention\.")),
    ("router", re.compile(r"\.mlp\.router\.")),
    ("shared_experts", re.compile(r"\.mlp\.shared_experts\.")),
    ("routed_experts", re.compile(r"\.mlp\.experts\.")),
    ("dense_mlp", re.compile(r"\.mlp\.")),
)
_LAYER_INDEX = re.compile(r"^decoder\.layers\.(\d+)\.")
# Roles whose weights megatron-core splits over tensor parallelism (routed experts: EP x ETP instead).
TP_SHARDED_ROLES = frozenset({"embedding", "output_layer", "attention", "dense_mlp", "shared_experts"})


def role_of(name: str) -> str:
    """The role of a megatron-core ``GPTModel`` parameter, from its name."""
    for role, pattern in _ROLE_OF_NAME:
        if pattern.search(name):
            return role
    raise ValueError(f"parameter {name!r} has no accounting role")


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters by role: per decoder layer, and those outside the layers on the first/last stage."""

    layers: tuple[Counter, ...]  # global layer index -> role -> parameters
    first_stage: Counter  # input embedding
    last_stage: Counter  # final norm, output layer
    num_experts: int
    moe_router_topk: int

    def by_role(self) -> dict[str, int]:
        summed = sum(self.layers, self.first_stage + self.last_stage)
        return {role: summed[role] for role in ROLES}

    @property
    def total(self) -> int:
        return sum(self.by_role().values())

    @property
    def active(self) -> int:
        """Parameters one token passes through: all but the routed experts it is not sent to.

        Includes the input embedding and the output layer; this is the convention of dots.llm1's
        "14B active".
        """
        routed = self.by_role()["routed_experts"]
        if routed % self.num_experts:
            raise ValueError(f"{routed} routed-expert parameters do not split into {self.num_experts} experts")
        return self.total - routed + routed // self.num_experts * self.moe_router_topk

    @property
    def active_without_embedding(self) -> int:
        return self.active - self.by_role()["embedding"]

    @property
    def active_matmul(self) -> int:
        """Active parameters that multiply activations: not the embedding lookup, not the norms."""
        roles = self.by_role()
        return self.active - roles["embedding"] - roles["norms"]

    def stage(self, layers: range, *, first: bool, last: bool) -> Counter:
        """Parameters of one pipeline stage by role (whole model, before TP/EP sharding)."""
        held = sum((self.layers[i] for i in layers), Counter())
        return held + (self.first_stage if first else Counter()) + (self.last_stage if last else Counter())


def count_parameters(model: torch.nn.Module, config: Dots1ModelConfig) -> ParameterCounts:
    """Count a whole (PP = 1) megatron-core dots1 ``GPTModel`` by role."""
    layers = tuple(Counter() for _ in range(config.num_layers))
    first_stage, last_stage = Counter(), Counter()
    for name, param in model.named_parameters():
        role = role_of(name)
        layer = _LAYER_INDEX.match(name)
        where = layers[int(layer.group(1))] if layer else first_stage if role == "embedding" else last_stage
        where[role] += param.numel()
    return ParameterCounts(layers, first_stage, last_stage, config.num_experts, config.moe_router_topk)


def build_meta_model(config: Dots1ModelConfig, params_dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """The whole dots1 ``GPTModel`` (megatron-core local layers) on the meta device.

    Its tensors have the dtypes of a model built with ``params_dtype`` (norms and expert biases stay fp32).
    Needs megatron-core's ``parallel_state`` initialized with TP = PP = EP = 1 (a world of one: the
    commands that convert checkpoints start one; ``single_process_world`` of the parallel setup gives
    a throwaway one); it does not start or end a world itself.
    """
    from megatron.core import parallel_state

    from dotsllm.model.builder import build_model

    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError(
            "building the whole model on the meta device needs megatron-core's parallel_state initialized "
            "with TP = PP = EP = 1 (a world of one); none is"
        )
    sizes = (
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_pipeline_model_parallel_world_size(),
        parallel_state.get_expert_model_parallel_world_size(),
    )
    if sizes != (1, 1, 1):
        raise RuntimeError(f"building the whole model on the meta device needs TP = PP = EP = 1, not {sizes}")
    # meta tensors: nothing to initialize, and no CUDA device placement on GPU machines.
    with torch.device("meta"):
        return build_model(
            config,
            backend="local",
            params_dtype=params_dtype,
            config_overrides=dict(use_cpu_initialization=True, perform_initialization=False),
        )


@functools.lru_cache(maxsize=None)
def model_parameter_counts(config: Dots1ModelConfig) -> ParameterCounts:
    """:func:`count_parameters` of the model built on the meta device (cached per config).

    Needs a world of one, as :func:`build_meta_model` (only when the config is not cached yet).
    """
    return count_parameters(build_meta_model(config), config)


def training_flops_per_token(active_matmul_params: int, num_layers: int, attention_width: int, seq_len: int) -> int:
    """Training (forward + backward) FLOPs per token: ``6 N + 12 L A s``.

    ``6 N``: each active matmul weight does a multiply-add (2 FLOPs) in the forward and two in the
    backward (input and weight gradients). ``12 L A s``: per layer, QK^T and scores x V are each
    ``2 A s`` FLOPs per token forward (``A`` = heads x head_dim), x3 for the backward. The attention
    term is not halved for the causal mask (a causal kernel does about half of it), following PaLM
    and Megatron-LM, so MFU compares with published numbers.
    """
    return 6 * active_matmul_params + 12 * num_layers * attention_width * seq_len


def distributed_parameter_counts(model_chunks: list[torch.nn.Module], config: Dots1ModelConfig) -> ParameterCounts:
    """Whole-model counts by role from this rank's model chunks under any TP/PP/EP layout.

    Each local parameter is scaled by the degree it is split over (TP for TP-sharded roles, EP x ETP
    for routed experts, as marked by megatron-core's ``tensor_model_parallel``), then the pipeline
    stages are summed. Used by the trainer, which cannot build a whole meta model mid-run.
    """
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    ep = parallel_state.get_expert_model_parallel_world_size()
    etp = parallel_state.get_expert_tensor_parallel_world_size()
    local = Counter()
    for chunk in model_chunks:
        for name, param in chunk.named_parameters():
            role = role_of(name.removeprefix("module."))
            split = getattr(param, "tensor_model_parallel", False)
            if role == "routed_experts":
                scale = ep * (etp if split else 1)
            else:
                scale = tp if split and role in TP_SHARDED_ROLES else 1
            local[role] += param.numel() * scale
    device = next(model_chunks[0].parameters()).device
    summed = torch.tensor([local[role] for role in ROLES], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(summed, group=parallel_state.get_pipeline_model_parallel_group())
    whole = Counter({role: int(n) for role, n in zip(ROLES, summed.tolist())})
    return ParameterCounts((whole,), Counter(), Counter(), config.num_experts, config.moe_router_topk)
