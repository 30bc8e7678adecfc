"""Step time of the dotsllm training loop as a ratio to bare megatron-core on the same model and batches.

    python bench/bench_train_step.py [--steps 40] [--warmup 3] [--threads 1] [--profile FILE]

One process (gloo, a world of one), torch/OMP threads fixed by ``--threads``.

- loop: ``Trainer.train_step()`` (one iteration of ``Trainer.train()``, pretraining's recipe) plus its
  stop-signal check, on a
  generated token shard, logging every step (wandb off, checkpoint saves off): data loading, the
  batch checksum, LR and weight decay setting, the per-token loss reduction, the finite-gradient
  check, aux-loss and expert-load collection and logging all count.
- bare: a second model with the loop model's initial weights, wrapped by megatron-core DDP and
  ``get_megatron_optimizer`` with the loop's settings; per step only what megatron-core's own
  training loop does (``zero_grad_buffer``, ``zero_grad``, LR and weight decay per param group,
  ``get_forward_backward_func()(...)`` with the same per-token loss, ``optimizer.step()``), over the
  loop's samples collated beforehand.

Both see the same samples in the same order, so their losses must be identical; the bench exits
with an error when they are not (then it would not be measuring the same work). They alternate step
by step, so load from other processes on the machine hits both alike. The first ``--warmup`` steps
of each are not counted; the table shows medians.
"""

import argparse
import contextlib
import cProfile
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "dots1-tiny.yaml"
VOCAB, EOD = 8192, 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="measured steps of each")
    parser.add_argument("--warmup", type=int, default=3, help="steps of each before those (at least 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op / OMP threads")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--microbatches", type=int, default=2, help="micro-batches per step")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the loop")
    parser.add_argument("--model-overrides", default="{}", help="YAML mapping over the dots1-tiny preset")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the loop steps to FILE")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first loop step starts the data loader")
    return args


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # megatron-core on missing CUDA packages
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_train_step_"))
    trainer = make_trainer(args, work)
    bare_step, bare_losses = make_bare_step(args, trainer)

    profiler = cProfile.Profile() if args.profile else None
    bare_times, loop_times = [], []
    for step in range(args.warmup + args.steps):
        start = _now()
        with profiler or contextlib.nullcontext():
            trainer.train_step()
            trainer.stop.agreed()
        looped = _now()
        bare_step(step)
        if step >= args.warmup:
            loop_times.append(_minus(looped, start))
            bare_times.append(_minus(_now(), looped))
    trainer.metrics.close()
    if profiler:
        profiler.dump_stats(args.profile)

    records = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    loop_losses = [r["loss"] for r in records]
    if loop_losses != bare_losses:
        worst = max(abs(a - b) for a, b in zip(loop_losses, bare_losses))
        sys.exit(f"bare and loop losses DIFFER (by up to {worst:.3e}): the two sides do not do the same work")
    print(f"bare and loop losses identical at all {len(records)} steps")
    report(args, trainer, bare_times, loop_times)


def tokens_per_step(args: argparse.Namespace) -> int:
    return args.seq_len * args.micro_batch_size * args.microbatches


def make_trainer(args: argparse.Namespace, work: Path):
    """A dotsllm Trainer over a generated shard, with a constant global batch and logging every step."""
    sys.path.insert(0, str(REPO / "tests"))
    from shards import write_shard

    from dotsllm.recipes.pretrain import PRETRAIN, PretrainConfig
    from dotsllm.train import Trainer

    prefix = write_shard(work / "shards" / "bench", 600, VOCAB, EOD)
    config = PretrainConfig.load(
        TINY,
        [
            f"run_dir={work / 'run'}",
            f"model_overrides={args.model_overrides}",
            f"data.blend=[{prefix}]",
            "data.split='100,0,0'",
            f"data.vocab_size={VOCAB}",
            f"data.eod_id={EOD}",
            f"data.num_workers={args.num_workers}",
            f"training.seq_length={args.seq_len}",
            f"training.micro_batch_size={args.micro_batch_size}",
            f"training.train_tokens={(args.warmup + args.steps) * tokens_per_step(args)}",
            "training.eval_interval=0",
            f"batch_ramp.points=[{{from_tokens: 0, global_batch_tokens: {tokens_per_step(args)}}}]",
            "checkpoint.save_every_steps=0",
            "checkpoint.milestone_every_tokens=0",
            "logging.log_interval=1",
            "logging.wandb_mode=disabled",
        ],
    )
    return Trainer(PRETRAIN, config)


def make_bare_step(args: argparse.Namespace, trainer):
    """``bare_step(step)``, one bare megatron-core step on the samples the loop reads at ``step``, and the
    list it appends each step's loss to."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from dotsllm.training import data as data_lib
    from dotsllm.training.optimizer import build_model_and_optimizer, set_lr_and_weight_decay
    from dotsllm.training.step import lm_forward_step

    config = trainer.config
    [model], optimizer = build_model_and_optimizer(
        trainer.model_cfg, config.parallel, config.training.precision, config.optimizer, config.lr_schedule.peak_lr
    )
    model.module.load_state_dict(trainer.model_chunks[0].module.state_dict())
    mbs, per_step = args.micro_batch_size, args.micro_batch_size * args.microbatches
    batches = [
        [data_lib.collate([trainer.data.train[i] for i in range(s, s + mbs)]) for s in range(first, first + per_step, mbs)]
        for first in range(0, (args.warmup + args.steps) * per_step, per_step)
    ]  # fmt: skip

    def bare_step(step: int) -> None:
        model.zero_grad_buffer()
        optimizer.zero_grad()
        lr = config.lr_schedule.lr(step, step * tokens_per_step(args))
        set_lr_and_weight_decay(optimizer, lr, config.optimizer.weight_decay)
        losses = get_forward_backward_func()(
            forward_step_func=lm_forward_step,
            data_iterator=iter(batches[step]),
            model=[model],
            num_microbatches=args.microbatches,
            seq_length=args.seq_len,
            micro_batch_size=mbs,
        )
        optimizer.step()
        loss_sum, tokens = sum(d["loss"].double() for d in losses).tolist()
        step_losses.append(loss_sum / tokens)

    step_losses = []
    return bare_step, step_losses


def report(args, trainer, bare_times, loop_times) -> None:
    from rich.console import Console
    from rich.table import Table

    params = sum(p.numel() for p in trainer.model_chunks[0].parameters())
    table = Table(
        title=(
            f"{trainer.model_cfg.name} {args.model_overrides} ({params / 1e6:.1f}M params), seq {args.seq_len}, "
            f"micro-batch {args.micro_batch_size} x {args.microbatches} = {tokens_per_step(args)} tokens/step, "
            f"{args.threads} thread(s), {args.num_workers} loader worker(s)"
        ),
        title_justify="left",
    )
    for column in ("", "steps", "wall s/step", "/ bare", "CPU s/step", "/ bare"):
        table.add_column(column, justify="right" if column else "left")
    bare_wall, bare_cpu = (statistics.median(t[i] for t in bare_times) for i in (0, 1))
    for label, times in (("bare megatron-core", bare_times), ("dotsllm loop", loop_times)):
        wall, cpu = (statistics.median(t[i] for t in times) for i in (0, 1))
        table.add_row(
            label, str(len(times)), f"{wall:.4f}", f"{wall / bare_wall:.3f}", f"{cpu:.4f}", f"{cpu / bare_cpu:.3f}"
        )
    Console(width=150).print(table)
    # each loop step next to its bare step: load from other processes mostly cancels in their ratio
    wall, cpu = (statistics.median(a[i] / b[i] for a, b in zip(loop_times, bare_times)) for i in (0, 1))
    verdict = "OK" if wall <= 1.05 else "OVER"
    print(f"loop / bare, median of per-step ratios: wall-clock {wall:.3f} (target <= 1.05: {verdict}), CPU {cpu:.3f}")


def _now() -> tuple[float, float]:
    """(wall-clock, this process's CPU time); CPU time leaves out time the scheduler gave to others."""
    return time.perf_counter(), time.process_time()


def _minus(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] - b[0], a[1] - b[1]


if __name__ == "__main__":
    main()
