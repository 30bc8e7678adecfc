"""Pretraining: the dots.llm1 recipe on Megatron token shards (``dotsllm pretrain CONFIG [key=value ...]``).

The parts: the ``model`` preset (or a starting checkpoint's architecture); megatron-core ``GPTDataset``
blends over token shards, read in an order that resumes exactly (:class:`~dotsllm.training.data.PretrainData`);
the WSD learning rate by tokens seen and the global-batch ramp (:mod:`dotsllm.training.schedules`);
next-token steps (:class:`~dotsllm.training.lm_step.LMStep`) until ``training.train_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dotsllm.model import Dots1ModelConfig
from dotsllm.training.config import RunConfig, TrainingSettings
from dotsllm.training.data import DataConfig, PretrainData
from dotsllm.training.lm_step import DiagnosticsSettings, LMStep
from dotsllm.training.schedules import BatchRamp, WSDSchedule
from dotsllm.training.spec import Parts, TrainSpec
from dotsllm.training.step import lm_forward_step


@dataclass(kw_only=True)
class PretrainTrainingSettings(TrainingSettings):
    train_tokens: float = 11.2e12  # the token budget
    eval_samples: int = 0  # validation samples (from data.split's validation share); 0: none


@dataclass(kw_only=True)
class PretrainConfig(RunConfig):
    data: DataConfig = field(default_factory=DataConfig)
    training: PretrainTrainingSettings = field(default_factory=PretrainTrainingSettings)
    lr_schedule: WSDSchedule = field(default_factory=lambda: WSDSchedule(peak_lr=3e-4, warmup_steps=0))
    batch_ramp: BatchRamp = field(default_factory=lambda: BatchRamp(points=({"from_tokens": 0, "global_batch_tokens": 8192},)))
    diagnostics: DiagnosticsSettings = field(default_factory=DiagnosticsSettings)

    def budget(self) -> tuple[int, int]:
        """(steps, tokens seen) where ``training.train_tokens`` ends the run (its last step is whole,
        so the tokens can overshoot the budget by less than one global batch)."""
        seq_length = self.training.seq_length
        steps, samples = self.batch_ramp.samples_to_reach(self.training.train_tokens, seq_length, 1)
        return steps, samples * seq_length


def build_data(config: PretrainConfig, model_cfg: Dots1ModelConfig, tokenizer: None, run_dir: Path) -> PretrainData:
    """The shards' datasets, sized for the token budget (their own tokenizer or vocabulary: ``data.*``)."""
    train = config.training
    return PretrainData(
        config.data, model_cfg.vocab_size, train.seq_length, train.micro_batch_size, config.batch_ramp,
        train.train_tokens, train.eval_samples, train.seed, cache_dir=str(run_dir / "data_cache"),
    )  # fmt: skip


def build_step(parts: Parts) -> LMStep:
    config = parts.config
    return LMStep(
        parts, lm_forward_step, diagnostics=config.diagnostics, train_tokens=config.training.train_tokens,
        data_end="data exhausted: not enough samples for the next global batch",
    )  # fmt: skip


PRETRAIN = TrainSpec(name="pretrain", config=PretrainConfig, build_data=build_data, build_step=build_step)
