"""A process of the zero-sum-learning reduction test, started by ``torch.multiprocessing.spawn``.

Kept apart from the test module so that each spawned process imports torch and the metrics only.
"""

import json

import torch

from dotsllm.training.zero_sum import reduce_zero_sum_stats


def reduce_slice(rank, port, slices, out_dir):
    """Reduce this rank's slice (before, after, mask) over a 2-process gloo group; write the result."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    stats = reduce_zero_sum_stats(*slices[rank])
    (out_dir / f"rank{rank}.json").write_text(json.dumps(stats.__dict__))
    torch.distributed.destroy_process_group()
