"""dotsllm pretraining: the dots.llm1 recipe on megatron-core.

Run with ``dotsllm pretrain CONFIG [key=value ...]`` (under ``torchrun`` for more than one process).
The cast, in the order it is built: process groups → tokenizer + shards → model chunks → DDP +
optimizer → schedules → data → checkpointer (resume) → metrics. The loop is :meth:`Trainer.train`.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dotsllm.config_loading import apply_overrides, from_dict, load_yaml, to_dict
from dotsllm.model import Dots1ModelConfig, ParallelConfig, build_model
from dotsllm.model.accounting import distributed_parameter_counts, training_flops_per_token
from dotsllm.parallel.setup import init_distributed
from dotsllm.training import data as data_lib
from dotsllm.training import optimizer_state
from dotsllm.training.checkpoint import Checkpointer, CheckpointSettings, read_meta
from dotsllm.training.metrics import ExpertLoadMeter, LoggingSettings, MetricsLogger, aux_loss_since_last_call
from dotsllm.training.optimizer import OptimizerSettings, build_optimizer, set_lr_and_weight_decay, wrap_with_ddp
from dotsllm.training.schedules import BatchRamp, WSDSchedule
from dotsllm.training.step import attach_grad_hooks, evaluate, train_step


@dataclass
class TrainingSettings:
    seq_length: int = 8192
    micro_batch_size: int = 1
    train_tokens: float = 11.2e12
    seed: int = 1234
    precision: str = "bf16"  # bf16 | fp32
    max_nonfinite_steps: int = 10  # steps skipped for a non-finite loss before the run stops
    eval_interval: int = 0  # steps between validation passes; 0 disables
    eval_samples: int = 0
    gpu_peak_flops: float = 989e12  # per GPU, dense bf16 (H100/H800), for MFU


@dataclass
class PretrainConfig:
    run_dir: str
    model: str = "dots1-tiny"
    model_overrides: dict = field(default_factory=dict)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: data_lib.DataConfig = field(default_factory=data_lib.DataConfig)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    lr_schedule: WSDSchedule = field(default_factory=lambda: WSDSchedule(peak_lr=3e-4, warmup_steps=0))
    batch_ramp: BatchRamp = field(default_factory=lambda: BatchRamp(points=({"from_tokens": 0, "global_batch_tokens": 8192},)))
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> "PretrainConfig":
        return from_dict(cls, apply_overrides(load_yaml(path), list(overrides)), where=str(path))


@dataclass
class TrainState:
    """Everything besides model/optimizer that resume restores; saved in the checkpoint's metadata."""

    step: int = 0
    consumed_samples: int = 0
    nonfinite_skipped: int = 0

    def tokens_seen(self, seq_length: int) -> int:
        return self.consumed_samples * seq_length


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
    model_cfg: Dots1ModelConfig
    model_chunks: list[torch.nn.Module]  # DDP-wrapped, one per virtual pipeline stage
    optimizer: Any  # megatron-core MegatronOptimizer
    lr_schedule: WSDSchedule
    batch_ramp: BatchRamp
    train_data: Any  # GPTDataset / BlendedDataset
    valid_data: Any
    checkpointer: Checkpointer
    metrics: MetricsLogger
    expert_load: ExpertLoadMeter
    state: TrainState

    def __init__(self, config: PretrainConfig):
        from megatron.core import parallel_state

        self.config = config
        self.run_dir = Path(config.run_dir)
        train = config.training
        init_distributed(config.parallel, seed=train.seed)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()

        self.model_cfg = Dots1ModelConfig.from_preset(config.model, **config.model_overrides)
        tokenizer = data_lib.TokenizerInfo.from_config(config.data)
        prefixes, _ = data_lib.parse_blend(config.data.blend)
        data_lib.validate_shards(prefixes, tokenizer, self.model_cfg.vocab_size, config.data.check_tokens_per_shard)

        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[train.precision]
        vpp = config.parallel.vpp or 1
        chunks = [
            build_model(self.model_cfg, config.parallel, params_dtype=dtype, vp_stage=vp if vpp > 1 else None)
            for vp in range(vpp)
        ]
        self.model_chunks = wrap_with_ddp(chunks, config.optimizer.use_distributed_optimizer)
        self.optimizer = build_optimizer(self.model_chunks, config.optimizer)
        attach_grad_hooks(self.model_chunks, self.optimizer)
        self.expert_load = ExpertLoadMeter(self.model_chunks)
        counts = distributed_parameter_counts(self.model_chunks, self.model_cfg)
        self.flops_per_token = training_flops_per_token(
            counts.active_matmul, self.model_cfg.num_layers,
            self.model_cfg.num_attention_heads * self.model_cfg.head_dim, train.seq_length,
        )  # fmt: skip

        self.lr_schedule = config.lr_schedule
        self.batch_ramp = config.batch_ramp
        self.train_samples = math.ceil(train.train_tokens / train.seq_length)
        self.train_data, self.valid_data = data_lib.build_datasets(
            config.data, tokenizer, train.seq_length, self.train_samples, train.eval_samples,
            train.seed, cache_dir=str(self.run_dir / "data_cache"),
        )  # fmt: skip

        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", config.checkpoint)
        self.state = TrainState()
        resume_from = self.checkpointer.resume_dir()
        if resume_from is not None:
            self.load_checkpoint(resume_from)

        self.metrics = MetricsLogger(self.run_dir, config.logging, to_dict(config), enabled=_is_logging_rank())
        self.stop = StopRequested()

    # ---- the loop -----------------------------------------------------------------------------

    def train(self) -> str:
        """Train until the token budget or the data is used up, or a stop signal. Returns why it ended."""
        train = self.config.training
        batches = self._microbatches()
        window_start, window_tokens = time.perf_counter(), 0
        self.metrics.event(f"training {self.model_cfg.name} from step {self.state.step} on {self.run_dir}")
        while self.state.tokens_seen(train.seq_length) < train.train_tokens:
            tokens_before = self.state.tokens_seen(train.seq_length)
            global_samples = self.batch_ramp.global_batch_samples(
                tokens_before, train.seq_length, train.micro_batch_size * self.dp_size
            )
            if self.state.consumed_samples + global_samples > len(self.train_data):
                return "data exhausted: not enough samples for the next global batch"
            num_microbatches = global_samples // (train.micro_batch_size * self.dp_size)
            step_batches = [next(batches) for _ in range(num_microbatches)]
            self.last_batch_checksum = _batch_checksum(step_batches)
            lr = self.lr_schedule.lr(self.state.step, tokens_before)
            set_lr_and_weight_decay(self.optimizer, lr, self.config.optimizer.weight_decay)
            result = train_step(
                self.model_chunks, self.optimizer, [iter(step_batches) for _ in self.model_chunks],
                num_microbatches, train.micro_batch_size, train.seq_length,
            )  # fmt: skip
            self.state.step += 1
            self.state.consumed_samples += global_samples
            if not result["update_applied"]:
                self.state.nonfinite_skipped += 1
                self.metrics.event(f"step {self.state.step}: non-finite loss {result['loss']}, update skipped")
            tokens_after = self.state.tokens_seen(train.seq_length)
            window_tokens += tokens_after - tokens_before

            if self.state.step % self.config.logging.log_interval == 0:
                elapsed = time.perf_counter() - window_start
                self._log(result, lr, window_tokens / elapsed, global_samples)
                window_start, window_tokens = time.perf_counter(), 0
            self._check_nonfinite_budget()
            if train.eval_interval and self.state.step % train.eval_interval == 0:
                self._log_validation()
            kind = self.checkpointer.due(self.state.step, tokens_before, tokens_after)
            if self.stop.agreed():
                self.save_checkpoint(kind or "rolling")
                self.metrics.event(f"stop signal: saved at step {self.state.step}, exiting for requeue")
                return "stopped by signal"
            if kind:
                self.save_checkpoint(kind)
        if self.checkpointer.latest_step() != self.state.step:
            self.save_checkpoint("rolling")
        return "token budget reached"

    # ---- parts of the loop --------------------------------------------------------------------

    def _microbatches(self):
        """This DP rank's micro-batches, from ``consumed_samples`` on (DataLoader workers prefetch)."""
        train = self.config.training
        sampler = data_lib.StepBatchSampler(
            len(self.train_data), self.state.consumed_samples, train.micro_batch_size,
            self.dp_rank, self.dp_size, train.seq_length, self.batch_ramp,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(
            self.train_data,
            batch_sampler=sampler,
            num_workers=self.config.data.num_workers,
            collate_fn=data_lib.collate,
            persistent_workers=False,
        )
        device = _device()
        return ({k: v.to(device, non_blocking=True) for k, v in batch.items()} for batch in loader)

    def _check_nonfinite_budget(self) -> None:
        if self.state.nonfinite_skipped > self.config.training.max_nonfinite_steps:
            raise RuntimeError(
                f"{self.state.nonfinite_skipped} steps had a non-finite loss "
                f"(training.max_nonfinite_steps = {self.config.training.max_nonfinite_steps}); stopping"
            )

    def _log(self, result: dict, lr: float, tokens_per_s: float, global_samples: int) -> None:
        train = self.config.training
        world, on_gpu = torch.distributed.get_world_size(), torch.cuda.is_available()
        self.metrics.log(
            {
                "step": self.state.step,
                "tokens_seen": self.state.tokens_seen(train.seq_length),
                "loss": result["loss"],
                "lr": lr,
                "grad_norm": result["grad_norm"],
                "update_applied": result["update_applied"],
                "global_batch_tokens": global_samples * train.seq_length,
                "batch_checksum": self.last_batch_checksum,
                "tokens_per_s": tokens_per_s,
                "mfu": self.flops_per_token * tokens_per_s / (world * train.gpu_peak_flops) if on_gpu else None,
                "aux_loss": aux_loss_since_last_call(),
                "nonfinite_skipped": self.state.nonfinite_skipped,
                "expert_load": self.expert_load.collect(),
            }
        )

    def _log_validation(self) -> None:
        if self.valid_data is None:
            return
        train = self.config.training
        per_rank = len(self.valid_data) // self.dp_size // train.micro_batch_size * train.micro_batch_size
        start = self.dp_rank * per_rank
        batches = [
            data_lib.collate([self.valid_data[i] for i in range(s, s + train.micro_batch_size)])
            for s in range(start, start + per_rank, train.micro_batch_size)
        ]
        if batches:
            loss = evaluate(self.model_chunks, batches, train.micro_batch_size, train.seq_length)
            self.metrics.log({"step": self.state.step, "tokens_seen": self.state.tokens_seen(train.seq_length), "valid_loss": loss})

    # ---- checkpoints --------------------------------------------------------------------------

    def _sharded_state(self, load_from: Path | None = None, with_optimizer: bool = True) -> dict[str, Any]:
        """What a checkpoint holds: to save, or to load ``load_from`` into."""
        from megatron.core.dist_checkpointing.mapping import ShardedObject

        model_state = {}
        for i, chunk in enumerate(self.model_chunks):
            model_state.update({f"model{i}" if len(self.model_chunks) > 1 else "model": chunk.module.sharded_state_dict()})
        state: dict[str, Any] = dict(model_state)
        if with_optimizer:
            merged = {k: v for part in model_state.values() for k, v in part.items()}
            saved = optimizer_state.saved_common_state(load_from) if load_from else None
            state["optimizer"] = optimizer_state.sharded_state_dict(self.optimizer, merged, saved)
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        state["rng"] = ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0)
        return state

    def save_checkpoint(self, kind: str) -> Path:
        seq = self.config.training.seq_length
        meta = {
            **dataclasses.asdict(self.state),
            "tokens_seen": self.state.tokens_seen(seq),
            "model": dataclasses.asdict(self.model_cfg),
            "parallel": dataclasses.asdict(self.config.parallel),
            "world_size": torch.distributed.get_world_size(),
            "seq_length": seq,
            "has_optimizer": True,
        }
        path = self.checkpointer.save(kind, self._sharded_state(), meta)
        self.metrics.event(f"saved {kind} checkpoint {path.name}")
        return path

    def load_checkpoint(self, ckpt_dir: Path) -> None:
        meta = read_meta(ckpt_dir)
        same_layout = (
            meta.get("parallel") == dataclasses.asdict(self.config.parallel)
            and meta.get("world_size") == torch.distributed.get_world_size()
        )
        with_optimizer = self.config.checkpoint.load_optimizer and meta.get("has_optimizer", False)
        state = self._sharded_state(load_from=ckpt_dir, with_optimizer=with_optimizer)
        if not same_layout:
            state.pop("rng")  # per-rank RNG streams only carry over to the same layout
        loaded = Checkpointer.load(ckpt_dir, state)
        for i, chunk in enumerate(self.model_chunks):
            chunk.module.load_state_dict(loaded[f"model{i}" if len(self.model_chunks) > 1 else "model"])
        if with_optimizer:
            optimizer_state.load_state_dict(self.optimizer, loaded["optimizer"])
        if "rng" in loaded:
            _set_rng_state(loaded["rng"])
        if meta.get("seq_length") == self.config.training.seq_length:
            self.state = TrainState(
                step=meta["step"], consumed_samples=meta["consumed_samples"], nonfinite_skipped=meta["nonfinite_skipped"]
            )


def _batch_checksum(batches: list[dict[str, torch.Tensor]]) -> int:
    """A position-weighted sum of the step's tokens over all DP ranks: which samples a step read."""
    from megatron.core import parallel_state

    total = torch.zeros(1, dtype=torch.float64, device=_device())
    for batch in batches:
        weights = torch.arange(1, batch["tokens"].numel() + 1, dtype=torch.float64, device=total.device)
        total += (batch["tokens"].reshape(-1).double() * weights).sum()
    torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return int(total.item())


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _is_logging_rank() -> bool:
    """The last rank: it holds the last pipeline stage, where the loss is."""
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1


def main(config_path: str, overrides: list[str]) -> int:
    config = PretrainConfig.load(config_path, overrides)
    trainer = Trainer(config)
    try:
        reason = trainer.train()
        trainer.metrics.event(f"done: {reason} at step {trainer.state.step}")
    finally:
        trainer.metrics.close()
    return 0
