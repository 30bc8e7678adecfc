"""Run megatron-core 0.16.1 on a CPU-only PyTorch build (gloo backend).

megatron-core assumes CUDA in a few dozen places. Each patch below names the upstream spot it
covers; :func:`apply` installs them all, only when CUDA is absent, and only on the pinned
megatron-core version (another version gets a clear error instead of silently wrong patches).
On a GPU machine nothing here runs. Written by hand because no library provides it.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

from dotsllm.compat import apply_once

_APPLIED = False


def needed() -> bool:
    return not torch.cuda.is_available()


def apply() -> bool:
    """Install every patch when CUDA is absent; idempotent. Returns whether patches are active."""
    return apply_once(sys.modules[__name__])


# ---- 1. torch.cuda runtime calls -------------------------------------------------------------
# Used as a device (`torch.cuda.current_device()`: rotary inv_freq, router, mappings, schedules)
# and for overlap (`Stream`/`Event`/`current_stream`/`stream`: MoE alltoall dispatcher, shared
# expert side stream, p2p communication, async checkpoint writer). On CPU there is one ordered
# "stream": events and syncs are no-ops. `current_device()` returns the CPU device rather than an
# index: callers pass it as `device=`, also inside autograd's backward (tensor_parallel/mappings.py
# `_AllToAll`, `_gather_along_first_dim`), where the device-rewriting mode of patch 2 is not active.


class _CpuStream:
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def wait_stream(self, other: Any) -> None: ...
    def wait_event(self, event: Any) -> None: ...
    def synchronize(self) -> None: ...
    def query(self) -> bool:
        return True

    def record_event(self, event: Any = None) -> "_CpuEvent":
        return event if event is not None else _CpuEvent()

    def __enter__(self) -> "_CpuStream":
        return self

    def __exit__(self, *exc: Any) -> None: ...


class _CpuEvent:
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def record(self, stream: Any = None) -> None: ...
    def wait(self, stream: Any = None) -> None: ...
    def synchronize(self) -> None: ...
    def query(self) -> bool:
        return True


_DEFAULT_STREAM = _CpuStream()


def patch_cuda_runtime() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: torch.device("cpu")
    cuda.set_device = lambda device: None
    cuda.device_count = lambda: 0
    cuda.synchronize = lambda device=None: None
    cuda.Stream = _CpuStream  # a class: annotations like `torch.cuda.Stream | None` keep working
    cuda.Event = _CpuEvent
    cuda.current_stream = lambda device=None: _DEFAULT_STREAM
    cuda.default_stream = lambda device=None: _DEFAULT_STREAM
    cuda.set_stream = lambda stream: None
    cuda.stream = lambda stream=None: contextlib.nullcontext()


# ---- 2. hard-coded device="cuda" / .cuda() ---------------------------------------------------
# pipeline_parallel/schedules.py (total_num_tokens), optimizer/optimizer.py (found_inf, scale),
# optimizer/clip_grads.py (norm buffers), utils.py (local_multi_tensor_l2_norm),
# language_module.py (`.cuda()` on tied embeddings), transformer/utils.py (default causal mask).
# ---- 3. type-string checks -------------------------------------------------------------------
# optimizer/clip_grads.py `grad.type() == 'torch.cuda.FloatTensor'`, optimizer/optimizer.py and
# optimizer/distrib_optimizer.py "Wrapped parameters must be one of torch.cuda.FloatTensor...":
# on CPU, `Tensor.type()` reports the CUDA name of the same dtype, so the checks compare dtypes.
# Both are done by one TorchFunctionMode, active for the whole process except inside autograd's
# backward pass (torch >= 2.13 routes `autograd.backward` through the mode, which is popped while
# it runs): code that runs in backward gets its device from `current_device()` (patch 1).


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA devices to CPU in every torch call; `.cuda()` is the identity."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and "dtype" not in kwargs:
            name = func(*args, **kwargs)
            return name.replace("torch.", "torch.cuda.", 1) if not args[0].is_cuda else name
        if _is_cuda_device(kwargs.get("device")):
            kwargs = {**kwargs, "device": "cpu"}
        if kwargs.get("pin_memory"):
            kwargs = {**kwargs, "pin_memory": False}
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


_MODE: CudaToCpuMode | None = None


def patch_cuda_devices_and_type_strings() -> None:
    global _MODE
    _MODE = CudaToCpuMode()
    _MODE.__enter__()  # stays on the mode stack for the life of the process


# ---- 4. tensor_parallel/random.py: the CUDA RNG tracker ----------------------------------------
# `_get_cuda_rng_state`, `_set_cuda_rng_state`, and `torch.cuda.get_rng_state/manual_seed` inside
# `CudaRNGStatesTracker.add`/`fork` use the CPU generator, so per-rank model-parallel RNG streams
# (dropout, GPU-style init) keep working after `model_parallel_cuda_manual_seed`.


def patch_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mc_random

    mc_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mc_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(seed)


# ---- 5. transformer/moe/moe_utils.py -----------------------------------------------------------
# (The fp32 router's `te_general_gemm` without TE is fixed in megatron_without_te.py: GPUs hit it too.)
# `maybe_move_tensor_to_cpu(..., as_numpy=True)` only converts CUDA tensors, so on CPU the alltoall
# dispatcher's split sizes stay tensors, which gloo's `all_to_all_single` rejects and `.tolist()`
# callers do not expect: CPU tensors become numpy arrays too, as on GPU.


def patch_moe_utils() -> None:
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    original = moe_utils.maybe_move_tensor_to_cpu

    @functools.wraps(original)
    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if as_numpy and torch.is_tensor(tensor) and not tensor.is_cuda:
            return tensor.detach().numpy().copy()
        return original(tensor, as_numpy=as_numpy, record_stream=record_stream)

    moe_utils.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    token_dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu


# ---- 6. transformer/torch_norm.py: WrappedTorchNorm under sequence parallelism ----------------
# It asserts sequence parallelism is off. With TP+SP (required for MoE with TP) the norm is built
# as usual and its weight is marked `sequence_parallel`, so finalize_model_grads all-reduces its
# grad over the TP group, as Megatron does for TE norms.


def patch_torch_norm() -> None:
    import dataclasses

    from megatron.core.transformer import torch_norm

    original_new = torch_norm.WrappedTorchNorm.__new__

    def __new__(cls, config, hidden_size, eps=1e-5, **kwargs):
        if not config.sequence_parallel:
            return original_new(cls, config, hidden_size, eps, **kwargs)
        norm = original_new(cls, dataclasses.replace(config, sequence_parallel=False), hidden_size, eps, **kwargs)
        for param in norm.parameters():
            param.sequence_parallel = True
        return norm

    torch_norm.WrappedTorchNorm.__new__ = staticmethod(__new__)


PATCHES: list[Callable[[], None]] = [
    patch_cuda_runtime,
    patch_cuda_devices_and_type_strings,
    patch_rng_tracker,
    patch_moe_utils,
    patch_torch_norm,
]
