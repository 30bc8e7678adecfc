"""megatron-core 0.16.1's distributed optimizer with torch's AdamW: fixes for its checkpoint code.

Without Transformer Engine or Apex, megatron-core's optimizers fall back to ``torch.optim.AdamW``,
which keeps a ``step`` tensor in each parameter's state (TE's and Apex's FusedAdam keep one per
param group). ``DistributedOptimizer``'s state-dict code mishandles that ``step`` on GPU machines
without TE as on CPU, so :func:`apply` installs these fixes whenever TE/Apex optimizers are absent
(CUDA or not), on the pinned megatron-core version only. Each patch names the upstream spot.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

import torch

from dotsllm.compat import apply_once

_APPLIED = False


def needed() -> bool:
    from megatron.core.optimizer import distrib_optimizer

    return not distrib_optimizer.HAVE_APEX_OR_TE


def apply() -> bool:
    """Install every patch when TE/Apex optimizers are absent; idempotent. Returns whether active."""
    return apply_once(sys.modules[__name__])


def adamw_step(value: float, param: torch.Tensor, group: dict) -> torch.Tensor:
    """A ``step`` entry as torch's Adam/AdamW keeps it (on the param's device if capturable/fused)."""
    device = param.device if group.get("capturable") or group.get("fused") else "cpu"
    return torch.tensor(float(value), dtype=torch.float32, device=device)


# ---- 1. DistributedOptimizer.state_dict: a fresh optimizer ---------------------------------------
# `assert len(steps) == 1` over the params' `step`s fails while no param has state yet, e.g. when
# `sharded_state_dict(is_loading=True)` builds the state dict to load into. Fix: first give every
# param the state torch's AdamW creates on its first update (zero moments, step 0), so training
# afterwards is unchanged.


def patch_state_dict_of_fresh_optimizer() -> None:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer.state_dict

    @functools.wraps(original)
    def state_dict(self):
        if self.optimizer is not None and not self.optimizer.state:
            self.init_state_fn(self.optimizer, self.config)
            for group in self.optimizer.param_groups:
                for param in group["params"]:
                    self.optimizer.state[param]["step"] = adamw_step(0, param, group)
        return original(self)

    DistributedOptimizer.state_dict = state_dict


# ---- 2. DistributedOptimizer.load_state_dict: one `step` tensor for every param ------------------
# The torch-optimizer branch sets `s["step"] = step` with the same tensor for all params; AdamW
# then adds 1 to it once per param and step, so bias correction is wrong after a resume. Fix: each
# param gets its own copy.


def patch_load_state_dict_shared_step() -> None:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer.load_state_dict

    @functools.wraps(original)
    def load_state_dict(self, state_dict):
        original(self, state_dict)
        for state in self.optimizer.state.values():
            if "step" in state:
                state["step"] = state["step"].clone()

    DistributedOptimizer.load_state_dict = load_state_dict


# ---- 3. DistributedOptimizer._set_main_param_and_optimizer_states --------------------------------
# Called by the parameter-state loaders (`load_parameter_state_from_fully_reshardable`, ...), it
# copies every entry of the param's optimizer state from `tensors`, but the loaders leave `step`
# out (KeyError), and it copies into the main param, a view of a leaf that requires grad, with
# autograd on (RuntimeError). Fix: run under no_grad; entries missing from `tensors` keep their value.


def patch_set_main_param_and_optimizer_states() -> None:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer._set_main_param_and_optimizer_states

    @functools.wraps(original)
    @torch.no_grad()
    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        current = self._get_main_param_and_optimizer_states(model_param)
        original(self, model_param, {**current, **tensors})

    DistributedOptimizer._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states


PATCHES: list[Callable[[], None]] = [
    patch_state_dict_of_fresh_optimizer,
    patch_load_state_dict_shared_step,
    patch_set_main_param_and_optimizer_states,
]
