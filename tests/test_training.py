"""dots1-tiny trains on CPU through megatron-core's DDP, optimizer and schedule."""

from dotsllm.training.fixed_batch import train_on_fixed_batch


def test_tiny_overfits_fixed_batch(megatron_world, tiny_config):
    losses = train_on_fixed_batch(tiny_config, steps=30)
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0], losses
