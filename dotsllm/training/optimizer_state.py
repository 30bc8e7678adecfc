"""The optimizer's checkpoint state, in a form that loads into any TP/PP/EP/DP layout.

megatron-core's optimizer is a ``ChainedOptimizer`` with one sub-optimizer per parameter kind
(dense, plus expert when EP > 1), and each sub-optimizer's non-tensor state (param groups, step)
is laid out by its own groups, so megatron's own state dict changes shape with EP. Here:

- per-parameter tensors (Adam's moments, the distributed optimizer's main params) stay megatron's
  name-keyed ShardedTensors, which ``dist_checkpointing`` reshards;
- the non-tensor state is saved once: ``param_groups`` (hyperparameters, one entry per group
  identity without the expert flag) and ``step``;
- each sub-optimizer's own non-tensor entries are nonpersistent (not saved). To load, the saved
  hyperparameters and step are first set on this run's optimizer, so those entries, built from it,
  hold the checkpoint's values when megatron's ``load_state_dict`` restores them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dotsllm.compat.megatron_torch_adamw import adamw_step
from dotsllm.training.checkpoint import OPTIMIZER_METADATA

_NOT_HYPERPARAMETERS = ("params", "step", "is_expert_parallel")


def sharded_state_dict(optimizer, model_state: dict[str, Any], saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The optimizer's part of a checkpoint: to save, or to load into when given ``saved``, the
    checkpoint's common optimizer state (:func:`saved_common_state`)."""
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
    from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject, ShardedBase

    if saved is not None:
        _adopt(optimizer, saved)

    def local(value):
        persistent = isinstance(value, (ShardedBase, LocalNonpersistentObject))
        return value if persistent else LocalNonpersistentObject(value)

    is_loading = saved is not None
    per_optimizer = {
        i: dict_list_map_inplace(local, sub.sharded_state_dict(model_state, is_loading, metadata=OPTIMIZER_METADATA))
        for i, sub in enumerate(_sub_optimizers(optimizer))
    }
    return {"param_groups": _merged_param_groups(optimizer), "step": _step(optimizer), "per_optimizer": per_optimizer}


def saved_common_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """A checkpoint's ``param_groups`` and ``step`` (the optimizer's non-tensor state)."""
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_common_state_dict(str(ckpt_dir))["optimizer"]


def load_state_dict(optimizer, loaded: dict[str, Any]) -> None:
    """Restore the optimizer from what ``dist_checkpointing.load`` returned for :func:`sharded_state_dict`."""
    for i, sub in enumerate(_sub_optimizers(optimizer)):
        sub.load_state_dict(loaded["per_optimizer"][i])


def _adopt(optimizer, saved: dict[str, Any]) -> None:
    """Give every parameter optimizer state (zero moments until loaded) with the saved step and
    its group's saved hyperparameters."""
    saved_groups = {_group_identity(group): group for group in saved["param_groups"]}
    for sub in _sub_optimizers(optimizer):
        sub.init_state_fn(sub.optimizer, sub.config)
        for group in sub.optimizer.param_groups:
            identity = _group_identity(group)
            if identity not in saved_groups:
                raise ValueError(f"the checkpoint has no optimizer param group {identity}; it has {list(saved_groups)}")
            group.update(_hyperparameters(saved_groups[identity]))
        _set_step(sub.optimizer, saved["step"])


def _sub_optimizers(optimizer) -> list:
    return getattr(optimizer, "chained_optimizers", [optimizer])


def _group_identity(group: dict) -> tuple:
    """megatron's param group key (wd_mult, lr_mult, ...) without the expert flag, which EP changes."""
    from megatron.core.optimizer.optimizer import param_group_identifier_keys

    return tuple(group[key] for key in param_group_identifier_keys if key != "is_expert_parallel")


def _hyperparameters(group: dict) -> dict:
    return {k: v for k, v in group.items() if k not in _NOT_HYPERPARAMETERS}


def _merged_param_groups(optimizer) -> list[dict]:
    """One hyperparameter dict per group identity; dense and expert groups of one identity agree."""
    merged: dict[tuple, dict] = {}
    for sub in _sub_optimizers(optimizer):
        for group in sub.optimizer.param_groups:
            hyper = merged.setdefault(_group_identity(group), _hyperparameters(group))
            if hyper != _hyperparameters(group):
                raise ValueError(f"param groups {_group_identity(group)} differ: {hyper} vs {_hyperparameters(group)}")
    return list(merged.values())


def _keeps_step_per_param(torch_optimizer: torch.optim.Optimizer) -> bool:
    """torch's Adam/AdamW count steps per parameter; TE's and Apex's FusedAdam per param group."""
    return isinstance(torch_optimizer, torch.optim.Adam)


def _step(optimizer) -> int:
    """The number of updates applied (0 before the first); the same for every parameter."""
    steps = set()
    for sub in _sub_optimizers(optimizer):
        per_param = _keeps_step_per_param(sub.optimizer)
        for group in sub.optimizer.param_groups:
            if per_param:
                states = (sub.optimizer.state.get(p, {}) for p in group["params"])
                steps.update(int(state["step"]) for state in states if "step" in state)
            elif "step" in group:
                steps.add(int(group["step"]))
    if len(steps) > 1:
        raise ValueError(f"optimizer step counts differ between parameters: {sorted(steps)}")
    return steps.pop() if steps else 0


def _set_step(torch_optimizer: torch.optim.Optimizer, step: int) -> None:
    per_param = _keeps_step_per_param(torch_optimizer)
    for group in torch_optimizer.param_groups:
        if per_param:
            for param in group["params"]:
                torch_optimizer.state[param]["step"] = adamw_step(step, param, group)
        else:
            group["step"] = step
