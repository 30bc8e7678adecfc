"""Which samples a GRPO step trains on, against hand-computed sets: DAPO's dynamic sampling drops a group
whose *verifier* reward is flat (not its weighted sum), and a sample whose reward failed is left out of
its group's statistics and of the loss (``rewards.on_failure: mask``), or scored 0 (``zero``).

Through the real ``GRPOStep.collect`` (a world of one) with a scripted rollout backend and scripted
rewards, then the loss weights of the trained samples as the update computes them."""

import math

import pytest
import torch

from dotsllm.config_loading import from_dict
from dotsllm.inference import GenerationResult
from dotsllm.posttrain.grpo import batch as rows_of
from dotsllm.posttrain.grpo.losses import sequence_weights
from dotsllm.posttrain.grpo.prompts import Prompt
from dotsllm.posttrain.grpo.rewards import FAILURE_KINDS, RewardOutcome, RewardSpec
from dotsllm.posttrain.grpo.step import GRPOStep, kept_groups
from dotsllm.recipes.grpo import GRPOConfig

G = 4
# five groups of four: (accuracy, format) per sample; None = the accuracy reward failed for it
SCORES = [
    [(1, 1), (1, 1), (1, 0), (1, 1)],  # all right: flat accuracy (the sum varies)
    [(0, 1), (1, 1), (0, 1), (0, 0)],  # signal
    [(0, 1), (0, 0), (0, 1), (0, 1)],  # all wrong: flat accuracy, though the sum varies: dropped by accuracy
    [(1, 1), (None, 1), (1, 1), (1, 0)],  # the valid three are all right: flat once the failure is masked
    [(1, 1), (0, 1), (None, 1), (None, 0)],  # two valid ones that differ: signal
]
LENGTHS = [[1, 2, 3, 4], [4, 5, 6, 7], [1, 2, 3, 5], [2, 3, 4, 5], [4, 5, 6, 7]]  # response tokens, by member
FORMAT_WEIGHT = 0.1


class ScriptedBackend:
    """Responses of the scripted lengths, group after group."""

    def __init__(self):
        self.group_offset = 0

    def generate(self, requests, record_routing):
        lengths = [n for group in LENGTHS[self.group_offset : self.group_offset + len(requests) // G] for n in group]
        self.group_offset += len(requests) // G
        return [GenerationResult([7] * n, [-0.5] * n, "length") for n in lengths]


class ScriptedRewards:
    specs = [RewardSpec("accuracy_fn", name="accuracy"), RewardSpec("format_fn", weight=FORMAT_WEIGHT, name="format")]

    def __init__(self):
        self.group_offset = 0

    def score(self, columns, specs=None):
        count = len(columns["prompts"]) // G
        scores = [s for group in SCORES[self.group_offset : self.group_offset + count] for s in group]
        self.group_offset += count
        accuracy = [0.0 if a is None else float(a) for a, _ in scores]
        formats = [float(f) for _, f in scores]
        failed = [a is None for a, _ in scores]
        failures = {"accuracy": dict.fromkeys(FAILURE_KINDS, 0), "format": dict.fromkeys(FAILURE_KINDS, 0)}
        failures["accuracy"]["errors"] = sum(failed)
        total = [a + FORMAT_WEIGHT * f for a, f in zip(accuracy, formats)]
        return RewardOutcome({"accuracy": accuracy, "format": formats}, total, failures,
                             {"accuracy": 0, "format": 0}, {}, failed)  # fmt: skip


class Tokenizer:
    vocab_size = 16

    def decode(self, ids):
        return " ".join(map(str, ids))


class Prompts:
    def draw(self, index):
        return Prompt((1, 2, 3), f"prompt {index}", {}, f"p:{index}")


def grpo_step(*overrides) -> GRPOStep:
    values = {
        "run_dir": "unused", "tokenizer": "unused",
        "training": {"seq_length": 16, "micro_batch_size": 4},
        "rollout": {"group_size": G, "prompts_per_step": 5, "max_new_tokens": 8},
        "rewards": {"functions": [{"function": "exact_match", "name": "accuracy"},
                                  {"function": "format", "weight": FORMAT_WEIGHT, "name": "format"}],
                    "accuracy": "accuracy"},
        "dynamic_sampling": {"enabled": True, "max_tries": 1},
        "objective": {"aggregation": "token-mean"},
    }  # fmt: skip
    for key, value in overrides:
        section, name = key.split(".")
        values.setdefault(section, {})[name] = value
    step = GRPOStep.__new__(GRPOStep)
    step.config = from_dict(GRPOConfig, values)
    step.prompts, step.backend, step.rewards, step.routers = Prompts(), ScriptedBackend(), ScriptedRewards(), None
    step.tokenizer, step.stop_token, step.metrics = Tokenizer(), 2, type("Quiet", (), {"event": lambda self, message: None})()
    return step


def trained(batch) -> list[tuple[int, int]]:
    """(group, member) of each sample trained on: its prompt's draw index, and its scripted length."""
    return [(s.draw, LENGTHS[s.draw].index(len(s.response))) for s in batch.samples]


def test_flat_groups_are_those_of_the_verifier_reward_over_valid_samples():
    accuracy = [0.0 if a is None else a for group in SCORES for a, _ in group]
    valid = [a is not None for group in SCORES for a, _ in group]
    total = [(a or 0) + FORMAT_WEIGHT * f for group in SCORES for a, f in group]
    assert kept_groups(accuracy, valid, G, drop_flat=True) == ([1, 4], 3)
    assert kept_groups(accuracy, valid, G, drop_flat=False) == ([0, 1, 2, 3, 4], 3)
    # on the weighted sum, the all-wrong group 2 would have looked like signal (the old filter)
    assert kept_groups(total, [True] * len(total), G, drop_flat=True) == ([0, 1, 2, 3, 4], 0)
    assert kept_groups(accuracy, [True] * len(valid), G, drop_flat=True) == ([1, 3, 4], 2)  # failures as 0


def test_dynamic_sampling_keeps_the_groups_with_accuracy_signal_and_masks_failed_rewards(megatron_world):
    batch = grpo_step().collect(0)
    # kept groups 1 and 4; of group 4 its two failed samples are left out
    assert trained(batch) == [(1, 0), (1, 1), (1, 2), (1, 3), (4, 0), (4, 1)]
    assert batch.stats["groups_dropped"] == 3 and batch.stats["dropped_share"] == pytest.approx(3 / 5)
    assert batch.stats["reward_masked_samples"] == 2 and batch.stats["filter_reward"] == "accuracy"
    # advantages: group 1's totals [0.1, 1.1, 0.1, 0] over its std; group 4 over its two valid samples only
    group1 = torch.tensor([0.1, 1.1, 0.1, 0.0], dtype=torch.float64)
    expected1 = (group1 - group1.mean()) / (group1.std() + 1e-6)
    spread = math.sqrt(2 * 0.5**2)  # totals 1.1 and 0.1: mean 0.6, unbiased std sqrt(0.5)
    expected4 = [0.5 / (spread + 1e-6), -0.5 / (spread + 1e-6)]
    assert batch.advantages == pytest.approx([*expected1.tolist(), *expected4], abs=1e-6)  # totals held in fp32

    # the loss weights of the update (token-mean): 1 / the tokens of the samples trained on, nothing else
    rows = rows_of.training_rows(batch.samples, 16, 8)
    mask = rows["response_mask"].flatten(0, 1)
    tokens = 4 + 5 + 6 + 7 + 4 + 5
    weights = sequence_weights(mask, "token-mean", int(mask.sum()), int((mask.sum(-1) > 0).sum()), 8)
    assert int(mask.sum()) == tokens and weights.tolist() == [1 / tokens] * 6


def test_failed_rewards_scored_zero_stay_in_when_asked(megatron_world):
    batch = grpo_step(("rewards.on_failure", "zero")).collect(0)
    assert trained(batch)[-4:] == [(4, 0), (4, 1), (4, 2), (4, 3)]  # group 3: right, 0, right, right: signal
    assert [g for g, _ in trained(batch)] == [1] * 4 + [3] * 4 + [4] * 4
    assert batch.stats["reward_masked_samples"] == 0


def test_without_dynamic_sampling_every_group_is_trained_but_failures_are_still_masked(megatron_world):
    batch = grpo_step(("dynamic_sampling.enabled", False)).collect(0)
    assert [g for g, _ in trained(batch)] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 3 + [4] * 2
    assert batch.stats["groups_dropped"] == 0 and batch.stats["zero_variance_share"] == pytest.approx(3 / 5)
