"""Process groups for a run: torch.distributed + megatron-core ``parallel_state`` + RNG seeds."""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from dotsllm.compat import megatron_cpu
from dotsllm.model.config import ParallelConfig


def init_distributed(parallel: ParallelConfig, seed: int = 1234, timeout_s: int = 600) -> None:
    """Initialize from torchrun's environment (or as a single process) and build megatron's groups.

    NCCL on GPU, gloo on CPU (where the CPU layer for megatron-core is applied first).
    """
    from megatron.core import parallel_state, tensor_parallel

    on_cpu = megatron_cpu.apply()
    if not torch.distributed.is_initialized():
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        if on_cpu is False:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        backend = "gloo" if on_cpu else "nccl"
        timeout = timedelta(seconds=timeout_s)
        if "MASTER_ADDR" in os.environ:  # torchrun / srun: env:// rendezvous
            torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
        else:  # a plain `python` process: a world of one, no network
            torch.distributed.init_process_group(
                backend=backend, store=torch.distributed.HashStore(), rank=0, world_size=1, timeout=timeout
            )
    parallel.data_parallel_size(torch.distributed.get_world_size())  # validates the layout
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tp,
            pipeline_model_parallel_size=parallel.pp,
            virtual_pipeline_model_parallel_size=parallel.vpp,
            context_parallel_size=parallel.cp,
            expert_model_parallel_size=parallel.ep,
            expert_tensor_parallel_size=parallel.etp,
        )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

