"""Supervised fine-tuning on the dots chat template (``dotsllm sft CONFIG [key=value ...]``).

The parts: the starting checkpoint's architecture (``checkpoint.load_from``: pretraining or
``import-hf``; weights only in the shipped configs); the tokenizer with the chat tokens
(``data.tokenizer``); conversations from weighted sources packed into rows, read in an order that
resumes exactly (:class:`~dotsllm.posttrain.sft.data.SFTData`); a cosine learning rate over the run's
steps; next-token steps (:class:`~dotsllm.training.lm_step.LMStep`) whose forward keeps each packed
conversation to itself, logging padding numbers, until ``data.epochs`` are done.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from dotsllm.model import Dots1ModelConfig, resolve_backend
from dotsllm.chat_template import ChatTemplate
from dotsllm.posttrain.sft.data import SFTData, SFTDataConfig
from dotsllm.posttrain.sft.forward import packing_stats, sft_forward_step
from dotsllm.tokenizer import Tokenizer
from dotsllm.training.config import RunConfig, TrainingSettings
from dotsllm.training.lm_step import DiagnosticsSettings, LMStep
from dotsllm.training.schedules import CosineSchedule
from dotsllm.training.spec import Parts, TrainSpec


@dataclass(kw_only=True)
class SFTTrainingSettings(TrainingSettings):
    global_batch_size: int = 64  # rows per optimizer step (the validation loss is over all of data.valid)


@dataclass(kw_only=True)
class SFTConfig(RunConfig):
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    training: SFTTrainingSettings = field(default_factory=SFTTrainingSettings)
    lr_schedule: CosineSchedule = field(default_factory=CosineSchedule)  # total_steps: the run's, from the data
    diagnostics: DiagnosticsSettings = field(default_factory=DiagnosticsSettings)


def build_tokenizer(config: SFTConfig) -> Tokenizer:
    if not config.data.tokenizer:
        raise ValueError("data.tokenizer: SFT needs the tokenizer (with the dots chat tokens) of the model")
    return Tokenizer(config.data.tokenizer)


def errors_file(config: SFTConfig, run_dir: Path) -> Path:
    return Path(config.data.errors_file or run_dir / "sft_errors.jsonl")


def build_data(config: SFTConfig, model_cfg: Dots1ModelConfig, tokenizer: Tokenizer, run_dir: Path) -> SFTData:
    train = config.training
    template = ChatTemplate(tokenizer, config.data.default_system)
    return SFTData(
        config.data, template, train.seq_length, train.micro_batch_size, train.global_batch_size, train.seed,
        errors_file(config, run_dir),
    )  # fmt: skip


def build_lr_schedule(config: SFTConfig, data: SFTData) -> CosineSchedule:
    return dataclasses.replace(config.lr_schedule, total_steps=data.steps)


def build_step(parts: Parts) -> LMStep:
    """Next-token steps over packed rows; the data report in the log and in ``RUN_DIR/sft_data.json``."""
    config, report = parts.config, parts.data.report
    parts.metrics.event(
        f"sft data: {report['records']} records → {report['samples']} samples in {report['rows']} rows "
        f"(packing efficiency {report['packing_efficiency']:.3f}), {report['rejected']} rejected "
        f"({', '.join(f'{k[9:]} {v}' for k, v in report.items() if k.startswith('rejected_')) or 'none'}; "
        f"listed in {errors_file(config, parts.run_dir)}), {report.get('truncated', 0)} truncated; {report['steps']} steps"
    )
    if torch.distributed.get_rank() == 0:
        (parts.run_dir / "sft_data.json").write_text(json.dumps(report, indent=1) + "\n")
    return LMStep(
        parts, partial(sft_forward_step, thd=resolve_backend() == "te"), diagnostics=config.diagnostics,
        data_end=f"{config.data.epochs} epoch(s) done", batch_stats=packing_stats,
    )  # fmt: skip


SFT = TrainSpec(
    name="sft", config=SFTConfig, build_data=build_data, build_step=build_step, build_tokenizer=build_tokenizer,
    build_lr_schedule=build_lr_schedule,
)  # fmt: skip
