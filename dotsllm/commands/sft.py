"""``dotsllm sft CONFIG [key=value ...]``: supervised fine-tuning on the dots chat template."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="SFT YAML (see configs/sft/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. checkpoint.load_from=CKPT")


def run(args: argparse.Namespace) -> int:
    from dotsllm.recipes.sft import SFT
    from dotsllm.train import main

    return main(SFT, args.config, args.overrides)
