"""Process groups for a run: torch.distributed + megatron-core ``parallel_state`` + RNG seeds."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from datetime import timedelta

import torch

from dotsllm.compat import megatron_cpu, megatron_per_token_loss, megatron_without_te
from dotsllm.parallel.config import ParallelConfig


def launcher_ranks(env: Mapping[str, str]) -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process as its launcher set them.

    torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` when present, else srun's ``SLURM_PROCID``/
    ``SLURM_NTASKS``/``SLURM_LOCALID`` (one task per GPU, as ``launch/slurm/pretrain.sbatch`` starts them),
    else a world of one.
    """
    if "RANK" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"])
    return 0, 1, 0


def init_distributed(parallel: ParallelConfig, seed: int = 1234, timeout_s: int = 600) -> None:
    """Initialize from the launcher's environment (or as a single process) and build megatron's groups.

    With ``MASTER_ADDR`` set, an env:// rendezvous there (ranks from torchrun or srun, see
    :func:`launcher_ranks`); without, a world of one. NCCL on GPU, gloo on CPU (where the CPU layer
    for megatron-core is applied first).
    """
    from megatron.core import parallel_state, tensor_parallel

    on_cpu = megatron_cpu.apply()
    megatron_without_te.apply()
    megatron_per_token_loss.apply()
    if not torch.distributed.is_initialized():
        _init_process_group(on_cpu, timeout_s, single_process="MASTER_ADDR" not in os.environ)
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


def _init_process_group(on_cpu: bool | None, timeout_s: int, single_process: bool) -> None:
    """torch.distributed's default group: the launcher's world (env:// rendezvous), or one of one process."""
    rank, world_size, local_rank = launcher_ranks(os.environ)
    if on_cpu is False:  # modulo: a task may see only its own GPU (srun --gpus-per-task / --gpu-bind)
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    backend = "gloo" if on_cpu else "nccl"
    timeout = timedelta(seconds=timeout_s)
    if not single_process:  # torchrun / srun
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    else:  # a plain `python` process: a world of one, no network
        torch.distributed.init_process_group(
            backend=backend, store=torch.distributed.HashStore(), rank=0, world_size=1, timeout=timeout
        )


@contextlib.contextmanager
def single_process_world() -> Iterator[None]:
    """A world of one (TP = PP = EP = 1) for work that needs megatron-core's ``parallel_state`` but no
    peers, such as building the whole model on the meta device to count it.

    Uses the world already initialized, if any (it must then be TP = PP = EP = 1 for such work);
    otherwise starts a process of its own, whatever a launcher's environment says, and tears down on
    exit what it started. The RNG state of the CPU is kept (starting a world seeds it).
    """
    from megatron.core import parallel_state

    owns_group = not torch.distributed.is_initialized()
    owns_state = not parallel_state.model_parallel_is_initialized()
    if not owns_state:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        if owns_group:
            on_cpu = megatron_cpu.apply()
            _init_process_group(on_cpu, timeout_s=600, single_process=True)
        try:
            init_distributed(ParallelConfig())
            yield
        finally:
            parallel_state.destroy_model_parallel()
            if owns_group and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
