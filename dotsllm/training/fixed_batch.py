"""Train a preset on one fixed batch: the quickest end-to-end check of model + optimizer + schedule."""

from __future__ import annotations

import itertools
import time
from typing import Callable

import torch

from dotsllm.model import Dots1ModelConfig

from dotsllm.parallel import ParallelConfig
from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer
from dotsllm.training.step import train_step


def make_lm_batch(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Next-token batch from a [b, s+1] token tensor."""
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    b, s = inputs.shape
    return {
        "tokens": inputs,
        "labels": labels,
        "loss_mask": torch.ones(b, s),
        "position_ids": torch.arange(s).expand(b, s).contiguous(),
    }


def train_on_fixed_batch(
    model_cfg: Dots1ModelConfig,
    steps: int,
    *,
    micro_batch_size: int = 4,
    seq_length: int = 64,
    seed: int = 1234,
    lr: float = 3e-3,
    settings: OptimizerSettings = OptimizerSettings(weight_decay=0.0, use_distributed_optimizer=False),
    on_step: Callable[[int, dict], None] | None = None,
) -> list[float]:
    """Run ``steps`` optimizer steps on one random batch; returns the loss of every step.

    ``parallel_state`` must be initialized (``dotsllm.parallel.setup.init_distributed``).
    """
    ddp_chunks, optimizer = build_model_and_optimizer(model_cfg, ParallelConfig(), "fp32", settings, lr)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model_cfg.vocab_size, (micro_batch_size, seq_length + 1), generator=generator)
    batch = make_lm_batch(tokens)
    losses = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        metrics = train_step(ddp_chunks, optimizer, itertools.repeat(batch), 1, micro_batch_size, seq_length)
        metrics["tokens_per_s"] = micro_batch_size * seq_length / (time.perf_counter() - start)
        losses.append(metrics["loss"])
        if on_step:
            on_step(step, metrics)
    return losses
