"""A recipe composes the trainer's parts: here pretraining's spec with another step strategy (a loss on
half of each row) and a train state with a counter of its own, which the one checkpoint schema saves and
restores. No trainer subclass."""

import dataclasses
import signal

import pytest
import torch

from dotsllm.recipes.pretrain import PRETRAIN, PretrainConfig
from dotsllm.train import Trainer
from dotsllm.training.checkpoint_state import CheckpointMeta, TrainState
from dotsllm.training.lm_step import LMStep
from dotsllm.training.step import lm_forward_step, masked_token_loss
from pretrain_runs import TINY_CONFIG
from shards import write_shard

VOCAB, EOD = 8192, 0


@dataclasses.dataclass
class CountingState(TrainState):
    answers_seen: int = 0


def first_half_loss(data_iterator, model):
    """Next-token loss on the first half of each row only (as an answer mask would)."""
    output, _ = lm_forward_step(data_iterator, model)

    def loss(per_token_loss):
        mask = torch.zeros_like(per_token_loss)
        mask[:, : mask.shape[1] // 2] = 1
        return masked_token_loss(mask, per_token_loss)

    return output, loss


class CountingStep:
    """LMStep with the half-row loss, counting the loss tokens into the recipe's own state field."""

    def __init__(self, parts):
        config = parts.config
        self.lm = LMStep(
            parts, first_half_loss, diagnostics=config.diagnostics, train_tokens=config.training.train_tokens,
            data_end="data exhausted",
        )  # fmt: skip
        self.end_reason, self.validate, self.close = self.lm.end_reason, self.lm.validate, self.lm.close

    def step(self, state, lr):
        outcome = self.lm.step(state, lr)
        outcome.counters["answers_seen"] = outcome.record["loss_tokens"]
        return outcome


HALF_ROW = dataclasses.replace(PRETRAIN, name="half-row", build_step=CountingStep, state=CountingState)


@pytest.fixture
def restore_signals():
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)


def test_swapped_step_and_train_state_are_trained_and_checkpointed(megatron_world, tmp_path, restore_signals):
    shard = write_shard(tmp_path / "shards" / "train", 200, VOCAB, EOD)
    overrides = [
        f"run_dir={tmp_path / 'run'}", f"data.blend=[{shard}]", f"data.vocab_size={VOCAB}", f"data.eod_id={EOD}",
        "training.train_tokens=2048", "training.eval_interval=0", "checkpoint.milestone_every_tokens=0",
        "checkpoint.save_every_steps=0", "logging.wandb_mode=disabled",
    ]  # fmt: skip
    trainer = Trainer(HALF_ROW, PretrainConfig.load(TINY_CONFIG, overrides))
    try:
        assert trainer.train() == "token budget reached"
    finally:
        trainer.metrics.close()
    # 2 steps of 8 rows of 128 tokens; the loss counts half of each row
    assert trainer.state == CountingState(step=2, consumed_samples=16, tokens_seen=2048, answers_seen=2 * 8 * 64)
    meta = CheckpointMeta.read(tmp_path / "run" / "checkpoints" / "step_00000002")
    assert meta.trainer == "half-row" and meta.train_state["answers_seen"] == 1024

    resumed = Trainer(HALF_ROW, PretrainConfig.load(TINY_CONFIG, overrides))
    resumed.metrics.close()
    assert resumed.state == trainer.state  # the recipe's own progress came back
