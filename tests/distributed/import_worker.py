"""Worker for tests/test_hf_import.py, started by torchrun: ``import_worker.py layouts CKPT REFERENCE OUT LAYOUT...``.

For each layout (e.g. ``ep2``, ``tp2-etp2``, ``pp2``): build this rank's model stage, load the checkpoint
``CKPT`` into it (strict), and compare every tensor shard of the rank (its sharded state dict, gated
``linear_fc1`` factories applied) with that slice of the single-process model's global tensors, read
from ``REFERENCE``. Writes ``OUT/<layout>.rank<r>.json``: shards compared, the elements of the main
replicas (the ranks' sum is the model's size when they tile it), and the keys that differ.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from dotsllm.convert.checkpoint_io import checkpoint_model_config
from dotsllm.model.builder import build_model
from dotsllm.parallel import ParallelConfig
from dotsllm.parallel.setup import init_distributed


def layouts(ckpt: str, reference: str, out: str, *layout_names: str) -> None:
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories, is_main_replica

    cfg = checkpoint_model_config(ckpt)
    for name in layout_names:
        layout = ParallelConfig(**{key: int(size) for key, size in re.findall(r"([a-z]+)(\d+)", name)})
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        init_distributed(layout)
        if name == layout_names[0]:  # needs a world; the same for every layout
            expected = dist_checkpointing.load_plain_tensors(reference)
        module = build_model(cfg, backend="local")
        module.load_state_dict(dist_checkpointing.load(module.sharded_state_dict(), ckpt), strict=True)
        shards = module.sharded_state_dict()
        apply_factories(shards)
        found = {"shards": 0, "main_replica_elements": 0, "differ": []}
        for shard in nested_values(shards):
            if not isinstance(shard, ShardedTensor):
                continue
            found["shards"] += 1
            if is_main_replica(shard.replica_id):
                found["main_replica_elements"] += shard.data.numel()
            if not torch.equal(shard.data, expected[shard.key][shard.global_slice()]):
                found["differ"].append(f"{shard.key} at {shard.global_offset}")
        path = Path(out) / f"{name}.rank{torch.distributed.get_rank()}.json"
        path.write_text(json.dumps(found, indent=1))


COMMANDS = {"layouts": layouts}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
