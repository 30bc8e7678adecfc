"""A dots1 model under a parallel layout: pipeline stages, per-GPU memory, run time, and whether it fits.

Parameter counts and FLOPs per token are the model's own (:mod:`dotsllm.model.accounting`). Memory
is arithmetic on those counts, following megatron-core's sharding: routed experts over EP x ETP, the
other matmul weights over TP, norms and the router replicated, layers over PP stages (embedding on
the first stage, output layer and final norm on the last). The verdict compares the worst stage with
a GPU's memory and, when it does not fit, evaluates the other layouts of the same GPUs.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from dotsllm.model.accounting import (
    TP_SHARDED_ROLES,
    ParameterCounts,
    model_parameter_counts,
    training_flops_per_token,
)
from dotsllm.model.config import Dots1ModelConfig
from dotsllm.parallel.config import ParallelConfig

BF16_BYTES = 2
FP32_BYTES = 4
ADAM_STATE_BYTES = 3 * FP32_BYTES  # fp32 master copy + Adam m + Adam v
GIB = 2**30
DEFAULT_GPU_MEMORY_GIB = 80.0  # H100 / H800
MAX_TP = 8  # tensor parallelism stays within a node of 8 GPUs
MAX_ALTERNATIVES = 5
MAX_GPUS = 2**17  # where the search for more GPUs gives up


def parameter_counts(config: Dots1ModelConfig) -> ParameterCounts:
    """The model's counts by role and layer, in a throwaway world of one if none is initialized."""
    from dotsllm.parallel.setup import single_process_world

    with single_process_world():
        return model_parameter_counts(config)


# ---- pipeline stages ----------------------------------------------------------------------------


class PipelineSplitError(ValueError):
    """The decoder layers do not split over the pipeline stages as asked; names a split that works."""


def suggest_pipeline_split(num_layers: int, pp: int) -> tuple[int, int] | None:
    """``(first, last)`` stage layers that split ``num_layers`` over ``pp`` stages where an even split
    does not: the middle stages get ``ceil(num_layers / pp)`` (or fewer) each, the first and last the
    rest, halved. ``None`` when the split is even (no option needed) or impossible (``pp > num_layers``)."""
    if pp <= 1 or num_layers % pp == 0 or pp > num_layers:
        return None
    for middle in range(-(-num_layers // pp), 0, -1):
        rest = num_layers - (pp - 2) * middle
        if rest >= 2:
            return rest // 2, rest - rest // 2
    return None


def pipeline_split_problem(num_layers: int, pp: int, first: int | None, last: int | None) -> str | None:
    """Why megatron-core would refuse to split ``num_layers`` over ``pp`` stages this way (its rules for
    even and uneven first/last stages, without VPP), or ``None``."""
    if first is None and last is None:
        return None if num_layers % pp == 0 else "not evenly"
    if any(n is not None and n <= 0 for n in (first, last)):
        return "stage layers must be positive"
    middle_layers = num_layers - (first or 0) - (last or 0)
    middle_stages = pp - (first is not None) - (last is not None)
    if middle_stages < 0 or bool(middle_layers) != bool(middle_stages) or middle_layers < 0:
        return f"{middle_layers} layers are left for {max(middle_stages, 0)} middle stage(s)"
    if middle_stages and middle_layers % middle_stages:
        return f"the {middle_layers} layers left do not split evenly over the {middle_stages} middle stages"
    return None


def _split_message(num_layers: int, pp: int, first: int | None, last: int | None, problem: str) -> str:
    given = " ".join(
        f"{flag} {n}" for flag, n in (("--first-stage-layers", first), ("--last-stage-layers", last)) if n is not None
    )
    if problem == "not evenly":
        text = f"{num_layers} layers do not split evenly over --pp {pp}"
    else:
        text = f"{num_layers} layers do not split over --pp {pp} with {given}: {problem}"
    if num_layers % pp == 0:
        return f"{text}; they split evenly without --first-stage-layers/--last-stage-layers"
    suggestion = suggest_pipeline_split(num_layers, pp)
    if suggestion is None:
        return f"{text}; use --pp {num_layers} or fewer stages"
    f, l = suggestion
    middle = (num_layers - f - l) // (pp - 2) if pp > 2 else 0
    arithmetic = f"{f} + {pp - 2}×{middle} + {l}" if pp > 2 else f"{f} + {l}"
    advice = ""
    if problem == "not evenly":
        advice = (
            "split them unevenly, " if pp == 2
            else f"give the first/last stages {'fewer' if max(f, l) <= middle else 'more'} layers, "
        )  # fmt: skip
    return (
        f"{text}: {advice}e.g. --first-stage-layers {f} --last-stage-layers {l} ({arithmetic} = {num_layers})"
    )


def check_pipeline_split(num_layers: int, pp: int, first: int | None = None, last: int | None = None) -> None:
    """Raise :class:`PipelineSplitError` naming ``--first-stage-layers``/``--last-stage-layers`` values
    that work when megatron-core would refuse this split."""
    problem = pipeline_split_problem(num_layers, pp, first, last)
    if problem is not None:
        raise PipelineSplitError(_split_message(num_layers, pp, first, last, problem))


def pipeline_stage_layers(
    config: Dots1ModelConfig,
    parallel: ParallelConfig,
    first_stage_layers: int | None = None,
    last_stage_layers: int | None = None,
) -> list[range]:
    """Decoder layers of each pipeline stage, as megatron-core assigns them (uneven first/last allowed)."""
    check_pipeline_split(config.num_layers, parallel.pp, first_stage_layers, last_stage_layers)
    return list(_stage_layers(config, parallel, first_stage_layers, last_stage_layers))


@functools.lru_cache(maxsize=None)
def _stage_layers(
    config: Dots1ModelConfig, parallel: ParallelConfig, first: int | None, last: int | None
) -> tuple[range, ...]:
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    tc = config.transformer_config(
        **asdict(parallel), num_layers_in_first_pipeline_stage=first, num_layers_in_last_pipeline_stage=last
    )
    stages = []
    for rank in range(parallel.pp):
        try:
            offset = get_transformer_layer_offset(tc, pp_rank=rank)
            stages.append(range(offset, offset + get_num_layers_to_build(tc, pp_rank=rank)))
        except AssertionError as error:  # megatron-core checks the split with asserts
            raise PipelineSplitError(f"{config.num_layers} layers over --pp {parallel.pp}: {error}") from error
    return tuple(stages)


# ---- memory -------------------------------------------------------------------------------------


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
    held: Counter,
    per_token: int,
    config: Dots1ModelConfig,
    parallel: ParallelConfig,
    dp: int,
    stage: int,
    layers: int,
    *,
    seq_len: int,
    micro_batch_size: int,
    microbatches: int,
) -> StageMemory:
    """Memory of one GPU in pipeline stage ``stage``, which holds ``layers`` decoder layers: ``held``, its
    parameters by role (whole model, before TP/EP sharding: :meth:`ParameterCounts.stage`), and
    ``per_token``, the activation bytes of its layers per token (:func:`activation_bytes_per_token`)."""
    held = Counter(held)
    last = stage == parallel.pp - 1
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
    logits = FP32_BYTES * tokens * config.vocab_size if last else 0  # vocab/TP for tp x tokens
    return StageMemory(
        stage=stage,
        layers=layers,
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


def check_model_split(config: Dots1ModelConfig, parallel: ParallelConfig) -> None:
    """The model's own limits on a layout (megatron-core's, where a plan would not meet them)."""
    for flag, size, what, n in (
        ("--tp", parallel.tp, "attention heads", config.num_attention_heads),
        ("--tp", parallel.tp, "query groups", config.num_query_groups),
        ("--ep", parallel.ep, "routed experts", config.num_experts),
        ("--etp", parallel.etp, "expert FFN width", config.moe_ffn_hidden_size),
    ):
        if n % size:
            raise ValueError(f"{flag} {size} does not divide the model's {n} {what}")
    if parallel.pp > config.num_layers:
        raise ValueError(f"--pp {parallel.pp} has more stages than the model's {config.num_layers} layers")


def _divide(a: int, b: int, what: str) -> int:
    if a % b:
        raise ValueError(f"{what}: {a} is not divisible by {b}")
    return a // b


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def projected_gpu_hours(flops_per_token: int, tokens: float, gpu_flops: float, mfu: float) -> float:
    """GPU-hours to train on ``tokens`` at ``mfu`` of ``gpu_flops`` (peak FLOP/s per GPU)."""
    return tokens * flops_per_token / (gpu_flops * mfu) / 3600


# ---- layouts and their memory -------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What the verdict varies: the parallel sizes, the GPUs, the micro-batch and an uneven PP split."""

    tp: int
    pp: int
    ep: int
    etp: int
    gpus: int
    micro_batch_size: int
    first_stage_layers: int | None = None
    last_stage_layers: int | None = None

    @property
    def parallel(self) -> ParallelConfig:
        return ParallelConfig(tp=self.tp, pp=self.pp, ep=self.ep, etp=self.etp)

    def args(self) -> list[str]:
        """``dotsllm plan`` options that plan this layout."""
        args = [
            "--tp", str(self.tp), "--pp", str(self.pp), "--ep", str(self.ep), "--etp", str(self.etp),
            "--gpus", str(self.gpus), "--micro-batch-size", str(self.micro_batch_size),
        ]  # fmt: skip
        for flag, n in (
            ("--first-stage-layers", self.first_stage_layers),
            ("--last-stage-layers", self.last_stage_layers),
        ):
            if n is not None:
                args += [flag, str(n)]
        return args

    def changes_from(self, other: Layout) -> str:
        """The options that differ from ``other``'s (``--ep 16 --micro-batch-size 1``)."""
        mine, theirs = _pairs(self.args()), _pairs(other.args())
        changed = [f"{flag} {value}" for flag, value in mine.items() if theirs.get(flag) != value]
        changed += [f"without {flag}" for flag in theirs if flag not in mine]
        return " ".join(changed) or "(none)"

    def distance(self, other: Layout) -> float:
        """How far from ``other``: doublings and halvings of TP, PP, EP, ETP and the micro-batch."""
        return sum(
            abs(math.log2(getattr(self, name) / getattr(other, name)))
            for name in ("tp", "pp", "ep", "etp", "micro_batch_size")
        )


def _pairs(args: list[str]) -> dict[str, str]:
    return dict(zip(args[::2], args[1::2]))


@dataclass(frozen=True)
class BatchSettings:
    seq_len: int
    global_batch_tokens: int


class _MemoryModel:
    """Per-GPU memory of many layouts of one model, the stages' sums computed once per PP split."""

    def __init__(self, config: Dots1ModelConfig, counts: ParameterCounts, batch: BatchSettings):
        self.config, self.counts, self.batch = config, counts, batch
        self._stages: dict[tuple, tuple[tuple[range, Counter], ...]] = {}
        self._per_token: dict[tuple, tuple[int, ...]] = {}

    def microbatches(self, layout: Layout, dp: int) -> int:
        return _divide(
            self.batch.global_batch_tokens,
            self.batch.seq_len * layout.micro_batch_size * dp,
            "global batch over seq x mbs x DP",
        )

    def stages(self, layout: Layout) -> tuple[StageMemory, ...]:
        """Memory of each stage; ``ValueError`` where the layout does not work for this model or batch."""
        parallel = layout.parallel
        dp = parallel.data_parallel_size(layout.gpus)
        check_model_split(self.config, parallel)
        microbatches = self.microbatches(layout, dp)
        split = (layout.pp, layout.first_stage_layers, layout.last_stage_layers)
        if split not in self._stages:
            layers = pipeline_stage_layers(
                self.config, ParallelConfig(pp=layout.pp), layout.first_stage_layers, layout.last_stage_layers
            )
            self._stages[split] = tuple(
                (r, self.counts.stage(r, first=i == 0, last=i == layout.pp - 1)) for i, r in enumerate(layers)
            )
        stages = self._stages[split]
        if (split, layout.etp) not in self._per_token:
            self._per_token[split, layout.etp] = tuple(
                sum(
                    activation_bytes_per_token(self.config, parallel, moe=i >= self.config.num_dense_layers)
                    for i in layers
                )
                for layers, _ in stages
            )
        per_token = self._per_token[split, layout.etp]
        return tuple(
            stage_memory(
                held, per_token[i], self.config, parallel, dp, i, len(layers),
                seq_len=self.batch.seq_len, micro_batch_size=layout.micro_batch_size, microbatches=microbatches,
            )  # fmt: skip
            for i, (layers, held) in enumerate(stages)
        )


def worst_stage(stages: tuple[StageMemory, ...], distributed: bool = True) -> StageMemory:
    """The pipeline stage needing the most memory per GPU (with the distributed optimizer, or without)."""
    return max(stages, key=lambda s: s.total_distributed if distributed else s.total)


# ---- the verdict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alternative:
    """A layout that fits, and what it changes."""

    change: str  # the options that differ: "--ep 16"
    layout: dict[str, Any]  # tp, pp, ep, etp, dp, gpus, micro_batch_size, first/last_stage_layers
    args: list[str]  # `dotsllm plan` options that plan it (with the same model, batch and cost options)
    worst_stage: int
    worst_stage_gib: float  # with the distributed optimizer

    @classmethod
    def of(cls, layout: Layout, base: Layout, stages: tuple[StageMemory, ...]) -> Alternative:
        worst = worst_stage(stages)
        return cls(
            change=layout.changes_from(base),
            layout={**asdict(layout), "dp": layout.parallel.data_parallel_size(layout.gpus)},
            args=layout.args(),
            worst_stage=worst.stage,
            worst_stage_gib=worst.total_distributed / GIB,
        )


@dataclass(frozen=True)
class Verdict:
    """Whether the worst pipeline stage fits in a GPU's memory, and what to change when it does not."""

    gpu_memory_gib: float
    worst_stage: int  # with the distributed optimizer (the trainer's default)
    worst_stage_gib: float
    fits: bool
    worst_stage_without_distributed_optimizer: int
    worst_stage_gib_without_distributed_optimizer: float
    fits_without_distributed_optimizer: bool
    # when it does not fit: layouts of the same GPUs that do, closest to this one first
    alternatives: tuple[Alternative, ...] = ()
    layouts_tried: int = 0
    # when none of those fits: the fewest GPUs (doubling) on which a layout does, the closest such layout
    more_gpus: Alternative | None = None

    def summary(self) -> str:
        """One line: fits or not, by how much."""
        cap = f"{self.gpu_memory_gib:g} GiB"
        if self.fits:
            free = self.gpu_memory_gib - self.worst_stage_gib
            line = (
                f"fits in {cap}: worst stage {self.worst_stage} needs {self.worst_stage_gib:.1f} GiB "
                f"({free:.1f} GiB free)"
            )
            if not self.fits_without_distributed_optimizer:
                line += (
                    f"; needs the distributed optimizer ({self.worst_stage_gib_without_distributed_optimizer:.1f} "
                    "GiB without)"
                )
            return line
        return (
            f"does not fit in {cap}: worst stage {self.worst_stage} needs {self.worst_stage_gib:.1f} GiB "
            f"({self.worst_stage_gib - self.gpu_memory_gib:.1f} GiB over)"
        )


def candidate_layouts(config: Dots1ModelConfig, base: Layout, gpus: int) -> Iterator[Layout]:
    """Layouts of ``gpus`` GPUs near ``base``: TP up to 8, PP and EP powers of two (and base's), ETP 1 or
    TP, the micro-batch base's or halved; PP splits unevenly where it must (:func:`suggest_pipeline_split`)."""
    powers = [2**i for i in range(int(math.log2(gpus)) + 1)]
    tps = sorted({t for t in powers if t <= MAX_TP} | {base.tp})
    pps = sorted({p for p in powers if p <= config.num_layers} | {base.pp})
    eps = sorted({e for e in powers if config.num_experts % e == 0} | {base.ep})
    mbss = sorted({base.micro_batch_size} | {base.micro_batch_size >> i for i in range(1, 8)} - {0})
    for tp in tps:
        for pp in pps:
            if gpus % (tp * pp):
                continue
            if pp == base.pp:
                split = (base.first_stage_layers, base.last_stage_layers)
            else:
                split = suggest_pipeline_split(config.num_layers, pp) or (None, None)
            for ep in eps:
                for etp in sorted({tp} if ep == 1 else {1, tp, base.etp}):
                    for mbs in mbss:
                        yield Layout(tp, pp, ep, etp, gpus, mbs, *split)


def _fitting(model: _MemoryModel, base: Layout, gpus: int, cap: float) -> tuple[list[tuple], int]:
    """(distance, GiB, layout, stages) of the candidate layouts of ``gpus`` that fit, and how many were valid."""
    fitting, valid = [], 0
    for layout in candidate_layouts(model.config, base, gpus):
        try:
            stages = model.stages(layout)
        except ValueError:
            continue
        valid += 1
        worst = worst_stage(stages).total_distributed
        if worst <= cap:
            fitting.append((layout.distance(base), worst, layout, stages))
    fitting.sort(key=lambda t: t[:2])
    return fitting, valid


def memory_verdict(
    model: _MemoryModel, base: Layout, stages: tuple[StageMemory, ...], gpu_memory_gib: float
) -> Verdict:
    """:class:`Verdict` of ``base`` (whose memory is ``stages``) on GPUs of ``gpu_memory_gib``."""
    cap = gpu_memory_gib * GIB
    worst, worst_replicated = worst_stage(stages), worst_stage(stages, distributed=False)
    verdict = Verdict(
        gpu_memory_gib=gpu_memory_gib,
        worst_stage=worst.stage,
        worst_stage_gib=worst.total_distributed / GIB,
        fits=worst.total_distributed <= cap,
        worst_stage_without_distributed_optimizer=worst_replicated.stage,
        worst_stage_gib_without_distributed_optimizer=worst_replicated.total / GIB,
        fits_without_distributed_optimizer=worst_replicated.total <= cap,
    )
    if verdict.fits:
        return verdict
    fitting, valid = _fitting(model, base, base.gpus, cap)
    alternatives = tuple(Alternative.of(layout, base, s) for _, _, layout, s in fitting[:MAX_ALTERNATIVES])
    verdict = replace(verdict, alternatives=alternatives, layouts_tried=valid)
    if alternatives:
        return verdict
    gpus = base.gpus * 2
    while gpus <= MAX_GPUS:
        fitting, _ = _fitting(model, base, gpus, cap)
        if fitting:
            _, _, layout, s = fitting[0]
            return replace(verdict, more_gpus=Alternative.of(layout, base, s))
        gpus *= 2
    return verdict


# ---- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Size, cost and per-GPU memory of training one model under one layout, and whether it fits."""

    model: str
    layout: dict[str, int]  # tp, pp, ep, etp, cp, dp, expert_dp, gpus
    first_stage_layers: int | None
    last_stage_layers: int | None
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
    verdict: Verdict

    @property
    def worst_stage(self) -> StageMemory:
        """The pipeline stage needing the most memory per GPU (with the distributed optimizer)."""
        return worst_stage(self.stages)

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
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
) -> Plan:
    """Everything ``dotsllm plan`` reports, for ``config`` on ``dp`` replicas of ``parallel``."""
    if parallel.vpp is not None:
        raise ValueError("plans are for 1F1B without virtual pipeline stages (vpp)")
    gpus = dp * parallel.tp * parallel.pp * parallel.cp
    parallel.data_parallel_size(gpus)  # the layout checks the trainer applies
    check_model_split(config, parallel)
    check_pipeline_split(config.num_layers, parallel.pp, first_stage_layers, last_stage_layers)
    counts = parameter_counts(config)
    model = _MemoryModel(config, counts, BatchSettings(seq_len, global_batch_tokens))
    base = Layout(
        tp=parallel.tp,
        pp=parallel.pp,
        ep=parallel.ep,
        etp=parallel.etp,
        gpus=gpus,
        micro_batch_size=micro_batch_size,
        first_stage_layers=first_stage_layers,
        last_stage_layers=last_stage_layers,
    )
    # full stage layers through megatron-core's TransformerConfig (which checks TP and more), memoized
    _stage_layers(config, parallel, first_stage_layers, last_stage_layers)
    stages = model.stages(base)
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
        first_stage_layers=first_stage_layers,
        last_stage_layers=last_stage_layers,
        params_by_role=counts.by_role(),
        total_params=counts.total,
        active_params=counts.active,
        active_params_without_embedding=counts.active_without_embedding,
        active_matmul_params=counts.active_matmul,
        seq_len=seq_len,
        flops_per_token=flops,
        micro_batch_size=micro_batch_size,
        global_batch_tokens=global_batch_tokens,
        microbatches_per_step=model.microbatches(base, dp),
        steps=_ceil_div(int(tokens), global_batch_tokens),
        stages=stages,
        tokens=tokens,
        gpu_flops=gpu_flops,
        mfu=mfu,
        gpu_hours=gpu_hours,
        days=gpu_hours / gpus / 24,
        verdict=memory_verdict(model, base, stages, gpu_memory_gib),
    )
