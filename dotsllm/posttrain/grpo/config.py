"""The ``dotsllm grpo`` run config: one dataclass per section, loaded from YAML with dotted overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dotsllm.config_loading import apply_overrides, from_dict, load_yaml
from dotsllm.parallel import ParallelConfig
from dotsllm.posttrain.grpo.advantages import SCALINGS
from dotsllm.posttrain.grpo.losses import LossSettings
from dotsllm.posttrain.grpo.prompts import PromptSettings
from dotsllm.posttrain.grpo.rewards import RewardSettings
from dotsllm.posttrain.grpo.rollout import RolloutSettings
from dotsllm.training.checkpoint import CheckpointSettings
from dotsllm.training.metrics import LoggingSettings
from dotsllm.training.optimizer import OptimizerSettings
from dotsllm.training.schedules import WSDSchedule


@dataclass(frozen=True)
class GRPOOptimizerSettings(OptimizerSettings):
    lr: float = 1e-6
    weight_decay: float = 0.0


@dataclass
class GRPOCheckpointSettings(CheckpointSettings):
    """GRPO starts from ``load_from``'s weights (SFT, pretraining or an import): a fresh optimizer, step 0."""

    save_every_steps: int = 50
    load_optimizer: bool = False
    load_progress: bool = False


@dataclass
class GRPOTrainingSettings:
    steps: int = 100  # rollout steps (each: a rollout batch and its updates)
    seq_length: int = 2048  # a training row: prompt + response; prompts get seq_length − max_new_tokens
    micro_batch_size: int = 4  # rows per micro-batch of the log-prob and training forwards
    seed: int = 1234  # model init, prompt order and every sample's seed derive from it
    precision: str = "bf16"  # bf16 | fp32
    max_nonfinite_steps: int = 10
    # each prompt encoded once for its group (Prefix Grouper; prefix_grouping.py): one row [P; R1; …; RG]
    # per group, the same loss and gradients (its own core attention, no s×s mask); needs the MoE aux
    # loss and expert-bias updates off
    prefix_grouping: bool = False


@dataclass
class UpdateSettings:
    """Optimizer updates per rollout batch, each against the batch's old log-probs."""

    mini_batches: int = 1  # updates per epoch; each takes 1/mini_batches of the samples (shuffled)
    epochs: int = 1


@dataclass
class AdvantageSettings:
    scale: str = "group"  # group (GRPO) | batch | none (Dr.GRPO: no std); see advantages.py
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.scale not in SCALINGS:
            raise ValueError(f"advantages.scale must be one of {SCALINGS}, not {self.scale!r}")


@dataclass
class DynamicSamplingSettings:
    """DAPO's dynamic sampling: groups whose rewards are all equal are dropped, more prompts drawn."""

    enabled: bool = False
    max_tries: int = 3  # rollouts per step at most; the step trains on what it has then


@dataclass
class MoESettings:
    router_replay: bool = False  # training forwards reuse the rollout's expert choices (RouterReplay)
    expert_bias_update_rate: float = 0.0  # the routers' bias step per update; 0 freezes it during RL
    aux_loss_coeff: float | None = None  # the sequence aux loss's coefficient (None: the checkpoint's)


@dataclass
class EvalSettings:
    """Greedy held-out accuracy (the accuracy reward) before training, every ``interval`` steps and at the end."""

    path: str | None = None  # prompt records, as prompts.path
    interval: int = 0  # 0: only before and after training
    samples: int = 0  # the first N records (0: all)
    batch_size: int = 32  # prompts per data-parallel rank per generation call


@dataclass
class GRPOConfig:
    run_dir: str
    tokenizer: str  # SentencePiece .model or tokenizer.json with the dots chat tokens
    eod_token: str | None = None
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    model_overrides: dict = field(default_factory=dict)  # Dots1ModelConfig fields over the checkpoint's
    training: GRPOTrainingSettings = field(default_factory=GRPOTrainingSettings)
    optimizer: GRPOOptimizerSettings = field(default_factory=GRPOOptimizerSettings)
    lr_schedule: WSDSchedule = field(default_factory=lambda: WSDSchedule(peak_lr=1e-6, warmup_steps=0))
    checkpoint: GRPOCheckpointSettings = field(default_factory=GRPOCheckpointSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    rewards: RewardSettings = field(default_factory=RewardSettings)
    objective: LossSettings = field(default_factory=LossSettings)
    advantages: AdvantageSettings = field(default_factory=AdvantageSettings)
    updates: UpdateSettings = field(default_factory=UpdateSettings)
    dynamic_sampling: DynamicSamplingSettings = field(default_factory=DynamicSamplingSettings)
    moe: MoESettings = field(default_factory=MoESettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        if not self.tokenizer:
            raise ValueError("tokenizer: name the tokenizer (.model or tokenizer.json) with the dots chat tokens")
        if self.training.seq_length <= self.rollout.max_new_tokens:
            raise ValueError(
                f"training.seq_length ({self.training.seq_length}) must exceed rollout.max_new_tokens "
                f"({self.rollout.max_new_tokens}): the rest is the prompt budget"
            )
        if self.training.prefix_grouping and (self.moe.aux_loss_coeff != 0 or self.moe.expert_bias_update_rate != 0):
            raise ValueError(
                "training.prefix_grouping needs moe.aux_loss_coeff: 0 and moe.expert_bias_update_rate: 0 "
                f"(got {self.moe.aux_loss_coeff} and {self.moe.expert_bias_update_rate}; None is the checkpoint's "
                "coefficient): a grouped row routes its prompt once, the standard rows G times, so megatron's "
                "per-row sequence aux loss and expert-load counts would differ (see prefix_grouping.py)"
            )

    @property
    def max_prompt_tokens(self) -> int:
        return self.training.seq_length - self.rollout.max_new_tokens

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> "GRPOConfig":
        return from_dict(cls, apply_overrides(load_yaml(path), list(overrides)), where=str(path))
