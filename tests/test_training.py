"""dots1-tiny trains on CPU through megatron-core's DDP, optimizer and schedule."""

import pytest

from dotsllm.training.fixed_batch import train_on_fixed_batch


def test_tiny_overfits_fixed_batch(megatron_world, tiny_config):
    losses = train_on_fixed_batch(tiny_config, steps=30)
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0], losses


def test_reported_loss_does_not_depend_on_the_microbatch_split(megatron_world, tiny_config):
    """The schedule divides each microbatch loss by their number in place; the logged loss must not."""
    import torch

    from dotsllm.model import ParallelConfig
    from dotsllm.training.fixed_batch import make_lm_batch
    from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer
    from dotsllm.training.step import train_step

    tokens = torch.randint(0, tiny_config.vocab_size, (4, 65), generator=torch.Generator().manual_seed(3))
    losses = []
    for micro in (4, 2, 1):
        torch.manual_seed(0)
        settings = OptimizerSettings(use_distributed_optimizer=False)
        ddp, optimizer = build_model_and_optimizer(tiny_config, ParallelConfig(), "fp32", settings)
        batches = [make_lm_batch(tokens[i : i + micro]) for i in range(0, 4, micro)]
        losses.append(train_step(ddp, optimizer, iter(batches), len(batches), micro, 64)["loss"])
    assert losses[0] > 8.0  # ~ln(vocab) at initialization
    assert losses[1] == pytest.approx(losses[0], rel=1e-6) and losses[2] == pytest.approx(losses[0], rel=1e-6)


def test_norms_and_biases_get_no_weight_decay(megatron_world, tiny_config):
    from dotsllm.model import ParallelConfig
    from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer, set_lr_and_weight_decay

    settings = OptimizerSettings(use_distributed_optimizer=False)
    ddp, optimizer = build_model_and_optimizer(tiny_config, ParallelConfig(), "fp32", settings)
    set_lr_and_weight_decay(optimizer, 2e-4, 0.1)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert all(g["lr"] == 2e-4 for g in optimizer.param_groups)
    model = ddp[0].module
    for name, param in model.named_parameters():
        main = getattr(param, "main_param", param)
        expected = 0.0 if param.dim() == 1 else 0.1
        assert decay_of.get(id(main), decay_of.get(id(param))) == expected, name
