"""Parameters, training FLOPs, per-GPU memory and run time of a dots1 model under a parallel layout.

Parameter counts come from the model definition: megatron-core's ``GPTModel`` built on the meta
device (no memory), counted by role. Memory and FLOPs are arithmetic on those counts, following
megatron-core's sharding: routed experts over EP x ETP, the other matmul weights over TP, norms and
the router replicated, layers over PP stages (embedding on the first stage, output layer and final
norm on the last).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import torch

from dotsllm.model.config import Dots1ModelConfig

from dotsllm.parallel import ParallelConfig

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

BF16_BYTES = 2
FP32_BYTES = 4
ADAM_STATE_BYTES = 3 * FP32_BYTES  # fp32 master copy + Adam m + Adam v


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
    Needs a world of one; initializes (and afterwards tears down) one when none exists.
    """
    from megatron.core import parallel_state

    from dotsllm.model.builder import build_model
    from dotsllm.parallel.setup import destroy_distributed, init_distributed

    owns_world = not torch.distributed.is_initialized()
    init_distributed(ParallelConfig())
    try:
        sizes = (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_expert_model_parallel_world_size(),
        )
        if sizes != (1, 1, 1):
            raise RuntimeError(f"counting needs the whole model on one rank, but TP, PP, EP = {sizes}")
        # meta tensors: nothing to initialize, and no CUDA device placement on GPU machines.
        with torch.device("meta"):
            return build_model(
                config,
                backend="local",
                params_dtype=params_dtype,
                config_overrides=dict(use_cpu_initialization=True, perform_initialization=False),
            )
    finally:
        if owns_world:
            destroy_distributed()


@functools.lru_cache(maxsize=None)
def model_parameter_counts(config: Dots1ModelConfig) -> ParameterCounts:
    """:func:`count_parameters` of the model built on the meta device (cached per config)."""
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


def activation_bytes_per_token(config: Dots1ModelConfig, parallel: ParallelConfig, moe: bool) -> int:
    """Estimated activation memory one decoder layer keeps for backward, per token held by a GPU.

    bf16 tensors saved by megatron-core's layers with flash attention (no s x s scores), no
    recomputation, sequence parallelism with TP (so every term is per token held by the GPU, i.e.
    per ``1/(tp cp)`` of the micro-batch), balanced routing: per token, top-k expert copies of the
    hidden state (gathered over ETP) and of the expert FFN (split over ETP).
    """
    h, q = config.hidden_size, config.num_attention_heads * config.head_dim
    kv = config.num_query_groups * config.head_dim
    # norm inputs (input, pre-MLP), QKV input; q, k before QK-norm; q, k, v into attention; its output
    attention = 3 * h + 3 * q + 3 * kv
    if moe:
        shared = h + 3 * config.shared_expert_ffn_hidden_size if config.num_shared_experts else 0
        routed = config.moe_router_topk * (parallel.etp * h + 3 * config.moe_ffn_hidden_size)
        mlp = h + shared + routed  # router input, shared expert, routed experts
    else:
        mlp = h + 3 * config.ffn_hidden_size  # fc1 input, SwiGLU input (2 f), fc2 input
    return BF16_BYTES * (attention + mlp)


def pipeline_stage_layers(
    config: Dots1ModelConfig,
    parallel: ParallelConfig,
    first_stage_layers: int | None = None,
    last_stage_layers: int | None = None,
) -> list[range]:
    """Decoder layers of each pipeline stage, as megatron-core assigns them (uneven first/last allowed)."""
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    tc = config.transformer_config(
        **asdict(parallel),
        num_layers_in_first_pipeline_stage=first_stage_layers,
        num_layers_in_last_pipeline_stage=last_stage_layers,
    )
    stages = []
    for rank in range(parallel.pp):
        try:
            offset = get_transformer_layer_offset(tc, pp_rank=rank)
            stages.append(range(offset, offset + get_num_layers_to_build(tc, pp_rank=rank)))
        except AssertionError as error:  # megatron-core checks the split with asserts
            raise ValueError(f"{config.num_layers} layers over PP={parallel.pp}: {error}") from error
    return stages


@dataclass(frozen=True)
class StageMemory:
    """Bytes one GPU of a pipeline stage holds (bf16 weights, fp32 main grads, Adam in fp32)."""

    stage: int
    layers: int
    params: int  # parameters on one GPU
    expert_params: int  # of which routed experts
    weights: int
    grads: int
    optimizer: int  # fp32 master + m + v, replicated over DP
    optimizer_distributed: int  # the same, sharded over DP (expert params over expert-DP)
    activations: int  # in-flight micro-batches under 1F1B, plus fp32 logits on the last stage

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations

    @property
    def total_distributed(self) -> int:
        return self.weights + self.grads + self.optimizer_distributed + self.activations


def stage_memory(
    counts: ParameterCounts,
    config: Dots1ModelConfig,
    parallel: ParallelConfig,
    dp: int,
    stage: int,
    layers: range,
    *,
    seq_len: int,
    micro_batch_size: int,
    microbatches: int,
) -> StageMemory:
    """Memory of one GPU in pipeline stage ``stage``, which holds decoder ``layers``."""
    last = stage == parallel.pp - 1
    held = counts.stage(layers, first=stage == 0, last=last)
    expert_params = _divide(held.pop("routed_experts", 0), parallel.ep * parallel.etp, "routed experts over EP x ETP")
    dense_params = sum(
        _divide(n, parallel.tp, f"{role} over TP") if role in TP_SHARDED_ROLES else n for role, n in held.items()
    )
    params = dense_params + expert_params
    optimizer_shards = _ceil_div(dense_params, dp * parallel.cp) + _ceil_div(
        expert_params, expert_data_parallel_size(parallel, dp)
    )

    tokens = _divide(seq_len * micro_batch_size, parallel.tp * parallel.cp, "micro-batch tokens over TP x CP")
    in_flight = min(parallel.pp - stage, microbatches)  # 1F1B: stage i holds pp - i micro-batches
    per_token = sum(activation_bytes_per_token(config, parallel, moe=i >= config.num_dense_layers) for i in layers)
    logits = FP32_BYTES * tokens * config.vocab_size if last else 0  # vocab/TP for tp x tokens
    return StageMemory(
        stage=stage,
        layers=len(layers),
        params=params,
        expert_params=expert_params,
        weights=BF16_BYTES * params,
        grads=FP32_BYTES * params,
        optimizer=ADAM_STATE_BYTES * params,
        optimizer_distributed=ADAM_STATE_BYTES * optimizer_shards,
        activations=in_flight * tokens * per_token + logits,
    )


def expert_data_parallel_size(parallel: ParallelConfig, dp: int) -> int:
    """Replicas of each routed expert: megatron-core's expert-DP group spans DP x CP x TP / (EP x ETP)."""
    return _divide(dp * parallel.cp * parallel.tp, parallel.ep * parallel.etp, "DP x CP x TP over EP x ETP")


def _divide(a: int, b: int, what: str) -> int:
    if a % b:
        raise ValueError(f"{what}: {a} is not divisible by {b}")
    return a // b


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def projected_gpu_hours(flops_per_token: int, tokens: float, gpu_flops: float, mfu: float) -> float:
    """GPU-hours to train on ``tokens`` at ``mfu`` of ``gpu_flops`` (peak FLOP/s per GPU)."""
    return tokens * flops_per_token / (gpu_flops * mfu) / 3600


@dataclass(frozen=True)
class Plan:
    """Size, cost and per-GPU memory of training one model under one layout."""

    model: str
    layout: dict[str, int]  # tp, pp, ep, etp, cp, dp, expert_dp, gpus
    params_by_role: dict[str, int]
    total_params: int
    active_params: int  # headline: includes the input embedding (dots.llm1's "14B active")
    active_params_without_embedding: int
    active_matmul_params: int
    seq_len: int
    flops_per_token: int
    micro_batch_size: int
    global_batch_tokens: int
    microbatches_per_step: int
    steps: int
    stages: tuple[StageMemory, ...]
    tokens: float
    gpu_flops: float
    mfu: float
    gpu_hours: float
    days: float

    @property
    def worst_stage(self) -> StageMemory:
        """The pipeline stage needing the most memory per GPU (with the distributed optimizer)."""
        return max(self.stages, key=lambda s: s.total_distributed)

    def to_dict(self) -> dict[str, Any]:
        stages = [{**asdict(s), "total": s.total, "total_distributed": s.total_distributed} for s in self.stages]
        return {**asdict(self), "stages": stages, "worst_stage": self.worst_stage.stage}


def make_plan(
    config: Dots1ModelConfig,
    parallel: ParallelConfig,
    dp: int,
    *,
    seq_len: int = 8192,
    micro_batch_size: int = 1,
    global_batch_tokens: int = 64 * 2**20,
    tokens: float = 11.2e12,
    gpu_flops: float = 989e12,
    mfu: float = 0.4,
    first_stage_layers: int | None = None,
    last_stage_layers: int | None = None,
) -> Plan:
    """Everything ``dotsllm plan`` reports, for ``config`` on ``dp`` replicas of ``parallel``."""
    counts = model_parameter_counts(config)
    gpus = dp * parallel.tp * parallel.pp * parallel.cp
    parallel.data_parallel_size(gpus)  # the layout checks the trainer applies
    microbatches = _divide(global_batch_tokens, seq_len * micro_batch_size * dp, "global batch over seq x mbs x DP")
    layers = pipeline_stage_layers(config, parallel, first_stage_layers, last_stage_layers)
    stages = tuple(
        stage_memory(
            counts,
            config,
            parallel,
            dp,
            stage,
            stage_layers,
            seq_len=seq_len,
            micro_batch_size=micro_batch_size,
            microbatches=microbatches,
        )
        for stage, stage_layers in enumerate(layers)
    )
    flops = training_flops_per_token(
        counts.active_matmul, config.num_layers, config.num_attention_heads * config.head_dim, seq_len
    )
    gpu_hours = projected_gpu_hours(flops, tokens, gpu_flops, mfu)
    return Plan(
        model=config.name,
        layout=dict(
            tp=parallel.tp,
            pp=parallel.pp,
            ep=parallel.ep,
            etp=parallel.etp,
            cp=parallel.cp,
            dp=dp,
            expert_dp=expert_data_parallel_size(parallel, dp),
            gpus=gpus,
        ),
        params_by_role=counts.by_role(),
        total_params=counts.total,
        active_params=counts.active,
        active_params_without_embedding=counts.active_without_embedding,
        active_matmul_params=counts.active_matmul,
        seq_len=seq_len,
        flops_per_token=flops,
        micro_batch_size=micro_batch_size,
        global_batch_tokens=global_batch_tokens,
        microbatches_per_step=microbatches,
        steps=_ceil_div(int(tokens), global_batch_tokens),
        stages=stages,
        tokens=tokens,
        gpu_flops=gpu_flops,
        mfu=mfu,
        gpu_hours=gpu_hours,
        days=gpu_hours / gpus / 24,
    )


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
