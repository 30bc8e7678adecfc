"""The model + DDP + optimizer part of a trainer: megatron-core chunks, DDP, AdamW as in dots.llm1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dotsllm.compat import megatron_torch_adamw
from dotsllm.model import Dots1ModelConfig, build_model
from dotsllm.parallel import ParallelConfig

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW settings; defaults are the dots.llm1 pretraining values. The learning rate is the
    schedule's (``lr_schedule``), its one source."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "lr": "the learning rate lives in the schedule: set lr_schedule.peak_lr",
        "min_lr": "the learning rate lives in the schedule: set its end (lr_schedule.end_lr or the last phase's end_lr)",
    }

    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = True


def build_model_and_optimizer(
    model_cfg: Dots1ModelConfig,
    parallel: ParallelConfig,
    precision: str,
    settings: "OptimizerSettings",
    lr: float,
    config_overrides: dict[str, Any] | None = None,
    prefix_grouping: bool = False,
) -> tuple[list[torch.nn.Module], object]:
    """This rank's model chunks (one per virtual pipeline stage) in megatron DDP, the optimizer (at
    learning rate ``lr`` until the trainer sets each step's), and the schedules' hooks (loss scaling,
    grad finalization). ``config_overrides`` go to megatron's
    ``TransformerConfig`` (e.g. ``moe_enable_routing_replay``); ``prefix_grouping`` as
    :func:`~dotsllm.model.builder.build_model`."""
    from dotsllm.training.step import attach_grad_hooks

    if precision not in PRECISIONS:
        raise ValueError(f"training.precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    vpp = parallel.vpp or 1
    chunks = [
        build_model(
            model_cfg, params_dtype=PRECISIONS[precision], vp_stage=vp if vpp > 1 else None,
            config_overrides=config_overrides, prefix_grouping=prefix_grouping,
        )  # fmt: skip
        for vp in range(vpp)
    ]
    ddp_chunks = wrap_with_ddp(chunks, settings.use_distributed_optimizer)
    optimizer = build_optimizer(ddp_chunks, settings, lr)
    attach_grad_hooks(ddp_chunks, optimizer)
    return ddp_chunks, optimizer


def wrap_with_ddp(model_chunks: list[torch.nn.Module], use_distributed_optimizer: bool) -> list[torch.nn.Module]:
    """megatron-core ``DistributedDataParallel`` around each chunk, grads reduced in fp32."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=torch.cuda.is_available(),
        use_distributed_optimizer=use_distributed_optimizer,
    )
    return [
        DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk, disable_bucketing=i > 0)
        for i, chunk in enumerate(model_chunks)
    ]


def build_optimizer(ddp_chunks: list[torch.nn.Module], settings: OptimizerSettings, lr: float):
    """megatron-core's optimizer (a ChainedOptimizer over dense and expert params) at learning rate ``lr``."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    megatron_torch_adamw.apply()  # the distributed optimizer's checkpoint fixes, without TE/Apex
    model_config = ddp_chunks[0].config
    config = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_eps=settings.adam_eps,
        clip_grad=settings.clip_grad,
        bf16=model_config.bf16,
        fp16=model_config.fp16,
        params_dtype=model_config.params_dtype,
        use_distributed_optimizer=settings.use_distributed_optimizer,
    )
    return get_megatron_optimizer(config, ddp_chunks)


def set_lr_and_weight_decay(optimizer, lr: float, weight_decay: float) -> None:
    """This step's LR and weight decay on every param group, scaled by the group's ``lr_mult`` /
    ``wd_mult`` (megatron-core gives norms and biases ``wd_mult=0``), as its scheduler would."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)
