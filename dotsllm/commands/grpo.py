"""``dotsllm grpo CONFIG [key=value ...]``: GRPO with verifiable rewards from a dotsllm checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="GRPO YAML (see configs/grpo/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.group_size=16")


def run(args: argparse.Namespace) -> int:
    from dotsllm.recipes.grpo import GRPO
    from dotsllm.train import main

    return main(GRPO, args.config, args.overrides)
