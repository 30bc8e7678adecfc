"""``LMStep``: next-token training on a data part's micro-batches, the step strategy of pretraining and SFT.

A step takes the next global batch (as many micro-batches as the data says from its position), runs
them through megatron's schedules with the recipe's forward step (:mod:`dotsllm.training.step`), and
reports the loss, grad norm and which samples it read. With ``diagnostics.zsl_interval`` it also
measures zero-sum learning (arXiv 2506.05447): per-token losses of a held-out batch before and after
the step. Validation is the loss on the data's held-out samples every ``training.eval_interval`` steps.

A data part (:class:`~dotsllm.training.data.PretrainData`, :class:`~dotsllm.posttrain.sft.data.SFTData`)
has ``train`` (its samples), ``global_batch_samples(consumed)``, ``microbatches(consumed)`` (this
data-parallel rank's, from that position on) and ``valid_batches(max_samples)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from dotsllm.training.zero_sum import reduce_zero_sum_stats
from dotsllm.training.checkpoint_state import TrainState
from dotsllm.training.spec import Parts, StepOutcome, Validation
from dotsllm.training.step import ForwardStep, current_device, evaluate, per_token_losses, train_step


@dataclass(kw_only=True)
class DiagnosticsSettings:
    """Zero-sum-learning metrics (arXiv 2506.05447): per-token loss changes of a held-out batch."""

    zsl_interval: int = 0  # steps between measurements; 0 disables
    zsl_samples: int = 16  # the held-out batch: the first validation samples, split over DP ranks


BatchStats = Callable[[list[dict[str, torch.Tensor]]], dict[str, Any]]


class LMStep:
    """Next-token steps over ``parts.data`` with ``forward_step``'s per-token loss.

    ``train_tokens``: the token budget (None: none); ``data_end``: why training ends when the data
    holds no further global batch; ``batch_stats``: extra numbers of a step's micro-batches to log
    (``real_tokens`` among them counts the tokens trained on, else every slot does).
    """

    def __init__(
        self,
        parts: Parts,
        forward_step: ForwardStep,
        *,
        diagnostics: DiagnosticsSettings,
        data_end: str,
        train_tokens: float | None = None,
        batch_stats: BatchStats | None = None,
    ):
        self.data, self.chunks, self.optimizer = parts.data, parts.model_chunks, parts.optimizer
        self.training = parts.config.training
        self.forward_step = forward_step
        self.diagnostics, self.data_end, self.train_tokens = diagnostics, data_end, train_tokens
        self.batch_stats = batch_stats or (lambda batches: {})
        self.zsl_batches = self._zsl_batches()
        self._microbatches: Iterator[dict[str, torch.Tensor]] | None = None

    def _zsl_batches(self) -> list[dict[str, torch.Tensor]]:
        """The held-out batch of the zero-sum-learning metrics (none when they are off)."""
        diagnostics = self.diagnostics
        if not diagnostics.zsl_interval:
            return []
        batches = self.data.valid_batches(diagnostics.zsl_samples)
        if not batches:
            raise ValueError(
                "diagnostics.zsl_interval needs held-out samples: validation data and "
                f"training.eval_samples >= diagnostics.zsl_samples ({diagnostics.zsl_samples}) x DP"
            )
        return batches

    def end_reason(self, state: TrainState) -> str | None:
        if self.train_tokens is not None and state.tokens_seen >= self.train_tokens:
            return "token budget reached"
        if state.consumed_samples + self.data.global_batch_samples(state.consumed_samples) > len(self.data.train):
            return self.data_end
        return None

    def step(self, state: TrainState, lr: float) -> StepOutcome:
        train = self.training
        if self._microbatches is None:  # the data from the run's position on (after a resume: the checkpoint's)
            self._microbatches = self.data.microbatches(state.consumed_samples)
        global_samples = self.data.global_batch_samples(state.consumed_samples)
        num_microbatches = global_samples // (train.micro_batch_size * self.data.dp_size)
        batches = [next(self._microbatches) for _ in range(num_microbatches)]
        zsl_interval = self.diagnostics.zsl_interval
        measure_zsl = zsl_interval and (state.step + 1) % zsl_interval == 0
        if measure_zsl:
            zsl_start, losses_before = time.perf_counter(), self._held_out_losses()
        result = train_step(
            self.chunks, self.optimizer, [iter(batches) for _ in self.chunks], num_microbatches,
            train.micro_batch_size, train.seq_length, self.forward_step,
        )  # fmt: skip
        records = []
        if measure_zsl:
            records.append(self._zero_sum_record(losses_before, self._held_out_losses(), time.perf_counter() - zsl_start))
        stats = self.batch_stats(batches)
        tokens = global_samples * train.seq_length
        record = {
            "loss": result["loss"],
            "loss_tokens": result["tokens"],  # the tokens the loss is the mean of (its mask's), all ranks
            "grad_norm": result["grad_norm"],
            "update_applied": result["update_applied"],
            "global_batch_tokens": tokens,
            "batch_checksum": batch_checksum(batches),
            **stats,
        }
        return StepOutcome(
            record, samples=global_samples, tokens=tokens, trained_tokens=stats.get("real_tokens", tokens),
            microbatches=num_microbatches, skipped_updates=int(not result["update_applied"]), records=records,
        )  # fmt: skip

    def validate(self, state: TrainState, when: Validation) -> dict[str, Any] | None:
        interval = self.training.eval_interval
        if when != "step" or not interval or state.step % interval:
            return None
        if batches := self.data.valid_batches():
            train = self.training
            logs = evaluate(self.chunks, batches, train.micro_batch_size, train.seq_length, self.forward_step)
            return {"valid_loss": logs["loss"]}
        return None

    def close(self) -> None:
        pass

    def _held_out_losses(self) -> list[torch.Tensor]:
        train = self.training
        return per_token_losses(self.chunks, self.zsl_batches, train.micro_batch_size, train.seq_length, self.forward_step)

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


def batch_checksum(batches: list[dict[str, torch.Tensor]]) -> int:
    """A position-weighted sum of the step's tokens over all DP ranks: which samples a step read."""
    from megatron.core import parallel_state

    total = torch.zeros(1, dtype=torch.float64, device=current_device())
    for batch in batches:
        weights = torch.arange(1, batch["tokens"].numel() + 1, dtype=torch.float64, device=total.device)
        total += (batch["tokens"].reshape(-1).double() * weights).sum()
    torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return int(total.item())
