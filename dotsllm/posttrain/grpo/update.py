"""GRPO's update of a rollout batch: the log-prob pass (old and reference log-probs), then the optimizer
updates (mini-batches × epochs) against them, on the training layout.

The rows are one sample each, or one group each with prefix grouping (:mod:`.batch`; mini-batches then
take whole groups). The log-prob pass runs the first epoch's mini-batches as their updates will (the
same rows in the same micro-batches), so that the first update reproduces its old log-probs bit for
bit: its ratio is exactly 1.
"""

from __future__ import annotations

import math
import resource
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from dotsllm.model.routing_replay import routing_action
from dotsllm.posttrain.grpo import batch as rows_of
from dotsllm.posttrain.grpo.losses import sequence_weights
from dotsllm.posttrain.grpo.policy_forward import PolicyForward
from dotsllm.posttrain.grpo.rollout import Sample
from dotsllm.training.step import current_device, forward_outputs, train_step


class PolicyUpdate:
    """The log-prob pass and updates of one rollout batch (``config``: the GRPO run config).

    ``routers``: the MoE routers when router replay is on (the training forwards reuse the rollout's
    expert choices); ``reference``: the frozen initial policy's chunks when the KL term is on.
    """

    def __init__(self, config, model_chunks, optimizer, routers, reference, prefix_grouping: bool):
        self.config, self.model_chunks, self.optimizer = config, model_chunks, optimizer
        self.routers, self.reference, self.prefix_grouping = routers, reference, prefix_grouping
        temperature = config.rollout.temperature
        self.policy = PolicyForward(config.objective, temperature, routers, prefix_grouping)
        self.reference_forward = PolicyForward(config.objective, temperature, None, prefix_grouping)

    def __call__(self, samples: list[Sample], advantages: list[float], step: int) -> tuple[list[dict], dict[str, Any]]:
        """The update results (one per optimizer update) and the pass's numbers: times, the log-prob
        mismatch against the rollout, the rows, and the peak memory: ``torch.cuda.max_memory_allocated``
        over the pass and updates on a GPU, the process's peak resident set so far (getrusage) on a CPU."""
        config = self.config
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        groups = rows_of.shared_prompt_groups(samples) if self.prefix_grouping else None
        seq = self.row_length(samples, groups)
        rows = rows_of.training_rows(samples, seq, config.rollout.max_new_tokens, groups)
        rows["advantages"] = rows_of.per_slot(torch.tensor(advantages, dtype=torch.float32), rows["sample_index"])
        epochs = [
            [part.tolist() for part in np.array_split(order, config.updates.mini_batches) if len(part)]
            for order in (
                np.random.default_rng([config.training.seed, step, epoch]).permutation(len(rows["tokens"]))
                for epoch in range(config.updates.epochs)
            )
        ]
        with self.replay():
            rows["old_log_probs"] = self.log_probs(self.model_chunks, self.policy, rows, epochs[0], seq)
        if self.reference is not None:
            rows["ref_log_probs"] = self.log_probs(self.reference, self.reference_forward, rows, epochs[0], seq)
        _synchronize()
        logprob_s = time.perf_counter() - started
        started = time.perf_counter()
        results = [self.train_on(rows_of.select_rows(rows, part), seq) for parts in epochs for part in parts]
        _synchronize()
        mask = rows["response_mask"]
        mismatch = (rows["old_log_probs"] - rows["behaviour_log_probs"]).abs()[mask]
        timing = {
            "logprob_s": logprob_s,
            "update_s": time.perf_counter() - started,
            "logprob_mismatch_mean": mismatch.mean().item(),
            "logprob_mismatch_max": mismatch.max().item(),
            "prefix_grouping": self.prefix_grouping,
            "training_rows": len(rows["tokens"]),
            "row_length": seq,
            **peak_memory(),
        }
        return results, timing

    def rows_per_micro_batch(self, rows: int) -> int:
        """Rows per micro-batch for a mini-batch of ``rows``: ``training.micro_batch_size`` counts
        responses (a prefix-grouped micro-batch holds that many responses' worth of groups, at least one),
        and no more than a data-parallel rank's share of the rows: fewer padding rows, which megatron's
        sequence aux loss would count."""
        from megatron.core import parallel_state

        mbs = self.config.training.micro_batch_size
        mbs = max(1, mbs // self.config.rollout.group_size) if self.prefix_grouping else mbs
        return max(1, min(mbs, math.ceil(rows / parallel_state.get_data_parallel_world_size())))

    def row_length(self, samples: list[Sample], groups: list[list[int]] | None) -> int:
        """``training.seq_length`` for standard rows; for grouped rows the step's longest group, rounded
        up to a multiple of the TP size (sequence parallelism splits rows into TP parts)."""
        if groups is None:
            return self.config.training.seq_length
        from megatron.core import parallel_state

        multiple = parallel_state.get_tensor_model_parallel_world_size()
        return math.ceil(max(rows_of.row_tokens(samples, g) for g in groups) / multiple) * multiple

    def log_probs(
        self, chunks: list[torch.nn.Module], forward: PolicyForward, rows: dict[str, torch.Tensor],
        parts: list[list[int]], seq: int,
    ) -> torch.Tensor:  # fmt: skip
        """Response log-probs ``[rows, slots, max_new_tokens]`` of ``chunks``' forward on rows of length
        ``seq``, on every rank; the rows are run a mini-batch (``parts``: their indices) at a time, split
        as :meth:`train_on` splits them."""
        from megatron.core import parallel_state

        dp = parallel_state.get_data_parallel_world_size()
        values = torch.zeros(rows["response_mask"].shape)
        for part in parts:
            mbs = self.rows_per_micro_batch(len(part))
            share = rows_of.rank_share(len(part), parallel_state.get_data_parallel_rank(), dp, mbs)
            share = [part[i] if i is not None else None for i in share]
            batches = _on_device(rows_of.micro_batches(rows_of.select_rows(rows, share), mbs))
            outputs = forward_outputs(chunks, batches, mbs, seq, forward.log_probs_step)
            if outputs:  # the last pipeline stage
                local = torch.cat(outputs).float()
            else:
                local = torch.zeros(len(share), *values.shape[1:], device=current_device())
            if parallel_state.get_pipeline_model_parallel_world_size() > 1:
                torch.distributed.broadcast(
                    local, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                    group=parallel_state.get_pipeline_model_parallel_group(),
                )  # fmt: skip
            gathered = [torch.empty_like(local) for _ in range(dp)]
            torch.distributed.all_gather(gathered, local, group=parallel_state.get_data_parallel_group())
            values[part] = torch.cat(gathered)[: len(part)].cpu()
        return values

    def train_on(self, rows: dict[str, torch.Tensor], seq: int) -> dict[str, Any]:
        """One optimizer update on the mini-batch ``rows`` of length ``seq`` (all ranks hold all of it;
        each trains its share)."""
        from megatron.core import parallel_state

        config = self.config
        mask = rows["response_mask"]
        mbs = self.rows_per_micro_batch(len(mask))
        responses = mask.flatten(0, 1)
        weights = sequence_weights(
            responses, config.objective.aggregation, int(responses.sum()), int((responses.sum(-1) > 0).sum()),
            config.rollout.max_new_tokens,
        )  # fmt: skip
        rows = {**rows, "weights": weights.view(mask.shape[:2])}
        dp = parallel_state.get_data_parallel_world_size()
        share = rows_of.rank_share(len(mask), parallel_state.get_data_parallel_rank(), dp, mbs)
        local = rows_of.select_rows(rows, share)
        local["loss_scale"] = torch.full((len(share),), float(len(share) * dp * seq))  # the mini-batch's tokens
        batches = _on_device(rows_of.micro_batches(local, mbs))
        started = time.perf_counter()
        with self.replay():
            result = train_step(
                self.model_chunks, self.optimizer, [iter(batches) for _ in self.model_chunks],
                len(batches), mbs, seq, self.policy.loss_step,
            )  # fmt: skip
        _synchronize()
        return {**result, "microbatches": len(batches), "train_step_s": time.perf_counter() - started}

    def replay(self):
        """Router replay around a training-layout forward (when it is on)."""
        return routing_action(self.routers, "replay_forward") if self.routers else nullcontext()


def _on_device(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    device = current_device()
    return [{name: t.to(device) for name, t in b.items()} for b in batches]


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory() -> dict[str, Any]:
    """This process's peak memory in GiB and what it measures: the GPU's allocated peak since the last
    ``torch.cuda.reset_peak_memory_stats``, or on a CPU the peak resident set since the process started."""
    if torch.cuda.is_available():
        return {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "peak_memory_kind": "cuda_max_allocated"}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_memory_gib": peak_kib / 2**20, "peak_memory_kind": "cpu_max_rss"}
