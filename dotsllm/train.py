"""The training loop every recipe shares: ``dotsllm pretrain | sft | grpo CONFIG [key=value ...]``.

:class:`Trainer` composes a recipe's parts (a :class:`~dotsllm.training.spec.TrainSpec`, one file per
recipe in :mod:`dotsllm.recipes`) and owns only what all recipes share: the process groups, the loop,
checkpoints (what one holds: :mod:`dotsllm.training.checkpoint_state`), stop signals, the MoE meters,
metrics and logging. A step is the recipe's step strategy: ``LMStep`` for pretraining and SFT, GRPO's
collect → score → log-prob pass → update. Nothing subclasses the trainer.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path
from typing import Any

import torch

from dotsllm.config_loading import to_dict
from dotsllm.model.accounting import distributed_parameter_counts, training_flops_per_token
from dotsllm.parallel.setup import init_distributed
from dotsllm.tokenizer import check_vocabulary
from dotsllm.training import checkpoint_state
from dotsllm.training.checkpoint import Checkpointer
from dotsllm.training.config import RunConfig
from dotsllm.training.metrics import AuxLossMeter, ExpertLoadMeter, MetricsLogger
from dotsllm.training.optimizer import set_lr_and_weight_decay
from dotsllm.training.spec import Parts, StepOutcome, TrainSpec, Validation
from dotsllm.training.step import current_device


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
        flag = torch.tensor([1.0 if self.received else 0.0], device=current_device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


class Trainer:
    """One run of a recipe: its parts built in order, then :meth:`train`."""

    def __init__(self, spec: TrainSpec, config: RunConfig):
        self.spec, self.config = spec, config
        self.run_dir = Path(config.run_dir)
        init_distributed(config.parallel, seed=config.training.seed)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", config.checkpoint)
        start = self.checkpointer.resume_dir()  # this run's latest, else checkpoint.load_from
        if start is None and spec.needs_checkpoint:
            raise ValueError(f"checkpoint.load_from: {spec.name} starts from a checkpoint (SFT, pretraining or import-hf)")
        # the recipe's parts
        self.model_cfg = spec.build_model_config(config, start)
        self.tokenizer = spec.build_tokenizer(config)
        if self.tokenizer is not None:
            check_vocabulary(self.tokenizer.vocab_size, self.model_cfg.vocab_size, f"tokenizer {self.tokenizer.path}")
        self.data = spec.build_data(config, self.model_cfg, self.tokenizer, self.run_dir)
        self.lr_schedule = spec.build_lr_schedule(config, self.data)
        self.model_chunks, self.optimizer = spec.build_model(config, self.model_cfg, self.lr_schedule)
        self.state = spec.state()
        self.last_saved_step: int | None = None
        if start is not None:
            self.load_checkpoint(start)
        # the fixed parts
        self.metrics = MetricsLogger(self.run_dir, config.logging, to_dict(config), enabled=is_logging_rank())
        self.expert_load = ExpertLoadMeter(self.model_chunks)
        moe_layers = [i + 1 for i, moe in enumerate(self.model_cfg.moe_layer_freq) if moe]
        self.aux_loss = AuxLossMeter(moe_layers, self.model_cfg.num_layers)
        counts = distributed_parameter_counts(self.model_chunks, self.model_cfg)
        self.flops_per_token = training_flops_per_token(
            counts.active_matmul, self.model_cfg.num_layers,
            self.model_cfg.num_attention_heads * self.model_cfg.head_dim, config.training.seq_length,
        )  # fmt: skip
        parts = Parts(
            config, self.run_dir, self.model_cfg, self.tokenizer, self.data, self.model_chunks, self.optimizer,
            self.metrics, start,
        )  # fmt: skip
        self.step_strategy = spec.build_step(parts)
        self.stop = StopRequested()
        self._window_start, self._window_tokens = time.perf_counter(), 0

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> str:
        """:meth:`train`, then why it ended in the log; what the parts hold is released whatever happens."""
        try:
            reason = self.train()
            self.metrics.event(f"done: {reason} at step {self.state.step}")
        finally:
            self.step_strategy.close()
            self.metrics.close()
        return reason

    def train(self) -> str:
        """Train until the recipe's budget or data is used up, or a stop signal; the last step is
        always checkpointed. Returns why it ended."""
        self.metrics.event(f"{self.spec.name}: training {self.model_cfg.name} from step {self.state.step} on {self.run_dir}")
        self.validate("start")
        while (reason := self.step_strategy.end_reason(self.state)) is None:
            self.train_step()
            if self.stop.agreed():
                self.save_checkpoint("rolling")
                self.metrics.event(f"stop signal: saved at step {self.state.step}, exiting for requeue")
                return "stopped by signal"
        self.save_checkpoint("rolling")
        self.validate("end")
        return reason

    def train_step(self) -> StepOutcome:
        """One step of the recipe at the schedule's learning rate, then its logging, validation and checkpoint."""
        tokens_before = self.state.tokens_seen
        lr = self.lr_schedule.lr(self.state.step, tokens_before)
        set_lr_and_weight_decay(self.optimizer, lr, self.config.optimizer.weight_decay)
        outcome = self.step_strategy.step(self.state, lr)
        self.advance(outcome)
        if outcome.skipped_updates:
            self.metrics.event(f"step {self.state.step}: non-finite loss or gradients, {outcome.skipped_updates} update(s) skipped")
        if self.state.step % self.config.logging.log_interval == 0:
            self.log_step(outcome, lr)
        for record in outcome.records:
            self.metrics.log({"step": self.state.step, "tokens_seen": self.state.tokens_seen, **record})
        limit = self.config.training.max_nonfinite_steps
        if self.state.nonfinite_skipped > limit:
            raise RuntimeError(
                f"{self.state.nonfinite_skipped} updates had a non-finite loss or gradients "
                f"(training.max_nonfinite_steps = {limit}); stopping"
            )
        self.validate("step")
        if kind := self.checkpointer.due(self.state.step, tokens_before, self.state.tokens_seen):
            self.save_checkpoint(kind)
        return outcome

    def advance(self, outcome: StepOutcome) -> None:
        """The train state, meters and throughput window after a step."""
        state = self.state
        state.step += 1
        state.consumed_samples += outcome.samples
        state.tokens_seen += outcome.tokens
        state.nonfinite_skipped += outcome.skipped_updates
        for name, count in outcome.counters.items():
            setattr(state, name, getattr(state, name) + count)
        self.aux_loss.add_step(outcome.microbatches)
        self._window_tokens += outcome.trained_tokens

    def validate(self, when: Validation) -> None:
        if (record := self.step_strategy.validate(self.state, when)) is not None:
            self.metrics.log({"step": self.state.step, "tokens_seen": self.state.tokens_seen, **record})

    def log_step(self, outcome: StepOutcome, lr: float) -> None:
        """The step's record with what every recipe logs: throughput since the last log, MFU (GPU),
        the MoE aux loss and expert load."""
        tokens_per_s = self._window_tokens / (time.perf_counter() - self._window_start)
        world, peak = torch.distributed.get_world_size(), self.config.training.gpu_peak_flops
        expert_load, aux = self.expert_load.collect(), self.aux_loss.collect()
        for layer, value in aux.items():
            expert_load.setdefault(layer, {})["seq_aux_loss"] = value
        self.metrics.log({
            "step": self.state.step,
            "tokens_seen": self.state.tokens_seen,
            "lr": lr,
            **outcome.record,
            "tokens_per_s": tokens_per_s,
            "mfu": self.flops_per_token * tokens_per_s / (world * peak) if torch.cuda.is_available() else None,
            "aux_loss": sum(aux.values()) / len(aux) if aux else None,  # mean over MoE layers, per step
            "nonfinite_skipped": self.state.nonfinite_skipped,
            "expert_load": expert_load,
        })  # fmt: skip
        self._window_start, self._window_tokens = time.perf_counter(), 0

    # ---- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, kind: str) -> Path | None:
        """Save unless this step is already saved; returns the path written."""
        if self.last_saved_step == self.state.step:
            return None
        path = checkpoint_state.save(
            self.checkpointer, kind, self.model_chunks, self.optimizer, self.state,
            model=dataclasses.asdict(self.model_cfg), parallel=dataclasses.asdict(self.config.parallel),
            seq_length=self.config.training.seq_length, trainer=self.spec.name,
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
            ckpt_dir, self.model_chunks, self.optimizer if own or settings.load_optimizer else None,
            parallel=dataclasses.asdict(self.config.parallel),
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
        self.state = self.spec.state(**self._known_progress(meta.train_state, ckpt_dir))
        self.last_saved_step = self.state.step if own else None

    def _known_progress(self, saved: dict[str, Any], ckpt_dir: Path) -> dict[str, Any]:
        """The fields of this recipe's train state in ``saved``; a checkpoint of another recipe may
        hold others (its own counters), which are named in an error rather than dropped unsaid."""
        fields = {f.name for f in dataclasses.fields(self.spec.state)}
        if other := sorted(set(saved) - fields):
            raise ValueError(
                f"{ckpt_dir} holds progress {other} that a {self.spec.name} run does not keep: start it with "
                "checkpoint.load_progress=false (weights, and the optimizer if load_optimizer), or from a "
                f"{self.spec.name} checkpoint"
            )
        return saved


def is_logging_rank() -> bool:
    """The last rank: it holds the last pipeline stage, where the loss is."""
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1


def main(spec: TrainSpec, config_path: str, overrides: list[str]) -> int:
    """``dotsllm <recipe> CONFIG [key=value ...]``: the run, then the PNGs of its metrics."""
    from dotsllm.training.plots import write_plots

    trainer = Trainer(spec, spec.config.load(config_path, overrides))
    trainer.run()
    if is_logging_rank():
        for path in write_plots(trainer.run_dir):
            print(path)
    return 0
