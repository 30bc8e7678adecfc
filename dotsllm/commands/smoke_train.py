"""``dotsllm smoke-train``: train a preset on one fixed batch and show the loss falling."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="dots1-tiny", help="preset name or YAML path")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from dotsllm.model import Dots1ModelConfig

    from dotsllm.parallel import ParallelConfig
    from dotsllm.parallel.setup import destroy_distributed, init_distributed
    from dotsllm.training.fixed_batch import train_on_fixed_batch
    from dotsllm.training.optimizer import OptimizerSettings

    console = Console()
    model_cfg = Dots1ModelConfig.from_preset(args.model)
    init_distributed(ParallelConfig())
    settings = OptimizerSettings(weight_decay=0.0, use_distributed_optimizer=False)

    def show(step: int, metrics: dict) -> None:
        console.print(
            f"step {step:4d}  loss {metrics['loss']:.4f}  grad-norm {metrics['grad_norm']:.3f}  "
            f"tokens/s {metrics['tokens_per_s']:.0f}"
        )

    losses = train_on_fixed_batch(
        model_cfg,
        args.steps,
        micro_batch_size=args.micro_batch_size,
        seq_length=args.seq_len,
        lr=args.lr,
        settings=settings,
        on_step=show,
    )
    destroy_distributed()
    drop = 1 - losses[-1] / losses[0]
    console.print(f"[bold]{model_cfg.name}: loss {losses[0]:.4f} -> {losses[-1]:.4f} ({drop:.0%} lower)")
    return 0 if drop > 0 else 1
