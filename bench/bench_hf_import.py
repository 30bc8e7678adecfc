"""Peak memory of ``dotsllm import-hf``: it follows ``--max-group-size``, not the model's size.

    python bench/bench_hf_import.py [--groups 16MB 64MB 256MB] [--workdir DIR]

Three HF dots1 folders of random bf16 weights are written in 256 MB safetensors shards: dots1-tiny
(6 MB: what the process takes besides the tensors) and dots1-tiny made wider (hidden 1024, 32 experts
of width 512) with 3 and 10 layers (0.29 and 1.08 GB). Each is imported with each group size in a
fresh ``dotsllm import-hf`` process, whose peak RSS (``ru_maxrss``, printed by the command) the table
shows. This process stays small (no torch): Linux carries the ``ru_maxrss`` of a parent into a child
it starts, so the folders are written by a spawned process.
"""

import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIDE = dict(  # dots1-tiny, wider
    hidden_size=1024, num_attention_heads=8, num_query_groups=8, head_dim=128,
    ffn_hidden_size=4096, moe_ffn_hidden_size=512, num_experts=32,
)  # fmt: skip
MODELS = {"dots1-tiny": {}, "wide, 3 layers": {**WIDE, "num_layers": 3}, "wide, 10 layers": {**WIDE, "num_layers": 10}}


def parse_args() -> argparse.Namespace:
    from dotsllm.commands.export_hf import parse_size

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=parse_size, nargs="+", default=[16 * 10**6, 64 * 10**6, 256 * 10**6])
    parser.add_argument("--workdir", type=Path, help="where the folders go (default: a temporary one)")
    return parser.parse_args()


def write_hf_folder(overrides: dict, out: Path) -> None:
    """A HF dots1 folder of random bf16 weights: dots1-tiny with ``overrides``."""
    import torch

    from dotsllm.convert import export_hf, tensor_maps
    from dotsllm.model import Dots1ModelConfig

    cfg = Dots1ModelConfig.from_preset("dots1-tiny", **overrides)
    tensors = ((m.megatron_name, torch.randn(m.megatron_shape, dtype=torch.bfloat16)) for m in tensor_maps(cfg))
    export_hf(tensors, cfg, out, max_shard_bytes=256 * 10**6)


def peak_rss_mib(*args: str) -> tuple[int, float]:
    """Run ``dotsllm *args`` in a fresh process; its printed peak RSS in MiB, and its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "dotsllm.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    return int(re.search(r"peak RSS (\d+) MiB", out)[1]), time.perf_counter() - start


def main() -> None:
    args = parse_args()
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        print("| model | weights (bf16) | --max-group-size | peak RSS | import wall time |")
        print("|---|---|---|---|---|")
        for model, overrides in MODELS.items():
            hf = Path(tmp) / "hf"
            writer = spawn.Process(target=write_hf_folder, args=(overrides, hf))
            writer.start()
            writer.join()
            if writer.exitcode:
                sys.exit(f"writing the {model} folder failed ({writer.exitcode})")
            size = json.loads((hf / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
            for group in args.groups:
                ckpt = Path(tmp) / "ckpt"
                rss, wall = peak_rss_mib("import-hf", str(hf), str(ckpt), "--max-group-size", str(group))
                print(f"| {model} | {size / 1e9:.2f} GB | {group / 1e6:.0f} MB | {rss} MiB | {wall:.1f} s |", flush=True)
                shutil.rmtree(ckpt)
            shutil.rmtree(hf)


if __name__ == "__main__":
    main()
