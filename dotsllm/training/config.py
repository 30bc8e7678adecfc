"""The sections every run config shares: :class:`RunConfig`, which each recipe's config extends.

A run config is YAML with dotted ``key=value`` overrides on the command line, typed strictly by
:mod:`dotsllm.config_loading`. A recipe (``dotsllm/recipes/``) adds its own sections (its data, its
learning-rate schedule, GRPO's rollout and rewards, ...) and may narrow ``training`` to a subclass of
:class:`TrainingSettings` with the fields only it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self

from dotsllm.config_loading import apply_overrides, from_dict, load_yaml
from dotsllm.parallel import ParallelConfig
from dotsllm.training.checkpoint import CheckpointSettings
from dotsllm.training.metrics import LoggingSettings
from dotsllm.training.optimizer import OptimizerSettings


@dataclass(kw_only=True)
class TrainingSettings:
    seq_length: int = 8192
    micro_batch_size: int = 1
    seed: int = 1234  # model init, data order and every sample's seed derive from it
    precision: Literal["bf16", "fp32"] = "bf16"
    max_nonfinite_steps: int = 10  # steps skipped for a non-finite loss or gradient before the run stops
    eval_interval: int = 0  # steps between validations (the recipe's: loss on held-out data, GRPO's accuracy); 0: none
    gpu_peak_flops: float = 989e12  # per GPU, dense bf16 (H100/H800), for MFU


@dataclass(kw_only=True)
class RunConfig:
    run_dir: str
    # A preset name (dotsllm/model/presets) or YAML path. A run that starts from a checkpoint (its own
    # latest, or checkpoint.load_from) trains that checkpoint's architecture: `model` may then be left
    # out, and a preset that differs from it is an error.
    model: str | None = None
    model_overrides: dict = field(default_factory=dict)  # Dots1ModelConfig fields over the preset's or checkpoint's
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> Self:
        """The config of YAML file ``path`` with dotted ``key=value`` ``overrides`` applied in order."""
        return from_dict(cls, apply_overrides(load_yaml(path), list(overrides)), where=str(path))
