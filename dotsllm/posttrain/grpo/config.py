"""The sections of GRPO's run config (:class:`~dotsllm.recipes.grpo.GRPOConfig`) that other recipes lack."""

from __future__ import annotations

from dataclasses import dataclass

from dotsllm.posttrain.grpo.advantages import Scaling
from dotsllm.training.checkpoint import CheckpointSettings
from dotsllm.training.config import TrainingSettings
from dotsllm.training.optimizer import OptimizerSettings


@dataclass(frozen=True)
class GRPOOptimizerSettings(OptimizerSettings):
    weight_decay: float = 0.0


@dataclass
class GRPOCheckpointSettings(CheckpointSettings):
    """GRPO starts from ``load_from``'s weights (SFT, pretraining or an import): a fresh optimizer, step 0."""

    save_every_steps: int = 50
    load_optimizer: bool = False
    load_progress: bool = False


@dataclass(kw_only=True)
class GRPOTrainingSettings(TrainingSettings):
    steps: int = 100  # rollout steps (each: a rollout batch and its updates)
    seq_length: int = 2048  # a training row: prompt + response; prompts get seq_length − max_new_tokens
    micro_batch_size: int = 4  # rows per micro-batch of the log-prob and training forwards
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
    scale: Scaling = "group"  # group (GRPO) | batch | none (Dr.GRPO: no std); see advantages.py
    eps: float = 1e-6


@dataclass
class DynamicSamplingSettings:
    """DAPO's dynamic sampling: a group whose verifier reward is the same for all its responses (all
    right or all wrong: no signal) is dropped and more prompts drawn."""

    enabled: bool = False
    max_tries: int = 3  # rollouts per step at most; the step trains on what it has then
    # the reward whose variance decides (a name in rewards.functions); null: rewards.accuracy, or the
    # weighted sum of every reward when there is no accuracy reward
    reward: str | None = None


@dataclass
class MoESettings:
    router_replay: bool = False  # training forwards reuse the rollout's expert choices (RouterReplay)
    expert_bias_update_rate: float = 0.0  # the routers' bias step per update; 0 freezes it during RL
    aux_loss_coeff: float | None = None  # the sequence aux loss's coefficient (None: the checkpoint's)


@dataclass
class EvalSettings:
    """Greedy held-out accuracy (the accuracy reward) before training, every ``training.eval_interval``
    steps and at the end."""

    path: str | None = None  # prompt records, as prompts.path
    samples: int = 0  # the first N records (0: all)
    batch_size: int = 32  # prompts per data-parallel rank per generation call
