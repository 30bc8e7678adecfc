"""``dotsllm grpo``: GRPO on the dots1 MoE in any TP/PP/EP/DP layout, as a :class:`~dotsllm.train.Trainer`.

A step: draw prompts (in an order that is a function of the prompts drawn so far), roll out G responses
each on the training layout, score them (reward workers), drop all-equal groups and draw again when
dynamic sampling is on, compute group-relative advantages, then the log-prob pass (the policy's old
log-probs, and the reference's when β > 0) and the updates (mini-batches × epochs) against them.
Everything random is seeded by the run's seed and the step or draw index, so a resumed run repeats the
uninterrupted one bit for bit. What the trainer keeps of the pretraining loop: its model/DDP/optimizer
builder, checkpoints, signals, metrics logger and MoE meters.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dotsllm.inference import GenerationRequest, SamplingParams, data_parallel_share, generate_data_parallel
from dotsllm.model import Dots1ModelConfig
from dotsllm.model.routing_replay import moe_routers, routing_action
from dotsllm.posttrain.chat import END_RESPONSE
from dotsllm.posttrain.grpo import batch as rows_of
from dotsllm.posttrain.grpo.advantages import group_advantages
from dotsllm.posttrain.grpo.config import GRPOConfig
from dotsllm.posttrain.grpo.losses import sequence_weights
from dotsllm.posttrain.grpo.policy_forward import PolicyForward
from dotsllm.posttrain.grpo.prompts import Prompt, PromptSet
from dotsllm.posttrain.grpo.rewards import FAILURE_KINDS, RewardOutcome, RewardRunner
from dotsllm.posttrain.grpo.rollout import BACKENDS, Sample, rollout
from dotsllm.train import Trainer, _device, _is_logging_rank
from dotsllm.training.checkpoint import META_FILE, latest_checkpoint, read_meta
from dotsllm.training.checkpoint_state import TrainState
from dotsllm.training.optimizer import build_model_and_optimizer, set_lr_and_weight_decay
from dotsllm.training.step import forward_outputs, train_step

PROMPT_ERRORS_FILE = "prompt_errors.jsonl"


@dataclass
class GRPOState(TrainState):
    """GRPO's progress. ``consumed_samples`` counts the prompts drawn (the draw order's position)."""

    tokens: int = 0  # prompt + response tokens of the samples trained on
    samples: int = 0  # responses trained on
    reward_failures: int = 0  # samples a reward function failed on (raised, hung, non-finite)


@dataclass
class RolloutBatch:
    """The samples of a step's kept groups (a group's G side by side), their rewards and advantages,
    and what the step's rollouts measured over every group drawn."""

    samples: list[Sample]
    rewards: list[float]
    advantages: list[float]
    stats: dict[str, Any]


class GRPOTrainer(Trainer):
    """GRPO (see the module doc); the parts it swaps are the data (prompts), the model config (the
    checkpoint's, with the RL MoE settings), the model (router replay), the state and the step."""

    data: PromptSet
    state: GRPOState
    trainer_name = "grpo"

    def __init__(self, config: GRPOConfig):
        if config.checkpoint.load_from:
            config.checkpoint.load_from = str(starting_checkpoint(config.checkpoint.load_from))
        elif latest_checkpoint(Path(config.run_dir) / "checkpoints") is None:
            raise ValueError("GRPO starts from a checkpoint: set checkpoint.load_from (SFT, pretraining or imported)")
        super().__init__(config)
        self.stop_token = self.tokenizer.special_ids([END_RESPONSE])[END_RESPONSE]
        self.routers = moe_routers(self.model_chunks) if config.moe.router_replay else None
        if config.training.prefix_grouping and not self.prefix_grouping:
            self.metrics.event("prefix grouping off: rollout.group_size 1 shares no prompt (standard rows)")
        self.policy = PolicyForward(config.objective, config.rollout.temperature, self.routers, self.prefix_grouping)
        self.backend = BACKENDS[config.rollout.backend](self.model_chunks, config.rollout)
        self.rewards = RewardRunner(config.rewards)
        self.reference = None
        if config.objective.kl_beta > 0:  # the frozen initial policy, in this layout
            from dotsllm.convert.checkpoint_io import load_checkpoint_model
            from dotsllm.training.optimizer import PRECISIONS

            dtype = PRECISIONS[config.training.precision]
            self.reference, _ = load_checkpoint_model(config.checkpoint.load_from, dtype, self.prefix_grouping)
        self.reference_forward = PolicyForward(config.objective, config.rollout.temperature, None, self.prefix_grouping)
        self.heldout: list[Prompt] = []  # the held-out prompts, in file order
        if config.eval.path:
            settings = dataclasses.replace(config.prompts, path=config.eval.path)
            heldout = PromptSet(settings, self.tokenizer, config.max_prompt_tokens, 0).prompts
            self.heldout = heldout[: config.eval.samples or None]
        if self.data.errors:
            if torch.distributed.get_rank() == 0:
                self.data.write_errors(self.run_dir / PROMPT_ERRORS_FILE)
            self.metrics.event(
                f"prompts: {len(self.data)} usable, {len(self.data.errors)} malformed {self.data.error_counts} "
                f"(listed in {self.run_dir / PROMPT_ERRORS_FILE})"
            )
        self.metrics.event(
            f"MoE during RL: expert-bias update rate {self.model_cfg.moe_router_bias_update_rate}, aux-loss "
            f"coefficient {self.model_cfg.moe_aux_loss_coeff}, router replay {'on' if self.routers else 'off'}, "
            f"prefix grouping {'on' if self.prefix_grouping else 'off'}"
        )

    @property
    def prefix_grouping(self) -> bool:
        """Rows prefix-grouped (a group of one shares no prompt); the models are built for it."""
        return self.config.training.prefix_grouping and self.config.rollout.group_size > 1

    # ---- the swappable parts ------------------------------------------------------------------

    def build_model_config(self) -> Dots1ModelConfig:
        """The starting checkpoint's architecture (this run's own latest when resuming), with the RL
        settings of the MoE routers: the expert-bias update rate and the aux-loss coefficient."""
        config = self.config
        source = latest_checkpoint(self.run_dir / "checkpoints") or Path(config.checkpoint.load_from)
        model = {**read_meta(source)["model"], **config.model_overrides}
        model["moe_router_bias_update_rate"] = config.moe.expert_bias_update_rate
        if config.moe.aux_loss_coeff is not None:
            model["moe_aux_loss_coeff"] = config.moe.aux_loss_coeff
        return Dots1ModelConfig.from_dict(model, source=f"{source}/dotsllm.json")

    def build_data(self) -> PromptSet:
        from dotsllm.tokenizer import Tokenizer

        config = self.config
        self.tokenizer = Tokenizer(config.tokenizer, config.eod_token)
        if self.tokenizer.vocab_size > self.model_cfg.vocab_size:
            raise ValueError(
                f"tokenizer {config.tokenizer} has {self.tokenizer.vocab_size} tokens, "
                f"the model {self.model_cfg.vocab_size}"
            )
        return PromptSet(config.prompts, self.tokenizer, config.max_prompt_tokens, config.training.seed)

    def build_model(self):
        config = self.config
        overrides = {"moe_enable_routing_replay": True} if config.moe.router_replay else None
        return build_model_and_optimizer(
            self.model_cfg, config.parallel, config.training.precision, config.optimizer, config_overrides=overrides,
            prefix_grouping=self.prefix_grouping,
        )  # fmt: skip

    def build_train_state(self) -> GRPOState:
        return GRPOState()

    def build_zsl_batches(self) -> list:
        return []

    def close(self) -> None:
        self.rewards.close()
        super().close()

    # ---- the loop -----------------------------------------------------------------------------

    @property
    def tokens_seen(self) -> int:
        return self.state.tokens

    def train(self) -> str:
        """Held-out accuracy before training (a fresh run) and at its end, around the pretraining loop."""
        if self.heldout and self.state.step == 0:
            self.evaluate()
        reason = super().train()
        interval = self.config.eval.interval
        if self.heldout and self.end_reason() is not None and not (interval and self.state.step % interval == 0):
            self.evaluate()
        return reason

    def end_reason(self) -> str | None:
        return "step budget reached" if self.state.step >= self.config.training.steps else None

    def step(self, prompts: Iterator[tuple[int, Prompt]]) -> dict[str, Any]:
        """One rollout batch and its updates, then logging, evaluation and checkpoint."""
        config = self.config
        start = time.perf_counter()
        tokens_before = self.tokens_seen
        lr = config.lr_schedule.lr(self.state.step, tokens_before)
        set_lr_and_weight_decay(self.optimizer, lr, config.optimizer.weight_decay)
        batch = self.collect(prompts)
        results, timing = [], {"logprob_s": 0.0, "update_s": 0.0}
        if batch.samples:
            results, timing = self.update(batch)
        self.state.step += 1
        self.state.samples += len(batch.samples)
        self.state.tokens += sum(len(s.prompt.ids) + len(s.response) for s in batch.samples)
        self.state.nonfinite_skipped += sum(not r["update_applied"] for r in results)
        self.aux_loss.add_step(sum(r["microbatches"] for r in results))
        record = {**self._record(batch, results, lr), **batch.stats, **timing, "step_s": time.perf_counter() - start}
        trained = (self.tokens_seen - tokens_before) * config.updates.epochs
        record["tokens_per_s"] = trained / timing["update_s"] if results else None
        if self.state.step % config.logging.log_interval == 0:
            self._log_step(record)
        if self.state.nonfinite_skipped > config.training.max_nonfinite_steps:
            raise RuntimeError(
                f"{self.state.nonfinite_skipped} updates had a non-finite loss or gradients "
                f"(training.max_nonfinite_steps = {config.training.max_nonfinite_steps}); stopping"
            )
        if self.heldout and config.eval.interval and self.state.step % config.eval.interval == 0:
            self.evaluate()
        if kind := self.checkpointer.due(self.state.step, tokens_before, self.tokens_seen):
            self.save_checkpoint(kind)
        return record

    # ---- rollout and rewards ------------------------------------------------------------------

    def collect(self, prompts: Iterator[tuple[int, Prompt]]) -> RolloutBatch:
        """Roll out and score groups until ``prompts_per_step`` are kept (dynamic sampling) or once."""
        config, group = self.config, self.config.rollout.group_size
        dynamic = config.dynamic_sampling
        kept: list[Sample] = []
        kept_rewards: list[float] = []
        drawn: list[Sample] = []
        outcomes: list[RewardOutcome] = []
        tries = zero_variance = 0
        generate_s = reward_s = 0.0
        while True:
            tries += 1
            need = config.rollout.prompts_per_step - len(kept) // group
            chosen = [next(prompts) for _ in range(need)]
            started = time.perf_counter()
            replay = self.routers is not None
            samples = rollout(self.backend, chosen, config.rollout, self.stop_token, config.training.seed, replay)
            generate_s += time.perf_counter() - started
            started = time.perf_counter()
            outcome = self.score(samples)
            reward_s += time.perf_counter() - started
            self.state.consumed_samples += need
            drawn += samples
            outcomes.append(outcome)
            for g in range(need):
                rewards = outcome.total[g * group : (g + 1) * group]
                equal = all(r == rewards[0] for r in rewards)
                zero_variance += equal
                if not (equal and dynamic.enabled):
                    kept += samples[g * group : (g + 1) * group]
                    kept_rewards += rewards
            full = len(kept) // group >= config.rollout.prompts_per_step
            if not dynamic.enabled or full or tries >= dynamic.max_tries:
                break
        advantages = []
        if kept:
            rewards = torch.tensor(kept_rewards).view(-1, group)
            advantages = group_advantages(rewards, config.advantages.scale, config.advantages.eps).flatten().tolist()
        outcome = RewardOutcome.merge(outcomes, self.rewards.specs)
        stats = self._rollout_stats(drawn, outcome, len(kept) // group, zero_variance, tries, generate_s, reward_s)
        return RolloutBatch(kept, kept_rewards, advantages, stats)

    def score(self, samples: list[Sample], specs=None) -> RewardOutcome:
        """Rewards of ``samples``, every rank scoring its share of them; all ranks get them all."""
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        share = data_parallel_share(range(len(samples)), rank, world)
        fields = sorted({name for s in samples for name in s.prompt.fields})
        mine = [samples[i] for i in share]
        columns = {
            "prompts": [s.prompt.text for s in mine],
            "completions": [self._completion_text(s) for s in mine],
            "completion_ids": [self._completion_ids(s) for s in mine],
            "truncated": [s.truncated for s in mine],
            **{name: [s.prompt.fields.get(name) for s in mine] for name in fields},
        }
        parts: list[RewardOutcome | None] = [None] * world
        torch.distributed.all_gather_object(parts, self.rewards.score(columns, specs))
        used = self.rewards.specs if specs is None else specs
        merged = RewardOutcome.merge(parts, used)
        self.state.reward_failures += sum(sum(counts.values()) for counts in merged.failures.values())
        for name, message in merged.messages.items():
            self.metrics.event(f"reward {name}: {sum(merged.failures[name].values())} failed sample(s), e.g. {message}")
        return merged

    def _completion_ids(self, sample: Sample) -> list[int]:
        stopped = sample.response and sample.response[-1] == self.stop_token and not sample.truncated
        return sample.response[:-1] if stopped else list(sample.response)

    def _completion_text(self, sample: Sample) -> str:
        """The response as text; ids past the tokenizer's vocabulary (a padded model vocabulary) have none."""
        return self.tokenizer.decode([t for t in self._completion_ids(sample) if t < self.tokenizer.vocab_size])

    # ---- log-probs and updates ----------------------------------------------------------------

    def update(self, batch: RolloutBatch) -> tuple[list[dict], dict[str, float]]:
        """The log-prob pass, then the updates: mini-batches × epochs against the old log-probs.

        The rows are one sample each, or one group each with prefix grouping (mini-batches then take
        whole groups). The log-prob pass runs the first epoch's mini-batches as their updates will (the
        same rows in the same micro-batches), so that the first update reproduces its old log-probs bit
        for bit. Besides the times, the step logs its peak memory: ``torch.cuda.max_memory_allocated``
        over the log-prob pass and updates on a GPU, the process's peak resident set so far (getrusage)
        on a CPU.
        """
        config = self.config
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        groups = rows_of.shared_prompt_groups(batch.samples) if self.prefix_grouping else None
        seq = self.row_length(batch.samples, groups)
        rows = rows_of.training_rows(batch.samples, seq, config.rollout.max_new_tokens, groups)
        rows["advantages"] = rows_of.per_slot(torch.tensor(batch.advantages, dtype=torch.float32), rows["sample_index"])
        epochs = [
            [part.tolist() for part in np.array_split(order, config.updates.mini_batches) if len(part)]
            for order in (
                np.random.default_rng([config.training.seed, self.state.step, epoch]).permutation(len(rows["tokens"]))
                for epoch in range(config.updates.epochs)
            )
        ]
        with self._replay():
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

    @property
    def rows_per_micro_batch(self) -> int:
        """``training.micro_batch_size`` counts responses: a prefix-grouped micro-batch holds that many
        responses' worth of groups (at least one)."""
        mbs = self.config.training.micro_batch_size
        return max(1, mbs // self.config.rollout.group_size) if self.prefix_grouping else mbs

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

        mbs = self.rows_per_micro_batch
        dp = parallel_state.get_data_parallel_world_size()
        values = torch.zeros(rows["response_mask"].shape)
        for part in parts:
            share = rows_of.rank_share(len(part), parallel_state.get_data_parallel_rank(), dp, mbs)
            share = [part[i] if i is not None else None for i in share]
            batches = self._on_device(rows_of.micro_batches(rows_of.select_rows(rows, share), mbs))
            outputs = forward_outputs(chunks, batches, mbs, seq, forward.log_probs_step)
            if outputs:  # the last pipeline stage
                local = torch.cat(outputs).float()
            else:
                local = torch.zeros(len(share), *values.shape[1:], device=_device())
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
        mbs = self.rows_per_micro_batch
        mask = rows["response_mask"]
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
        batches = self._on_device(rows_of.micro_batches(local, mbs))
        started = time.perf_counter()
        with self._replay():
            result = train_step(
                self.model_chunks, self.optimizer, [iter(batches) for _ in self.model_chunks],
                len(batches), mbs, seq, self.policy.loss_step,
            )  # fmt: skip
        _synchronize()
        return {**result, "microbatches": len(batches), "train_step_s": time.perf_counter() - started}

    def _replay(self):
        return routing_action(self.routers, "replay_forward") if self.routers else nullcontext()

    @staticmethod
    def _on_device(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        device = _device()
        return [{name: t.to(device) for name, t in b.items()} for b in batches]

    # ---- evaluation ---------------------------------------------------------------------------

    def evaluate(self) -> float:
        """Greedy accuracy (the accuracy reward) on the held-out prompts; logged."""
        config = self.config
        if config.rewards.accuracy is None:
            raise ValueError("eval.path needs rewards.accuracy: the reward held-out answers are scored by")
        from megatron.core import parallel_state

        started = time.perf_counter()
        greedy = SamplingParams(0, max_new_tokens=config.rollout.max_new_tokens, stop_token_ids=[self.stop_token])
        requests = [GenerationRequest(p.ids, greedy) for p in self.heldout]
        step = config.eval.batch_size * parallel_state.get_data_parallel_world_size()
        results = []
        for start in range(0, len(requests), step):
            results += generate_data_parallel(self.model_chunks, requests[start : start + step])
        samples = [
            Sample(-1, p, r.tokens, r.log_probs, r.finish_reason == "length", None) for p, r in zip(self.heldout, results)
        ]
        spec = next(s for s in self.rewards.specs if s.label == config.rewards.accuracy)
        values = self.score(samples, [spec]).values[spec.label]
        accuracy = sum(values) / len(values)
        self.metrics.log({
            "step": self.state.step, "tokens_seen": self.tokens_seen, "heldout_accuracy": accuracy,
            "heldout_samples": len(values),
            "heldout_response_length": float(np.mean([len(s.response) for s in samples])),
            "eval_s": time.perf_counter() - started,
        })  # fmt: skip
        return accuracy

    # ---- metrics ------------------------------------------------------------------------------

    def _rollout_stats(self, drawn: list[Sample], outcome: RewardOutcome, groups_kept: int, zero_variance: int,
                       tries: int, generate_s: float, reward_s: float) -> dict[str, Any]:  # fmt: skip
        """What the step's rollouts measured, over every response drawn (kept or not)."""
        lengths = np.array([len(s.response) for s in drawn])
        total = np.array(outcome.total)
        groups = len(drawn) // self.config.rollout.group_size
        stats = {
            "reward_mean": float(total.mean()),
            "reward_std": float(total.std()),
            **{f"reward/{name}": float(np.mean(values)) for name, values in outcome.values.items()},
            "response_length_mean": float(lengths.mean()),
            "response_length_max": int(lengths.max()),
            "truncated_share": float(np.mean([s.truncated for s in drawn])),
            "zero_variance_share": zero_variance / groups,
            "groups_drawn": groups,
            "groups_kept": groups_kept,
            "rollout_tries": tries,
            "rollout_s": generate_s,
            "reward_s": reward_s,
            "rollout_tokens_per_s": float(lengths.sum()) / generate_s,
            "rollout_checksum": _rollout_checksum(drawn),
            "reward_failures": outcome.failures,
            "reward_failed_samples": sum(sum(c[k] for k in FAILURE_KINDS) for c in outcome.failures.values()),
            "reward_none": outcome.no_reward,
        }
        if self.config.rewards.accuracy is not None:
            stats["accuracy"] = stats[f"reward/{self.config.rewards.accuracy}"]
        return stats

    def _record(self, batch: RolloutBatch, results: list[dict], lr: float) -> dict[str, Any]:
        """The step's training metrics: means over its updates (the first update's ratio apart)."""
        names = ("loss", "pg_loss", "kl", "entropy", "ratio", "clip_low", "clip_high", "dual_clip", "grad_norm")
        record: dict[str, Any] = {"step": self.state.step, "tokens_seen": self.tokens_seen, "lr": lr}
        for name in names:
            values = [r[name] for r in results if name in r]
            record[name] = float(np.mean(values)) if values else None
        record["updates"] = len(results)
        record["train_step_s"] = sum(r["train_step_s"] for r in results)  # forward + backward + optimizer
        record["updates_applied"] = sum(r["update_applied"] for r in results)
        record["first_update_ratio_dev"] = results[0]["ratio_dev"] if results else None
        advantages = np.array(batch.advantages) if batch.advantages else np.zeros(1)
        record.update(
            advantage_mean=float(advantages.mean()), advantage_std=float(advantages.std()),
            advantage_min=float(advantages.min()), advantage_max=float(advantages.max()),
            samples_trained=len(batch.samples), router_replay=self.routers is not None,
            moe_aux_loss_coeff=self.model_cfg.moe_aux_loss_coeff,
            expert_bias_update_rate=self.model_cfg.moe_router_bias_update_rate,
            nonfinite_skipped=self.state.nonfinite_skipped, reward_failures_total=self.state.reward_failures,
        )  # fmt: skip
        return record

    def _log_step(self, record: dict[str, Any]) -> None:
        expert_load = self.expert_load.collect()
        aux = self.aux_loss.collect()
        for layer, value in aux.items():
            expert_load.setdefault(layer, {})["seq_aux_loss"] = value
        record["aux_loss"] = sum(aux.values()) / len(aux) if aux else None
        record["expert_load"] = expert_load
        self.metrics.log(record)


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


def _rollout_checksum(samples: list[Sample]) -> int:
    """A position-weighted sum of every response's tokens, in order: which responses a step drew."""
    total, weight = 0, 1
    for sample in samples:
        for token in sample.response:
            total += weight * token
            weight += 1
    return total


def starting_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a checkpoint, else the latest checkpoint of the run directory it names."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"checkpoint.load_from: {path} is neither a checkpoint nor a run directory holding one")
    return found


def main(config_path: str, overrides: list[str]) -> int:
    from dotsllm.training.plots import write_plots

    config = GRPOConfig.load(config_path, overrides)
    trainer = GRPOTrainer(config)
    trainer.run()
    if _is_logging_rank():
        for path in write_plots(config.run_dir):
            trainer.metrics.event(f"plot: {path}")
    return 0
