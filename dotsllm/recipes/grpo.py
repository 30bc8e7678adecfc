"""GRPO with verifiable rewards from a checkpoint (``dotsllm grpo CONFIG [key=value ...]``).

The parts: the starting checkpoint's architecture (``checkpoint.load_from``: SFT, pretraining or
``import-hf``; a requeued run resumes from its own latest) with the routers' RL settings (``moe``); the
tokenizer with the chat tokens; the prompt records, drawn in an order that resumes exactly
(:class:`~dotsllm.posttrain.grpo.prompts.PromptSet`); the WSD learning rate; the model built for router
replay and prefix grouping as configured; and GRPO's step (:class:`~dotsllm.posttrain.grpo.step.GRPOStep`:
collect → score → log-prob pass → update) for ``training.steps`` steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from dotsllm.model import Dots1ModelConfig
from dotsllm.posttrain.grpo.config import (
    AdvantageSettings,
    DynamicSamplingSettings,
    EvalSettings,
    GRPOCheckpointSettings,
    GRPOOptimizerSettings,
    GRPOTrainingSettings,
    MoESettings,
    UpdateSettings,
)
from dotsllm.posttrain.grpo.losses import LossSettings
from dotsllm.posttrain.grpo.prompts import PromptSet, PromptSettings
from dotsllm.posttrain.grpo.rewards import RewardSettings
from dotsllm.posttrain.grpo.rollout import RolloutSettings
from dotsllm.posttrain.grpo.step import GRPOState, GRPOStep
from dotsllm.tokenizer import Tokenizer
from dotsllm.training.config import RunConfig
from dotsllm.training.optimizer import build_model_and_optimizer
from dotsllm.training.schedules import WSDSchedule
from dotsllm.training.spec import LRSchedule, TrainSpec, run_model_config


@dataclass(kw_only=True)
class GRPOConfig(RunConfig):
    tokenizer: str | None = None  # SentencePiece .model or tokenizer.json with the dots chat tokens (required)
    eod_token: str | None = None
    training: GRPOTrainingSettings = field(default_factory=GRPOTrainingSettings)
    optimizer: GRPOOptimizerSettings = field(default_factory=GRPOOptimizerSettings)
    lr_schedule: WSDSchedule = field(default_factory=lambda: WSDSchedule(peak_lr=1e-6, warmup_steps=0))
    checkpoint: GRPOCheckpointSettings = field(default_factory=GRPOCheckpointSettings)
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
        labels = [spec.label for spec in self.rewards.functions]
        if self.dynamic_sampling.reward is not None and self.dynamic_sampling.reward not in labels:
            raise ValueError(f"dynamic_sampling.reward is {self.dynamic_sampling.reward!r}, not one of the rewards {labels}")
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

    @property
    def filter_reward(self) -> str | None:
        """The reward whose zero variance in a group drops it (dynamic sampling); None: the weighted sum."""
        return self.dynamic_sampling.reward or self.rewards.accuracy

    @property
    def prefix_grouping(self) -> bool:
        """Rows prefix-grouped (a group of one shares no prompt); the models are built for it."""
        return self.training.prefix_grouping and self.rollout.group_size > 1


def build_model_config(config: GRPOConfig, start: Path | None) -> Dots1ModelConfig:
    """The checkpoint's architecture (the one rule), with the routers' RL settings: the expert-bias
    update rate and the aux-loss coefficient (None: the checkpoint's)."""
    model = run_model_config(config, start)
    rl = {"moe_router_bias_update_rate": config.moe.expert_bias_update_rate}
    if config.moe.aux_loss_coeff is not None:
        rl["moe_aux_loss_coeff"] = config.moe.aux_loss_coeff
    return dataclasses.replace(model, **rl)


def build_tokenizer(config: GRPOConfig) -> Tokenizer:
    return Tokenizer(config.tokenizer, config.eod_token)


def build_data(config: GRPOConfig, model_cfg: Dots1ModelConfig, tokenizer: Tokenizer, run_dir: Path) -> PromptSet:
    return PromptSet(config.prompts, tokenizer, config.max_prompt_tokens, config.training.seed)


def build_model(config: GRPOConfig, model_cfg: Dots1ModelConfig, lr_schedule: LRSchedule):
    """The model chunks in DDP and the optimizer, recording expert choices for router replay and with
    the prefix-grouped core attention when those are on."""
    overrides = {"moe_enable_routing_replay": True} if config.moe.router_replay else None
    return build_model_and_optimizer(
        model_cfg, config.parallel, config.training.precision, config.optimizer, lr_schedule.peak_lr,
        config_overrides=overrides, prefix_grouping=config.prefix_grouping,
    )  # fmt: skip


GRPO = TrainSpec(
    name="grpo", config=GRPOConfig, build_data=build_data, build_step=GRPOStep, build_tokenizer=build_tokenizer,
    build_model_config=build_model_config, build_model=build_model, state=GRPOState, needs_checkpoint=True,
)  # fmt: skip
