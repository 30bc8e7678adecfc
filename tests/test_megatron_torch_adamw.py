"""The distributed optimizer's checkpoint fixes for torch's AdamW (dotsllm/compat/megatron_torch_adamw.py)."""

from __future__ import annotations

import pytest
import torch

from dotsllm.compat import megatron_torch_adamw

pytestmark = pytest.mark.skipif(not megatron_torch_adamw.needed(), reason="TE/Apex FusedAdam keeps its step per group")


def distributed_adam(tiny_config):
    """dots1-tiny (seeded) under DDP with megatron's distributed optimizer (torch AdamW inside)."""
    from dotsllm.parallel import ParallelConfig
    from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer

    torch.manual_seed(0)
    settings = OptimizerSettings(use_distributed_optimizer=True)
    chunks, optimizer = build_model_and_optimizer(tiny_config, ParallelConfig(), "fp32", settings, lr=3e-4)
    return chunks[0], optimizer


def train_step(ddp, optimizer) -> None:
    tokens = torch.randint(0, 8192, (2, 32), generator=torch.Generator().manual_seed(1))
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    ddp(tokens, torch.arange(32)[None], None, labels=tokens).mean().backward()
    assert optimizer.step()[0]


def torch_states(optimizer) -> list[dict]:
    return [s for sub in optimizer.chained_optimizers for s in sub.optimizer.state.values()]


def test_applied_without_te_or_apex():
    assert megatron_torch_adamw.apply() is True


def test_state_dict_of_a_fresh_optimizer_starts_adamw_as_its_first_step_would(megatron_world, tiny_config):
    ddp, optimizer = distributed_adam(tiny_config)
    (sub,) = optimizer.chained_optimizers
    assert {g["step"] for g in sub.state_dict()["optimizer"]["param_groups"]} == {0}
    untouched_ddp, untouched = distributed_adam(tiny_config)
    train_step(ddp, optimizer)
    train_step(untouched_ddp, untouched)
    for a, b in zip(ddp.parameters(), untouched_ddp.parameters(), strict=True):
        assert torch.equal(a, b)


def test_loaded_step_is_one_tensor_per_parameter(megatron_world, tiny_config):
    ddp, optimizer = distributed_adam(tiny_config)
    train_step(ddp, optimizer)
    (sub,) = optimizer.chained_optimizers
    sub.load_state_dict(sub.state_dict())
    steps = [s["step"] for s in torch_states(optimizer)]
    assert len({id(t) for t in steps}) == len(steps) > 1
    train_step(ddp, optimizer)
    assert {float(s["step"]) for s in torch_states(optimizer)} == {2.0}


def test_fully_reshardable_state_loads_through_megatrons_own_path(megatron_world, tiny_config, tmp_path):
    """Save, then load into a fresh optimizer: moments, main params and per-param steps come back."""
    from megatron.core import dist_checkpointing

    from dotsllm.training.checkpoint import OPTIMIZER_METADATA

    def sharded(ddp, optimizer, is_loading):
        model = ddp.module.sharded_state_dict()
        return {"model": model, "optimizer": optimizer.sharded_state_dict(model, is_loading, metadata=OPTIMIZER_METADATA)}

    ddp, optimizer = distributed_adam(tiny_config)
    for _ in range(2):
        train_step(ddp, optimizer)
    dist_checkpointing.save(sharded(ddp, optimizer, False), str(tmp_path))
    fresh_ddp, fresh = distributed_adam(tiny_config)
    loaded = dist_checkpointing.load(sharded(fresh_ddp, fresh, True), str(tmp_path))
    fresh.load_state_dict(loaded["optimizer"])
    for want, got in zip(torch_states(optimizer), torch_states(fresh), strict=True):
        assert want.keys() == got.keys() == {"step", "exp_avg", "exp_avg_sq"}
        for key in want:
            assert torch.equal(want[key], got[key]), key
    for a, b in zip(ddp.parameters(), fresh_ddp.parameters(), strict=True):
        assert torch.equal(a, b)  # the main params (views of the fp32 params) were loaded
