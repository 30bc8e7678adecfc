"""A recipe as typed parts that the one :class:`~dotsllm.train.Trainer` composes (torchtitan's ``TrainSpec``).

A recipe (pretraining, SFT, GRPO: one file each in :mod:`dotsllm.recipes`) is a :class:`TrainSpec`: its
config class and the builders of its parts. The trainer builds them in this order, each from what the
previous ones made: the model config (the one rule of :func:`run_model_config`), the tokenizer, the data,
the learning-rate schedule, the model chunks with their optimizer, the train state, and last the *step
strategy* (:class:`StepStrategy`), which turns the train state into the next optimizer step(s), says
when training is over and what validation measures. Process groups, the loop, checkpoints, stop
signals, the MoE meters, metrics and logging are the trainer's, the same for every recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from dotsllm.model import Dots1ModelConfig
from dotsllm.tokenizer import Tokenizer
from dotsllm.training.checkpoint_state import CheckpointMeta, TrainState
from dotsllm.training.config import RunConfig
from dotsllm.training.metrics import MetricsLogger
from dotsllm.training.optimizer import build_model_and_optimizer

Validation = Literal["start", "step", "end"]  # before the first step of a fresh run, after a step, after the last


class LRSchedule(Protocol):
    peak_lr: float

    def lr(self, step: int, tokens_seen: float) -> float:
        """The learning rate of optimizer step ``step`` (0-based), taken after ``tokens_seen`` tokens."""


@dataclass
class StepOutcome:
    """What one step of a strategy did: the trainer advances the train state, meters and log by it."""

    record: dict[str, Any]  # the step's metrics, named by the recipe (loss, grad_norm, reward_mean, ...)
    samples: int  # data consumed: TrainState.consumed_samples moves by it
    tokens: int  # tokens trained on: TrainState.tokens_seen moves by it
    trained_tokens: int  # tokens the step's forward-backward passes processed (throughput, MFU)
    microbatches: int  # forward-backward passes run (the MoE aux-loss meter averages over them)
    skipped_updates: int = 0  # optimizer updates skipped for a non-finite loss or gradients
    counters: dict[str, int] = field(default_factory=dict)  # added to the recipe's TrainState fields of these names
    records: list[dict[str, Any]] = field(default_factory=list)  # further records of this step (zero-sum learning)


class StepStrategy(Protocol):
    """A recipe's step: ``LMStep`` (pretraining, SFT) or GRPO's collect → score → log-prob pass → update."""

    def end_reason(self, state: TrainState) -> str | None:
        """Why training is over before the next step (budget, data or steps used up), or None."""

    def step(self, state: TrainState, lr: float) -> StepOutcome:
        """One step from ``state`` (read, not changed) at learning rate ``lr`` (already set)."""

    def validate(self, state: TrainState, when: Validation) -> dict[str, Any] | None:
        """The validation record due ``when`` (e.g. the held-out loss every ``training.eval_interval``
        steps), or None when none is."""

    def close(self) -> None:
        """Release what the strategy holds (worker processes)."""


@dataclass(frozen=True)
class Parts:
    """What the trainer built before the step strategy, handed to the recipe's ``build_step``."""

    config: RunConfig
    run_dir: Path
    model_cfg: Dots1ModelConfig
    tokenizer: Tokenizer | None
    data: Any
    model_chunks: list[torch.nn.Module]
    optimizer: Any
    metrics: MetricsLogger
    start: Path | None  # the checkpoint the run started from: its own latest, or checkpoint.load_from


def run_model_config(config: RunConfig, start: Path | None) -> Dots1ModelConfig:
    """The model a run trains, by one rule for every recipe: a run that starts from a checkpoint
    trains its architecture; a fresh one the ``model`` preset; ``model_overrides`` apply on top of
    either. A preset that differs from the checkpoint's architecture is an error."""
    overrides = config.model_overrides
    preset = Dots1ModelConfig.from_preset(config.model, **overrides) if config.model else None
    if start is None:
        if preset is None:
            raise ValueError("model: name a preset (e.g. model=dots1-tiny), or start from a checkpoint (checkpoint.load_from)")
        return preset
    stored = CheckpointMeta.read(start).model_config(**overrides)
    if preset is not None and (differences := preset.architecture_differences(stored)):
        raise ValueError(
            f"model: preset {config.model!r} is not the architecture of checkpoint {start} "
            f"({'; '.join(differences)}): leave `model` out to train the checkpoint's"
        )
    return stored


def build_model_of_run(config: RunConfig, model_cfg: Dots1ModelConfig, lr_schedule: LRSchedule):
    """Model chunks in megatron DDP and the optimizer, as the run's parallel, precision and optimizer
    sections say (pretraining's and SFT's model part)."""
    return build_model_and_optimizer(
        model_cfg, config.parallel, config.training.precision, config.optimizer, lr_schedule.peak_lr
    )


def no_tokenizer(config: RunConfig) -> None:
    """For a recipe whose data part reads its own vocabulary (pretraining's token shards)."""
    return None


def schedule_of_run(config: RunConfig, data: Any) -> LRSchedule:
    """The config's ``lr_schedule`` as it is."""
    return config.lr_schedule


@dataclass(frozen=True)
class TrainSpec:
    """A recipe: its config class, and a builder for each part the trainer composes."""

    name: str  # recorded in checkpoints and logs: pretrain | sft | grpo
    config: type[RunConfig]
    build_data: Callable[[RunConfig, Dots1ModelConfig, Tokenizer | None, Path], Any]  # (config, model, tokenizer, run_dir)
    build_step: Callable[[Parts], StepStrategy]
    build_tokenizer: Callable[[RunConfig], Tokenizer | None] = no_tokenizer
    build_lr_schedule: Callable[[RunConfig, Any], LRSchedule] = schedule_of_run  # (config, data)
    build_model_config: Callable[[RunConfig, Path | None], Dots1ModelConfig] = run_model_config
    build_model: Callable[[RunConfig, Dots1ModelConfig, LRSchedule], tuple[list[torch.nn.Module], Any]] = build_model_of_run
    state: type[TrainState] = TrainState
    needs_checkpoint: bool = False  # a fresh run must name checkpoint.load_from
