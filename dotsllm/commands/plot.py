"""``dotsllm plot``: PNGs of a run's loss, learning rate and expert load from its ``metrics.jsonl``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding metrics.jsonl")
    parser.add_argument("--out", metavar="DIR", help="where to write the PNGs (default: RUN_DIR/plots)")


def run(args: argparse.Namespace) -> int:
    from dotsllm.training.plots import MetricsFileError, write_plots

    try:
        paths = write_plots(args.run_dir, args.out)
    except MetricsFileError as e:
        raise SystemExit(f"dotsllm plot: {e}")
    for path in paths:
        print(path)
    return 0
