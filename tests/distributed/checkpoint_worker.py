"""Worker for tests/distributed/test_checkpoint_fsync.py, started by torchrun: ``checkpoint_worker.py save ROOT OUT``.

Saves a checkpoint of a state sharded over the ranks through ``Checkpointer.save`` into ``ROOT`` and
writes ``OUT/rank<r>.json``: the paths this process fsynced, in order.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from dotsllm.parallel import ParallelConfig
from dotsllm.parallel.setup import init_distributed
from dotsllm.training.checkpoint import Checkpointer, CheckpointSettings


def save(root: str, out: str) -> None:
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    init_distributed(ParallelConfig())
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    fsynced, fsync = [], os.fsync

    def recorded(fd: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    os.fsync = recorded
    state = {
        name: ShardedTensor.from_rank_offsets(name, torch.full((size,), float(rank)), (0, rank, world))
        for name, size in (("w", 4), ("v", 300))
    }
    state["plain"] = {"note": "rank 0 writes it to common.pt"}
    Checkpointer(root, CheckpointSettings()).save("rolling", state, {"step": 1, "tokens_seen": 1})
    Path(out, f"rank{rank}.json").write_text(json.dumps(fsynced))


COMMANDS = {"save": save}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
