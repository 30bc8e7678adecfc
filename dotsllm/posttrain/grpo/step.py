"""GRPO's step strategy: collect → score → log-prob pass → update.

A step draws prompts (in an order that is a function of the prompts drawn so far), rolls out G responses
each on the training layout, scores them (reward workers), drops all-equal groups and draws again when
dynamic sampling is on, computes group-relative advantages, then runs the log-prob pass and the updates
(:class:`~dotsllm.posttrain.grpo.update.PolicyUpdate`). Everything random is seeded by the run's seed
and the step or draw index, so a resumed run repeats the uninterrupted one bit for bit. Validation is
the greedy accuracy on held-out prompts (``eval.path``) before training, every ``training.eval_interval``
steps and at the end.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dotsllm.inference import GenerationRequest, SamplingParams, completion_ids, data_parallel_share, generate_data_parallel
from dotsllm.model.routing_replay import moe_routers
from dotsllm.chat_template import END_RESPONSE
from dotsllm.posttrain.grpo.advantages import group_advantages
from dotsllm.posttrain.grpo.prompts import Prompt, PromptSet
from dotsllm.posttrain.grpo.rewards import RewardOutcome, RewardRunner
from dotsllm.posttrain.grpo.rollout import BACKENDS, Sample, rollout
from dotsllm.posttrain.grpo.update import PolicyUpdate
from dotsllm.training.checkpoint_state import TrainState
from dotsllm.training.spec import Parts, StepOutcome, Validation

PROMPT_ERRORS_FILE = "prompt_errors.jsonl"


@dataclass
class GRPOState(TrainState):
    """GRPO's progress. ``consumed_samples`` counts the prompts drawn (the draw order's position);
    ``tokens_seen`` the prompt + response tokens of the samples trained on."""

    samples: int = 0  # responses trained on
    reward_failures: int = 0  # samples a reward function failed on (raised, hung, non-finite)


@dataclass
class RolloutBatch:
    """The samples of a step's kept groups (a group's G side by side), their rewards and advantages,
    the prompts drawn, and what the step's rollouts measured over every group drawn."""

    samples: list[Sample]
    rewards: list[float]
    advantages: list[float]
    drawn: int
    reward_failures: int
    stats: dict[str, Any]


class GRPOStep:
    """GRPO on ``parts`` (the model chunks built for router replay and prefix grouping as configured)."""

    def __init__(self, parts: Parts):
        config = self.config = parts.config
        prefix_grouping = config.prefix_grouping
        self.prompts: PromptSet = parts.data
        self.tokenizer, self.metrics = parts.tokenizer, parts.metrics
        self.model_cfg, self.model_chunks = parts.model_cfg, parts.model_chunks
        self.stop_token = self.tokenizer.special_ids([END_RESPONSE])[END_RESPONSE]
        self.routers = moe_routers(self.model_chunks) if config.moe.router_replay else None
        if config.training.prefix_grouping and not prefix_grouping:
            self.metrics.event("prefix grouping off: rollout.group_size 1 shares no prompt (standard rows)")
        self.backend = BACKENDS[config.rollout.backend](self.model_chunks, config.rollout)
        self.rewards = RewardRunner(config.rewards)
        reference = None
        if config.objective.kl_beta > 0:  # the frozen initial policy, in this layout
            from dotsllm.convert.checkpoint_io import load_checkpoint_model
            from dotsllm.training.checkpoint import resolve_checkpoint
            from dotsllm.training.optimizer import PRECISIONS

            dtype = PRECISIONS[config.training.precision]
            reference, _ = load_checkpoint_model(resolve_checkpoint(config.checkpoint.load_from), dtype, prefix_grouping)
        self.update = PolicyUpdate(config, self.model_chunks, parts.optimizer, self.routers, reference, prefix_grouping)
        self.heldout: list[Prompt] = []  # the held-out prompts, in file order
        if config.eval.path:
            settings = dataclasses.replace(config.prompts, path=config.eval.path)
            heldout = PromptSet(settings, self.tokenizer, config.max_prompt_tokens, 0).prompts
            self.heldout = heldout[: config.eval.samples or None]
        if self.prompts.errors:
            errors_file = parts.run_dir / PROMPT_ERRORS_FILE
            if torch.distributed.get_rank() == 0:
                self.prompts.write_errors(errors_file)
            self.metrics.event(
                f"prompts: {len(self.prompts)} usable, {len(self.prompts.errors)} malformed "
                f"{self.prompts.error_counts} (listed in {errors_file})"
            )
        self.metrics.event(
            f"MoE during RL: expert-bias update rate {self.model_cfg.moe_router_bias_update_rate}, aux-loss "
            f"coefficient {self.model_cfg.moe_aux_loss_coeff}, router replay {'on' if self.routers else 'off'}, "
            f"prefix grouping {'on' if prefix_grouping else 'off'}"
        )

    # ---- the strategy -------------------------------------------------------------------------

    def end_reason(self, state: GRPOState) -> str | None:
        return "step budget reached" if state.step >= self.config.training.steps else None

    def step(self, state: GRPOState, lr: float) -> StepOutcome:
        """One rollout batch and its updates."""
        config = self.config
        start = time.perf_counter()
        batch = self.collect(state.consumed_samples)
        results, timing = [], {"logprob_s": 0.0, "update_s": 0.0}
        if batch.samples:
            results, timing = self.update(batch.samples, batch.advantages, state.step)
        tokens = sum(len(s.prompt.ids) + len(s.response) for s in batch.samples)
        record = {
            **self._record(batch, results, state.reward_failures + batch.reward_failures), **batch.stats, **timing,
            "step_s": time.perf_counter() - start,
            "update_tokens_per_s": tokens * config.updates.epochs / timing["update_s"] if results else None,
        }  # fmt: skip
        return StepOutcome(
            record, samples=batch.drawn, tokens=tokens, trained_tokens=tokens * config.updates.epochs,
            microbatches=sum(r["microbatches"] for r in results),
            skipped_updates=sum(not r["update_applied"] for r in results),
            counters={"samples": len(batch.samples), "reward_failures": batch.reward_failures},
        )  # fmt: skip

    def validate(self, state: GRPOState, when: Validation) -> dict[str, Any] | None:
        """Held-out accuracy before a fresh run's first step, every ``training.eval_interval`` steps, and
        at the end (unless the last step just had it)."""
        interval = self.config.training.eval_interval
        at_interval = bool(interval) and state.step % interval == 0
        due = {"start": state.step == 0, "step": at_interval, "end": not at_interval}[when]
        return self.evaluate() if self.heldout and due else None

    def close(self) -> None:
        self.rewards.close()

    # ---- rollout and rewards ------------------------------------------------------------------

    def collect(self, consumed: int) -> RolloutBatch:
        """Roll out and score groups of the prompts drawn from ``consumed`` on until ``prompts_per_step``
        are kept (dynamic sampling) or once; the samples trained on are those of the kept groups whose
        rewards did not fail (unless ``rewards.on_failure: zero``)."""
        config, group = self.config, self.config.rollout.group_size
        dynamic = config.dynamic_sampling
        mask_failures = config.rewards.on_failure == "mask"
        kept: list[Sample] = []
        kept_rewards: list[float] = []
        kept_valid: list[bool] = []
        drawn: list[Sample] = []
        outcomes: list[RewardOutcome] = []
        tries = zero_variance = failures = 0
        generate_s = reward_s = 0.0
        next_draw = consumed
        while True:
            tries += 1
            need = config.rollout.prompts_per_step - len(kept) // group
            chosen = [(index, self.prompts.draw(index)) for index in range(next_draw, next_draw + need)]
            next_draw += need
            started = time.perf_counter()
            replay = self.routers is not None
            samples = rollout(self.backend, chosen, config.rollout, self.stop_token, config.training.seed, replay)
            generate_s += time.perf_counter() - started
            started = time.perf_counter()
            outcome = self.score(samples)
            reward_s += time.perf_counter() - started
            failures += outcome.failed_samples
            drawn += samples
            outcomes.append(outcome)
            valid = [not f for f in outcome.failed] if mask_failures else [True] * len(samples)
            signal = outcome.values[config.filter_reward] if config.filter_reward else outcome.total
            groups, flat = kept_groups(signal, valid, group, dynamic.enabled)
            zero_variance += flat
            for g in groups:
                members = slice(g * group, (g + 1) * group)
                kept += samples[members]
                kept_rewards += outcome.total[members]
                kept_valid += valid[members]
            full = len(kept) // group >= config.rollout.prompts_per_step
            if not dynamic.enabled or full or tries >= dynamic.max_tries:
                break
        advantages = []
        if kept:
            rewards, valid = torch.tensor(kept_rewards).view(-1, group), torch.tensor(kept_valid).view(-1, group)
            advantages = group_advantages(rewards, config.advantages.scale, config.advantages.eps, valid).flatten().tolist()
        trained = [i for i, ok in enumerate(kept_valid) if ok]
        outcome = RewardOutcome.merge(outcomes, self.rewards.specs)
        stats = self._rollout_stats(drawn, outcome, len(kept) // group, zero_variance, tries, generate_s, reward_s)
        dropped = zero_variance if dynamic.enabled else 0
        stats.update(
            groups_dropped=dropped, dropped_share=dropped / stats["groups_drawn"],
            filter_reward=config.filter_reward or "total",
            reward_masked_samples=len(kept) - len(trained),  # kept groups' samples whose reward failed
        )  # fmt: skip
        return RolloutBatch(
            [kept[i] for i in trained], [kept_rewards[i] for i in trained], [advantages[i] for i in trained],
            next_draw - consumed, failures, stats,
        )  # fmt: skip

    def score(self, samples: list[Sample], specs=None) -> RewardOutcome:
        """Rewards of ``samples``, every rank scoring its share of them; all ranks get them all."""
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        share = data_parallel_share(range(len(samples)), rank, world)
        fields = sorted({name for s in samples for name in s.prompt.fields})
        mine = [samples[i] for i in share]
        completions = [completion_ids(s.response, stopped=not s.truncated) for s in mine]
        columns = {
            "prompts": [s.prompt.text for s in mine],
            # ids past the tokenizer's vocabulary (a padded model vocabulary) have no text
            "completions": [self.tokenizer.decode([t for t in ids if t < self.tokenizer.vocab_size]) for ids in completions],
            "completion_ids": completions,
            "truncated": [s.truncated for s in mine],
            **{name: [s.prompt.fields.get(name) for s in mine] for name in fields},
        }
        parts: list[RewardOutcome | None] = [None] * world
        torch.distributed.all_gather_object(parts, self.rewards.score(columns, specs))
        merged = RewardOutcome.merge(parts, self.rewards.specs if specs is None else specs)
        for name, message in merged.messages.items():
            self.metrics.event(f"reward {name}: {sum(merged.failures[name].values())} failed sample(s), e.g. {message}")
        return merged

    # ---- validation ---------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Greedy accuracy (the accuracy reward) on the held-out prompts."""
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
        return {
            "heldout_accuracy": sum(values) / len(values),
            "heldout_samples": len(values),
            "heldout_response_length": float(np.mean([len(s.response) for s in samples])),
            "eval_s": time.perf_counter() - started,
        }

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
            "reward_failed_samples": outcome.failed_samples,
            "reward_none": outcome.no_reward,
        }
        if self.config.rewards.accuracy is not None:
            stats["accuracy"] = stats[f"reward/{self.config.rewards.accuracy}"]
        return stats

    def _record(self, batch: RolloutBatch, results: list[dict], reward_failures_total: int) -> dict[str, Any]:
        """The step's training metrics: means over its updates (the first update's ratio apart)."""
        names = ("loss", "pg_loss", "kl", "entropy", "ratio", "clip_low", "clip_high", "dual_clip", "grad_norm")
        record: dict[str, Any] = {}
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
            reward_failures_total=reward_failures_total,
        )  # fmt: skip
        return record


def kept_groups(signal: Sequence[float], valid: Sequence[bool], group: int, drop_flat: bool) -> tuple[list[int], int]:
    """The groups (``group`` consecutive samples each) a step trains on, and how many are flat: their
    ``signal`` (the verifier reward) is the same over their ``valid`` samples (all right, all wrong, or
    fewer than two valid), so their advantages carry no signal. ``drop_flat`` (DAPO's dynamic
    sampling) leaves those out."""
    flat = [
        len({signal[i] for i in range(g * group, (g + 1) * group) if valid[i]}) < 2 for g in range(len(signal) // group)
    ]
    return [g for g, no_signal in enumerate(flat) if not (no_signal and drop_flat)], sum(flat)


def _rollout_checksum(samples: list[Sample]) -> int:
    """A position-weighted sum of every response's tokens, in order: which responses a step drew."""
    total, weight = 0, 1
    for sample in samples:
        for token in sample.response:
            total += weight * token
            weight += 1
    return total
