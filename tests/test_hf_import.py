"""Streamed HF import: a transformers dots1 folder imported a small group of tensors at a time is the
checkpoint a one-shot save of the whole model writes (same DCP metadata), holds the HF tensors bit for
bit, gives transformers' logits, loads into EP=2 / TP=2 / PP=2 layouts, and its peak memory does not
follow the model's size."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# Before megatron: the CPU layer for megatron-core breaks importing transformers.generation afterwards.
from transformers import Dots1Config, Dots1ForCausalLM

from distributed.dist_launch import REPO, run_workers

GROUP_BYTES = 200_000  # dots1-tiny (fp32) in 25 parts, a layer's stacked experts over several
BATCH = torch.randint(0, 8192, (2, 24), generator=torch.Generator().manual_seed(4))
LAYOUTS = ["ep2", "tp2-etp2", "pp2"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """dots1-tiny made by transformers (fp32), with random expert biases, in 1 MB safetensors shards."""
    from dotsllm.model import Dots1ModelConfig

    cfg = Dots1ModelConfig.from_preset("dots1-tiny")
    torch.manual_seed(6)
    hf = Dots1ForCausalLM(Dots1Config(**cfg.hf_config_dict())).eval()
    with torch.no_grad():
        for name, tensor in hf.state_dict().items():
            if name.endswith("e_score_correction_bias"):
                tensor.copy_(torch.randn_like(tensor) * 0.1)
    out = tmp_path_factory.mktemp("hf") / "dots1-tiny"
    hf.save_pretrained(out, max_shard_size="1MB")
    return hf, out


@pytest.fixture(scope="module")
def checkpoints(megatron_world, hf_folder, tmp_path_factory):
    """The folder imported ``GROUP_BYTES`` at a time, and a one-shot save of the whole model it loads into."""
    from megatron.core import dist_checkpointing

    from dotsllm.convert import import_hf, read_hf_config
    from dotsllm.convert.checkpoint_io import import_to_checkpoint
    from dotsllm.model import build_model

    _, hf_dir = hf_folder
    root = tmp_path_factory.mktemp("ckpts")
    streamed = import_to_checkpoint(hf_dir, root / "streamed", group_bytes=GROUP_BYTES)
    cfg = read_hf_config(hf_dir)
    model = build_model(cfg)
    import_hf(hf_dir, model, cfg)
    (root / "one_shot").mkdir()
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(root / "one_shot"))
    return streamed, root / "one_shot"


def test_streamed_import_writes_what_a_one_shot_save_writes(checkpoints):
    """The DCP behaviour the merge of parts relies on (dotsllm/training/streamed_save.py)."""
    from torch.distributed.checkpoint import FileSystemReader

    streamed, one_shot = checkpoints
    merged, whole = (FileSystemReader(str(path)).read_metadata() for path in checkpoints)
    assert merged.state_dict_metadata == whole.state_dict_metadata  # keys, dtypes, shapes, chunks in order
    assert {k: v.length for k, v in merged.storage_data.items()} == {k: v.length for k, v in whole.storage_data.items()}
    assert {f.name for f in streamed.iterdir() if not f.name.endswith(".distcp")} == {
        ".metadata", "common.pt", "metadata.json", "dotsllm.json",
    }  # fmt: skip
    files = {info.relative_path for info in merged.storage_data.values()}
    assert files == {f.name for f in streamed.glob("*.distcp")} and len({f[:9] for f in files}) > 20
    experts = "decoder.layers.2.mlp.experts.experts.linear_fc1.weight"
    assert len({info.relative_path[:9] for k, info in merged.storage_data.items() if k.fqn == experts}) > 1


def test_streamed_import_holds_the_hf_tensors_and_gives_transformers_logits(hf_folder, checkpoints):
    from megatron.core import dist_checkpointing

    from dotsllm.convert import megatron_to_hf
    from dotsllm.convert.checkpoint_io import checkpoint_model_config, load_checkpoint_model

    hf, hf_dir = hf_folder
    streamed, _ = checkpoints
    cfg = checkpoint_model_config(streamed)
    stored = dist_checkpointing.load_plain_tensors(str(streamed))
    # As Transformer Engine names them: a layer's experts are stacked on the first axis in a checkpoint.
    named = []
    for key, tensor in stored.items():
        if match := re.fullmatch(r"(.*\.mlp\.experts)\.experts\.(linear_fc[12]\.weight)", key):
            named += [(f"{match[1]}.{match[2]}{e}", expert) for e, expert in enumerate(tensor)]
        else:
            named.append((key, tensor))
    imported = dict(megatron_to_hf(named, cfg))
    expected = {k: v for f in hf_dir.glob("*.safetensors") for k, v in load_file(f).items()}
    assert imported.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(imported[k], expected[k])] == []

    (model,), _ = load_checkpoint_model(streamed)
    positions = torch.arange(BATCH.shape[1]).expand(BATCH.shape[0], -1)
    with torch.no_grad():
        diff = (model(BATCH, positions, None) - hf(BATCH).logits).abs().max().item()
    assert diff < 1e-4, diff


def test_streamed_import_loads_into_parallel_layouts(checkpoints, tmp_path):
    """Each rank's shards equal the single-process model's slices, and the ranks' shards tile the model."""
    from megatron.core import dist_checkpointing

    streamed, one_shot = checkpoints
    worker = REPO / "tests" / "distributed" / "import_worker.py"
    run_workers(2, "layouts", streamed, one_shot, tmp_path, *LAYOUTS, worker=worker, timeout_s=240)
    model_elements = sum(t.numel() for t in dist_checkpointing.load_plain_tensors(str(one_shot)).values())
    for layout in LAYOUTS:
        ranks = [json.loads((tmp_path / f"{layout}.rank{r}.json").read_text()) for r in range(2)]
        assert [rank["differ"] for rank in ranks] == [[], []], layout
        assert all(rank["shards"] > 0 for rank in ranks)
        assert sum(rank["main_replica_elements"] for rank in ranks) == model_elements, layout


def test_groups_that_miss_a_shard_write_nothing(megatron_world, tmp_path):
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from dotsllm.training.checkpoint import write_checkpoint

    def shard(row: int) -> dict:  # row block `row` of a [4, 3] tensor
        return {f"w{row}": ShardedTensor.from_rank_offsets("w", torch.full((2, 3), float(row)), (0, row, 2))}

    with pytest.raises(ValueError, match=r"^w: the groups hold 6 of its 12 elements"):
        write_checkpoint(tmp_path / "ckpt", iter([shard(0)]), {"kind": "test"})
    assert list(tmp_path.iterdir()) == []


# In a fresh process (whose VmHWM is its own, unlike ru_maxrss, which Linux carries over from the
# parent): RSS before the import, and the peak.
MEASURE = """
import json, re, sys
from dotsllm.convert.checkpoint_io import import_to_checkpoint
from dotsllm.parallel import ParallelConfig
from dotsllm.parallel.setup import init_distributed

def rss(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read())[1]) * 1024

if __name__ == "__main__":
    init_distributed(ParallelConfig())
    before = rss("VmRSS")
    import_to_checkpoint(sys.argv[1], sys.argv[2], group_bytes=int(sys.argv[3]))
    print(json.dumps({"before": before, "peak": rss("VmHWM")}))
"""
WIDE = dict(  # dots1-tiny, wider: 0.40 GB in bf16
    num_layers=4, hidden_size=1024, num_attention_heads=8, num_query_groups=8, head_dim=128,
    ffn_hidden_size=4096, moe_ffn_hidden_size=512, num_experts=32,
)  # fmt: skip


def test_import_memory_follows_the_group_size_not_the_model(tmp_path):
    """bench/bench_hf_import.py measures more sizes."""
    from dotsllm.convert import export_hf, tensor_maps
    from dotsllm.model import Dots1ModelConfig

    cfg = Dots1ModelConfig.from_preset("dots1-tiny", **WIDE)
    maps = tensor_maps(cfg)
    export_hf(
        ((m.megatron_name, torch.randn(m.megatron_shape, dtype=torch.bfloat16)) for m in maps),
        cfg, tmp_path / "hf", max_shard_bytes=64 * 10**6,
    )  # fmt: skip
    model_bytes = sum(2 * math.prod(m.megatron_shape) for m in maps)
    group = 8 * 10**6
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path / "hf"), str(tmp_path / "ckpt"), str(group)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rss = json.loads(out.stdout.splitlines()[-1])
    growth = rss["peak"] - rss["before"]
    assert model_bytes > 0.39e9 and (tmp_path / "ckpt" / "dotsllm.json").is_file()
    assert growth < model_bytes / 3, f"import of {model_bytes / 1e9:.2f} GB grew RSS by {growth / 2**20:.0f} MiB"
