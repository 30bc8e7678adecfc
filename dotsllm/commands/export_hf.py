"""``dotsllm export-hf CKPT OUT``: a dotsllm checkpoint (any TP/PP/EP) as a HF ``Dots1ForCausalLM`` folder."""

from __future__ import annotations

import argparse
import re

from dotsllm.training.checkpoint import checkpoint_argument

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """Bytes in ``5GB`` (decimal, as transformers), ``512MiB`` (binary) or a plain number."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 512MiB, 1000000)")
    return int(float(match[1]) * UNITS[(match[2] or "").upper()])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", type=checkpoint_argument,
        help="a dotsllm checkpoint (a folder holding dotsllm.json), a run's checkpoints/ folder or the run directory (its latest complete one)",
    )  # fmt: skip
    parser.add_argument("out", help="output folder (new or empty)")
    tok = parser.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer-dir", help="HF tokenizer files (or one file) to copy into the folder")
    tok.add_argument(
        "--tokenizer", help="the run's SentencePiece .model or tokenizer.json, written as HF tokenizer files"
    )
    parser.add_argument("--max-shard-size", type=parse_size, default="5GB", help="per safetensors file (default 5GB)")


def run(args: argparse.Namespace) -> int:
    import resource

    from rich.console import Console

    from dotsllm.convert.checkpoint_io import export_checkpoint
    from dotsllm.parallel import ParallelConfig
    from dotsllm.parallel.setup import init_distributed

    init_distributed(ParallelConfig())
    out = export_checkpoint(
        args.checkpoint, args.out, tokenizer_dir=args.tokenizer_dir, tokenizer=args.tokenizer,
        max_shard_bytes=args.max_shard_size,
    )
    shards = sorted(out.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in shards)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Console().print(
        f"wrote {out}: {len(shards)} safetensors file(s), {size / 2**20:.1f} MiB; peak RSS {peak / 2**20:.0f} MiB"
    )
    return 0
