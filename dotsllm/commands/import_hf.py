"""``dotsllm import-hf HF_DIR CKPT``: a HF dots1 folder as a dotsllm checkpoint to start training from."""

from __future__ import annotations

import argparse

from dotsllm.commands.export_hf import parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", help="HF Dots1ForCausalLM folder (config.json + safetensors)")
    parser.add_argument(
        "checkpoint",
        help="checkpoint directory to create; it loads under any TP/PP/EP: dotsllm pretrain ... checkpoint.load_from=CKPT",
    )
    parser.add_argument(
        "--max-group-size",
        type=parse_size,
        default="512MiB",
        help="weights read and saved at a time (default 512MiB); peak memory follows it, not the model's size",
    )


def run(args: argparse.Namespace) -> int:
    import resource

    from rich.console import Console

    from dotsllm.convert.checkpoint_io import import_to_checkpoint
    from dotsllm.parallel import ParallelConfig
    from dotsllm.parallel.setup import init_distributed

    init_distributed(ParallelConfig())
    path = import_to_checkpoint(args.hf_dir, args.checkpoint, group_bytes=args.max_group_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Console().print(f"wrote {path} (kind imported, step 0, no optimizer state); peak RSS {peak / 2**20:.0f} MiB")
    return 0
