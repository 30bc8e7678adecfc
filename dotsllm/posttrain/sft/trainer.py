"""``dotsllm sft CONFIG [key=value ...]``: supervised fine-tuning on the dots chat template.

:class:`SFTTrainer` is pretraining's :class:`~dotsllm.train.Trainer` with SFT's data (packed rows of
conversations, :class:`~dotsllm.posttrain.sft.data.SFTData`), a forward step that keeps each packed
conversation to itself, a cosine learning rate over the run's steps, and per-step padding numbers in
the log. Everything else — megatron DDP and optimizer in any layout, the per-token loss over the
global batch, checkpoints, resume, signals — is the shared loop's. A run starts from a pretraining or
``import-hf`` checkpoint through ``checkpoint.load_from`` (weights only in the shipped configs); a
requeued run resumes from its own latest.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dotsllm.config_loading import apply_overrides, from_dict, load_yaml
from dotsllm.parallel import ParallelConfig
from dotsllm.posttrain.chat import ChatTemplate
from dotsllm.posttrain.sft.data import SFTData, SFTDataConfig
from dotsllm.posttrain.sft.packing import block_causal_mask, thd_packed_seq_params
from dotsllm.tokenizer import Tokenizer
from dotsllm.train import DiagnosticsSettings, Trainer, TrainingSettings
from dotsllm.training.checkpoint import CheckpointSettings
from dotsllm.training.metrics import LoggingSettings
from dotsllm.training.optimizer import OptimizerSettings
from dotsllm.training.schedules import CosineSchedule
from dotsllm.training.step import masked_token_loss


@dataclass
class SFTTrainingSettings(TrainingSettings):
    global_batch_size: int = 64  # rows per optimizer step
    train_tokens: float = float("inf")  # SFT ends when its epochs are done


@dataclass
class SFTConfig:
    run_dir: str
    model: str = "dots1-tiny"
    model_overrides: dict = field(default_factory=dict)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    training: SFTTrainingSettings = field(default_factory=SFTTrainingSettings)
    optimizer: OptimizerSettings = field(default_factory=lambda: OptimizerSettings(lr=5e-6, min_lr=1e-6))
    lr_schedule: CosineSchedule = field(default_factory=CosineSchedule)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    diagnostics: DiagnosticsSettings = field(default_factory=DiagnosticsSettings)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> "SFTConfig":
        return from_dict(cls, apply_overrides(load_yaml(path), list(overrides)), where=str(path))


def sft_forward_step(data_iterator, model: torch.nn.Module, thd: bool = False):
    """Next-token loss of a micro-batch of packed rows, each conversation attending only to itself.

    On megatron's local layers a block-diagonal causal mask ``[b, 1, s, s]`` does it; with Transformer
    Engine (``thd``) the micro-batch is laid out as one row ``[1, b*s]`` with THD ``PackedSeqParams``
    (``cu_seqlens`` at each conversation and padding), so no O(s²) mask is built. Positions restart
    per conversation either way.
    """
    batch = next(data_iterator)
    tokens, labels, positions, loss_mask = (batch[k] for k in ("tokens", "labels", "position_ids", "loss_mask"))
    if thd:
        flat = [t.reshape(1, -1) for t in (tokens, labels, positions, loss_mask)]
        tokens, labels, positions, loss_mask = flat
        output = model(tokens, positions, None, labels=labels, packed_seq_params=thd_packed_seq_params(batch["segment_ids"]))
    else:
        output = model(tokens, positions, block_causal_mask(batch["segment_ids"]), labels=labels)
    return output, partial(masked_token_loss, loss_mask)


class SFTTrainer(Trainer):
    """Supervised fine-tuning: the shared loop with SFT's data, forward step and learning rate."""

    data: SFTData
    trainer_name = "sft"

    def __init__(self, config: SFTConfig):
        super().__init__(config)
        from dotsllm.model.builder import resolve_backend

        self.forward_step = partial(sft_forward_step, thd=resolve_backend() == "te")
        report = self.data.report
        self.metrics.event(
            f"sft data: {report['records']} records → {report['samples']} samples in {report['rows']} rows "
            f"(packing efficiency {report['packing_efficiency']:.3f}), {report['rejected']} rejected "
            f"({', '.join(f'{k[9:]} {v}' for k, v in report.items() if k.startswith('rejected_')) or 'none'}; "
            f"listed in {self.errors_file}), {report.get('truncated', 0)} truncated; {report['steps']} steps"
        )
        if torch.distributed.get_rank() == 0:
            (self.run_dir / "sft_data.json").write_text(json.dumps(report, indent=1) + "\n")

    @property
    def errors_file(self) -> Path:
        return Path(self.config.data.errors_file or self.run_dir / "sft_errors.jsonl")

    def build_data(self) -> SFTData:
        config, train = self.config, self.config.training
        if not config.data.tokenizer:
            raise ValueError("data.tokenizer: SFT needs the tokenizer (with the dots chat tokens) of the model")
        tokenizer = Tokenizer(config.data.tokenizer)
        if tokenizer.vocab_size > self.model_cfg.vocab_size:
            raise ValueError(
                f"tokenizer {config.data.tokenizer} has {tokenizer.vocab_size} tokens, the model {self.model_cfg.vocab_size}"
            )
        template = ChatTemplate(tokenizer, config.data.default_system)
        return SFTData(
            config.data, template, train.seq_length, train.micro_batch_size, train.global_batch_size, train.seed,
            self.errors_file,
        )  # fmt: skip

    def build_lr_schedule(self) -> CosineSchedule:
        return dataclasses.replace(self.config.lr_schedule, total_steps=self.data.steps)

    def end_reason(self) -> str | None:
        if self.state.consumed_samples + self.data.global_batch_size > len(self.data.train):
            return f"{self.config.data.epochs} epoch(s) done"
        return None

    def batch_stats(self, step_batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Real (non-padding) tokens of the global batch, padding fraction and packing efficiency."""
        from megatron.core import parallel_state

        counts = torch.zeros(2, dtype=torch.float64, device=step_batches[0]["tokens"].device)
        for batch in step_batches:
            counts += torch.stack([(batch["segment_ids"] >= 0).sum(), torch.tensor(batch["segment_ids"].numel())]).double().to(counts.device)
        torch.distributed.all_reduce(counts, group=parallel_state.get_data_parallel_group())
        real, capacity = counts.tolist()
        return {"real_tokens": int(real), "packing_efficiency": real / capacity, "padding_fraction": 1 - real / capacity}


def main(config_path: str, overrides: list[str]) -> int:
    SFTTrainer(SFTConfig.load(config_path, overrides)).run()
    return 0
