"""A post-training trainer swaps the Trainer's parts: its forward step (the loss) and its train state,
which the one checkpoint schema saves and restores."""

import dataclasses
import signal

import pytest
import torch

from dotsllm.train import PretrainConfig, Trainer
from dotsllm.training.checkpoint_state import CheckpointMeta, TrainState
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


class HalfRowTrainer(Trainer):
    trainer_name = "half-row"
    forward_step = staticmethod(first_half_loss)

    def build_train_state(self) -> CountingState:
        return CountingState()

    def step(self, microbatches):
        result = super().step(microbatches)
        self.state.answers_seen += result["tokens"]
        return result


@pytest.fixture
def restore_signals():
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)


def test_swapped_loss_and_train_state_are_trained_and_checkpointed(megatron_world, tmp_path, restore_signals):
    shard = write_shard(tmp_path / "shards" / "train", 200, VOCAB, EOD)
    overrides = [
        f"run_dir={tmp_path / 'run'}", f"data.blend=[{shard}]", f"data.vocab_size={VOCAB}", f"data.eod_id={EOD}",
        "training.train_tokens=2048", "training.eval_interval=0", "checkpoint.milestone_every_tokens=0",
        "checkpoint.save_every_steps=0", "logging.wandb_mode=disabled",
    ]  # fmt: skip
    trainer = HalfRowTrainer(PretrainConfig.load(TINY_CONFIG, overrides))
    try:
        assert trainer.train() == "token budget reached"
    finally:
        trainer.metrics.close()
    assert trainer.state == CountingState(step=2, consumed_samples=16, answers_seen=2 * 8 * 64)  # half of 128 per row
    meta = CheckpointMeta.read(tmp_path / "run" / "checkpoints" / "step_00000002")
    assert meta.trainer == "half-row" and meta.train_state["answers_seen"] == 1024

    resumed = HalfRowTrainer(PretrainConfig.load(TINY_CONFIG, overrides))
    resumed.metrics.close()
    assert resumed.state == trainer.state  # the subclass's own progress came back
