"""``dotsllm pretrain CONFIG [key=value ...]``: train a dots1 preset on Megatron token shards."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pretraining YAML (see configs/pretrain/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.train_tokens=1e9")


def run(args: argparse.Namespace) -> int:
    from dotsllm.recipes.pretrain import PRETRAIN
    from dotsllm.train import main

    return main(PRETRAIN, args.config, args.overrides)
