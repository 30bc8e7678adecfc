"""The parallel layout of a run: TP, PP, EP, ETP, CP and virtual pipeline stages; DP is what is left."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelConfig:
    """Parallel layout. ``dp`` is what is left of the world after TP x PP x CP."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int = 1  # expert tensor parallelism (megatron-core's expert_tensor_parallel_size)
    cp: int = 1
    vpp: int | None = None  # virtual pipeline stages per rank (interleaved 1F1B)

    def __post_init__(self) -> None:
        if self.cp != 1:
            # megatron-core would scale the loss by CP and expects each rank's slice of every
            # sequence (load-balanced chunks); dotsllm's data path does not split sequences.
            raise ValueError(f"context parallelism (cp={self.cp}) is not supported by dotsllm; use cp=1")

    def data_parallel_size(self, world_size: int) -> int:
        model_parallel = self.tp * self.pp * self.cp
        if world_size % model_parallel:
            raise ValueError(f"world size {world_size} is not divisible by tp*pp*cp = {model_parallel}")
        dp = world_size // model_parallel
        expert_group = self.ep * self.etp
        if (dp * self.cp * self.tp) % expert_group:
            raise ValueError(
                f"ep*etp = {expert_group} must divide dp*cp*tp = {dp * self.cp * self.tp} (world {world_size})"
            )
        if self.ep == 1 and self.etp != self.tp:
            # megatron-core's DDP reduces expert grads over the expert-data-parallel group only when
            # ep > 1; with ep = 1 it uses the data-parallel group, which is right only when etp = tp.
            raise ValueError(f"with ep=1, etp must equal tp ({self.tp}), not {self.etp} (wrong expert grads)")
        return dp
