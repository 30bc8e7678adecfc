"""dotsllm pretraining: the dots.llm1 recipe on megatron-core, and the loop every trainer shares.

Run with ``dotsllm pretrain CONFIG [key=value ...]`` (under ``torchrun`` for more than one process).
:class:`Trainer` declares its cast at the top; each swappable part comes from one builder method,
which post-training trainers (SFT, GRPO) override: the data (:meth:`Trainer.build_data`), the
learning rate (:meth:`Trainer.build_lr_schedule`), the model chunks in DDP with their optimizer
(:meth:`Trainer.build_model`), the forward step with its per-token loss (:attr:`Trainer.forward_step`),
the train state (:meth:`Trainer.build_train_state`), and extra numbers logged per step
(:meth:`Trainer.batch_stats`).
What a checkpoint holds is :mod:`dotsllm.training.checkpoint_state`'s. The loop is :meth:`Trainer.train`,
one step of it :meth:`Trainer.step`.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from dotsllm.analysis.zero_sum import reduce_zero_sum_stats
from dotsllm.config_loading import apply_overrides, from_dict, load_yaml, to_dict
from dotsllm.model import Dots1ModelConfig
from dotsllm.parallel import ParallelConfig
from dotsllm.model.accounting import distributed_parameter_counts, training_flops_per_token
from dotsllm.parallel.setup import init_distributed
from dotsllm.training import checkpoint_state
from dotsllm.training.checkpoint import Checkpointer, CheckpointSettings
from dotsllm.training.checkpoint_state import TrainState
from dotsllm.training.data import DataConfig, PretrainData
from dotsllm.training.metrics import AuxLossMeter, ExpertLoadMeter, LoggingSettings, MetricsLogger
from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer, set_lr_and_weight_decay
from dotsllm.training.schedules import BatchRamp, WSDSchedule
from dotsllm.training.step import ForwardStep, evaluate, lm_forward_step, per_token_losses, train_step


@dataclass
class TrainingSettings:
    seq_length: int = 8192
    micro_batch_size: int = 1
    train_tokens: float = 11.2e12
    seed: int = 1234
    precision: str = "bf16"  # bf16 | fp32
    max_nonfinite_steps: int = 10  # steps skipped for a non-finite loss or gradient before the run stops
    eval_interval: int = 0  # steps between validation passes; 0 disables
    eval_samples: int = 0
    gpu_peak_flops: float = 989e12  # per GPU, dense bf16 (H100/H800), for MFU


@dataclass
class DiagnosticsSettings:
    """Zero-sum-learning metrics (arXiv 2506.05447): per-token loss changes of a held-out batch."""

    zsl_interval: int = 0  # steps between measurements; 0 disables
    zsl_samples: int = 16  # the held-out batch: the first validation samples, split over DP ranks


@dataclass
class PretrainConfig:
    run_dir: str
    model: str = "dots1-tiny"
    model_overrides: dict = field(default_factory=dict)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    lr_schedule: WSDSchedule = field(default_factory=lambda: WSDSchedule(peak_lr=3e-4, warmup_steps=0))
    batch_ramp: BatchRamp = field(default_factory=lambda: BatchRamp(points=({"from_tokens": 0, "global_batch_tokens": 8192},)))
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    diagnostics: DiagnosticsSettings = field(default_factory=DiagnosticsSettings)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> "PretrainConfig":
        return from_dict(cls, apply_overrides(load_yaml(path), list(overrides)), where=str(path))


class StopRequested:
    """SIGTERM / SIGUSR1 (SLURM preemption, ``--signal``) ask for a checkpoint and a clean exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def agreed(self) -> bool:
        """True on every rank once any rank received a signal."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=_device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


class Trainer:
    """The training loop: pretraining's parts by default; post-training trainers override builders."""

    # the parts a trainer swaps
    data: PretrainData  # build_data: the micro-batches of every step, validation batches
    model_chunks: list[torch.nn.Module]  # build_model: DDP-wrapped, one per virtual pipeline stage
    optimizer: Any  # build_model: megatron-core's optimizer over the chunks
    forward_step: ForwardStep = staticmethod(lm_forward_step)  # micro-batch -> (output, per-token loss)
    state: TrainState  # build_train_state: the progress a resume restores
    trainer_name = "pretrain"  # recorded in checkpoints
    # fixed parts
    checkpointer: Checkpointer
    metrics: MetricsLogger
    expert_load: ExpertLoadMeter
    aux_loss: AuxLossMeter
    stop: StopRequested

    def __init__(self, config: PretrainConfig):
        self.config = config
        self.run_dir = Path(config.run_dir)
        init_distributed(config.parallel, seed=config.training.seed)
        self.model_cfg = self.build_model_config()
        self.data = self.build_data()
        self.lr_schedule = self.build_lr_schedule()
        self.model_chunks, self.optimizer = self.build_model()
        self.state = self.build_train_state()
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", config.checkpoint)
        self.last_saved_step: int | None = None
        if (resume_from := self.checkpointer.resume_dir()) is not None:
            self.load_checkpoint(resume_from)

        self.expert_load = ExpertLoadMeter(self.model_chunks)
        moe_layers = [i + 1 for i, moe in enumerate(self.model_cfg.moe_layer_freq) if moe]
        self.aux_loss = AuxLossMeter(moe_layers, self.model_cfg.num_layers)
        counts = distributed_parameter_counts(self.model_chunks, self.model_cfg)
        self.flops_per_token = training_flops_per_token(
            counts.active_matmul, self.model_cfg.num_layers,
            self.model_cfg.num_attention_heads * self.model_cfg.head_dim, config.training.seq_length,
        )  # fmt: skip
        self.zsl_batches = self.build_zsl_batches()
        self.metrics = MetricsLogger(self.run_dir, config.logging, to_dict(config), enabled=_is_logging_rank())
        self.stop = StopRequested()
        self._window_start, self._window_tokens = time.perf_counter(), 0

    # ---- the swappable parts ------------------------------------------------------------------

    def build_model_config(self) -> Dots1ModelConfig:
        return Dots1ModelConfig.from_preset(self.config.model, **self.config.model_overrides)

    def build_data(self) -> PretrainData:
        config, train = self.config, self.config.training
        return PretrainData(
            config.data, self.model_cfg.vocab_size, train.seq_length, train.micro_batch_size, config.batch_ramp,
            train.train_tokens, train.eval_samples, train.seed, cache_dir=str(self.run_dir / "data_cache"),
        )  # fmt: skip

    def build_model(self) -> tuple[list[torch.nn.Module], Any]:
        return build_model_and_optimizer(
            self.model_cfg, self.config.parallel, self.config.training.precision, self.config.optimizer
        )

    def build_lr_schedule(self) -> Any:
        """The learning rate of each step: ``lr(step, tokens_seen)``."""
        return self.config.lr_schedule

    def build_train_state(self) -> TrainState:
        return TrainState()

    def batch_stats(self, step_batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Extra numbers of a step's batches to log (a trainer's override); ``tokens_per_s`` counts
        their ``real_tokens`` when given, else every slot."""
        return {}

    def build_zsl_batches(self) -> list[dict[str, torch.Tensor]]:
        """The held-out batch of the zero-sum-learning metrics (none when they are off)."""
        diagnostics = self.config.diagnostics
        batches = self.data.valid_batches(diagnostics.zsl_samples) if diagnostics.zsl_interval else []
        if diagnostics.zsl_interval and not batches:
            raise ValueError(
                "diagnostics.zsl_interval needs held-out samples: a validation share in data.split and "
                f"training.eval_samples >= diagnostics.zsl_samples ({diagnostics.zsl_samples}) x DP"
            )
        return batches

    # ---- the loop -----------------------------------------------------------------------------

    @property
    def tokens_seen(self) -> int:
        return self.state.consumed_samples * self.config.training.seq_length

    def train(self) -> str:
        """Train until the token budget or the data is used up, or a stop signal; the last step is
        always checkpointed. Returns why it ended."""
        self.metrics.event(f"training {self.model_cfg.name} from step {self.state.step} on {self.run_dir}")
        microbatches = self.data.microbatches(self.state.consumed_samples)
        while (reason := self.end_reason()) is None:
            self.step(microbatches)
            if self.stop.agreed():
                self.save_checkpoint("rolling")
                self.metrics.event(f"stop signal: saved at step {self.state.step}, exiting for requeue")
                return "stopped by signal"
        self.save_checkpoint("rolling")
        return reason

    def run(self) -> str:
        """:meth:`train`, then the reason it ended in the log, and :meth:`close` whatever happens."""
        try:
            reason = self.train()
            self.metrics.event(f"done: {reason} at step {self.state.step}")
        finally:
            self.close()
        return reason

    def close(self) -> None:
        """Release what the trainer holds (the metrics writers; a trainer's override adds its own)."""
        self.metrics.close()

    def end_reason(self) -> str | None:
        if self.tokens_seen >= self.config.training.train_tokens:
            return "token budget reached"
        if self.state.consumed_samples + self.data.global_batch_samples(self.state.consumed_samples) > len(self.data.train):
            return "data exhausted: not enough samples for the next global batch"
        return None

    def step(self, microbatches: Iterator[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """One optimizer step on the next global batch, then its logging, validation and checkpoint."""
        train = self.config.training
        tokens_before = self.tokens_seen
        global_samples = self.data.global_batch_samples(self.state.consumed_samples)
        num_microbatches = global_samples // (train.micro_batch_size * self.data.dp_size)
        step_batches = [next(microbatches) for _ in range(num_microbatches)]
        lr = self.lr_schedule.lr(self.state.step, tokens_before)
        set_lr_and_weight_decay(self.optimizer, lr, self.config.optimizer.weight_decay)
        zsl_interval = self.config.diagnostics.zsl_interval
        measure_zsl = zsl_interval and (self.state.step + 1) % zsl_interval == 0
        if measure_zsl:
            zsl_start, losses_before = time.perf_counter(), self._held_out_losses()
        result = train_step(
            self.model_chunks, self.optimizer, [iter(step_batches) for _ in self.model_chunks],
            num_microbatches, train.micro_batch_size, train.seq_length, self.forward_step,
        )  # fmt: skip
        if measure_zsl:
            zsl = self._zero_sum_record(losses_before, self._held_out_losses(), time.perf_counter() - zsl_start)
        self.state.step += 1
        self.state.consumed_samples += global_samples
        self.aux_loss.add_step(num_microbatches)
        stats = self.batch_stats(step_batches)
        self._window_tokens += stats.get("real_tokens", self.tokens_seen - tokens_before)
        if not result["update_applied"]:
            self.state.nonfinite_skipped += 1
            self.metrics.event(f"step {self.state.step}: non-finite loss or gradients, update skipped")
        if self.state.step % self.config.logging.log_interval == 0:
            self._log(result, lr, global_samples, _batch_checksum(step_batches), stats)
        if measure_zsl:
            self.metrics.log({"step": self.state.step, "tokens_seen": self.tokens_seen, **zsl})
        if self.state.nonfinite_skipped > train.max_nonfinite_steps:
            raise RuntimeError(
                f"{self.state.nonfinite_skipped} steps had a non-finite loss or gradients "
                f"(training.max_nonfinite_steps = {train.max_nonfinite_steps}); stopping"
            )
        if train.eval_interval and self.state.step % train.eval_interval == 0:
            self._log_validation()
        if kind := self.checkpointer.due(self.state.step, tokens_before, self.tokens_seen):
            self.save_checkpoint(kind)
        return result

    # ---- parts of the loop --------------------------------------------------------------------

    def _log(self, result: dict, lr: float, global_samples: int, batch_checksum: int, stats: dict) -> None:
        train = self.config.training
        elapsed = time.perf_counter() - self._window_start
        tokens_per_s = self._window_tokens / elapsed
        world, on_gpu = torch.distributed.get_world_size(), torch.cuda.is_available()
        expert_load = self.expert_load.collect()
        aux = self.aux_loss.collect()
        for layer, value in aux.items():
            expert_load.setdefault(layer, {})["seq_aux_loss"] = value
        self.metrics.log(
            {
                "step": self.state.step,
                "tokens_seen": self.tokens_seen,
                "loss": result["loss"],
                "lr": lr,
                "grad_norm": result["grad_norm"],
                "update_applied": result["update_applied"],
                "global_batch_tokens": global_samples * train.seq_length,
                "batch_checksum": batch_checksum,
                "tokens_per_s": tokens_per_s,
                "mfu": self.flops_per_token * tokens_per_s / (world * train.gpu_peak_flops) if on_gpu else None,
                "aux_loss": sum(aux.values()) / len(aux) if aux else None,  # mean over MoE layers, per step
                "nonfinite_skipped": self.state.nonfinite_skipped,
                "expert_load": expert_load,
                **stats,
            }
        )
        self._window_start, self._window_tokens = time.perf_counter(), 0

    def _held_out_losses(self) -> list[torch.Tensor]:
        train = self.config.training
        return per_token_losses(
            self.model_chunks, self.zsl_batches, train.micro_batch_size, train.seq_length, self.forward_step
        )

    def _zero_sum_record(self, before: list[torch.Tensor], after: list[torch.Tensor], seconds: float) -> dict:
        """D, M and the loss change over the held-out batch (on the last pipeline stage; its DP
        ranks hold distinct samples), and the seconds the two forward passes took."""
        from megatron.core import parallel_state

        if not before:  # not the last pipeline stage
            return {}
        mask = torch.cat([batch["loss_mask"].reshape(-1) for batch in self.zsl_batches]).to(before[0].device)
        stats = reduce_zero_sum_stats(
            torch.cat([b.reshape(-1) for b in before]), torch.cat([a.reshape(-1) for a in after]), mask,
            group=parallel_state.get_data_parallel_group(with_context_parallel=True),
        )  # fmt: skip
        return {**stats.as_record(), "zsl_seconds": seconds}

    def _log_validation(self) -> None:
        train = self.config.training
        if batches := self.data.valid_batches():
            logs = evaluate(self.model_chunks, batches, train.micro_batch_size, train.seq_length, self.forward_step)
            self.metrics.log({"step": self.state.step, "tokens_seen": self.tokens_seen, "valid_loss": logs["loss"]})

    # ---- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, kind: str) -> Path | None:
        """Save unless this step is already saved; returns the path written."""
        if self.last_saved_step == self.state.step:
            return None
        path = checkpoint_state.save(
            self.checkpointer, kind, self.model_chunks, self.optimizer, self.state,
            model=dataclasses.asdict(self.model_cfg), parallel=dataclasses.asdict(self.config.parallel),
            seq_length=self.config.training.seq_length, tokens_seen=self.tokens_seen, trainer=self.trainer_name,
        )  # fmt: skip
        self.last_saved_step = self.state.step
        self.metrics.event(f"saved {kind} checkpoint {path.name}")
        return path

    def load_checkpoint(self, ckpt_dir: Path) -> None:
        """Resume from ``ckpt_dir``: this run's own checkpoint restores everything; a ``load_from``
        one restores the weights, and the optimizer and progress as ``checkpoint.*`` asks."""
        settings = self.config.checkpoint
        own = ckpt_dir.parent == self.checkpointer.root
        meta = checkpoint_state.load(
            ckpt_dir, self.model_chunks, self.optimizer,
            parallel=dataclasses.asdict(self.config.parallel), with_optimizer=own or settings.load_optimizer,
        )  # fmt: skip
        if not (own or settings.load_progress):
            return
        seq = self.config.training.seq_length
        if meta.seq_length not in (None, seq):
            raise ValueError(
                f"{ckpt_dir} was trained at seq_length {meta.seq_length}, this run has {seq}: its step, "
                "samples seen and schedules do not carry over. To start counting from zero with its weights, "
                "run in a new run_dir with checkpoint.load_from and checkpoint.load_progress=false"
            )
        self.state = type(self.state)(**meta.train_state)
        self.last_saved_step = self.state.step if own else None


def _batch_checksum(batches: list[dict[str, torch.Tensor]]) -> int:
    """A position-weighted sum of the step's tokens over all DP ranks: which samples a step read."""
    from megatron.core import parallel_state

    total = torch.zeros(1, dtype=torch.float64, device=_device())
    for batch in batches:
        weights = torch.arange(1, batch["tokens"].numel() + 1, dtype=torch.float64, device=total.device)
        total += (batch["tokens"].reshape(-1).double() * weights).sum()
    torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return int(total.item())


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _is_logging_rank() -> bool:
    """The last rank: it holds the last pipeline stage, where the loss is."""
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1


def main(config_path: str, overrides: list[str]) -> int:
    Trainer(PretrainConfig.load(config_path, overrides)).run()
    return 0
