"""Where a GRPO step's time goes, and what sharing each prompt's prefill over its G samples buys.

    python bench/bench_grpo.py [--config configs/grpo/dots1-tiny.yaml] [--steps 4] [--repeats 3] [key=value ...]

One process. Runs ``--steps`` steps of the config's GRPO (the demo by default: the middle-digit task from
the checkpoint named by ``checkpoint.load_from``; a temporary run directory, no evaluation, no
checkpoints) and prints the median split of a step: rollout (generation), rewards, log-prob pass
(old, and reference when β > 0), updates. Then rolls out one step's prompts (G samples each) with the
prompt prefilled once and its KV cache copied to its samples, and prefilled for every sample: the
same tokens are required (or the bench stops), and generated tokens per second are compared (CPU time
of the process on CPU, where the machine's other load would swamp wall time; wall time on CUDA).
Extra ``key=value`` arguments override the config.
"""

import argparse
import dataclasses
import statistics
import tempfile

import torch
from rich.console import Console
from rich.table import Table

from dotsllm.posttrain.grpo.rollout import BuiltinRollout, rollout
from dotsllm.recipes.grpo import GRPO
from dotsllm.train import Trainer
from timing import best_time

PHASES = (("rollout", "rollout_s"), ("rewards", "reward_s"), ("log-prob pass", "logprob_s"), ("updates", "update_s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/grpo/dots1-tiny.yaml")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    run_dir = tempfile.mkdtemp(prefix="bench_grpo_")
    overrides = [
        *args.overrides, f"run_dir={run_dir}", f"training.steps={args.steps}", "eval.path=null",
        "checkpoint.save_every_steps=0", "logging.wandb_mode=disabled",
    ]  # fmt: skip
    config = GRPO.config.load(args.config, overrides)
    trainer = Trainer(GRPO, config)
    console = Console()
    try:
        records = [trainer.train_step().record for _ in range(args.steps)]
        table = Table(title=f"GRPO step time split, {args.steps} steps of {args.config} (median, wall)")
        for column in ("phase", "seconds", "share of the step"):
            table.add_column(column, justify="right" if column != "phase" else "left")
        step_s = statistics.median(r["step_s"] for r in records)
        for name, key in PHASES:
            seconds = statistics.median(r[key] for r in records)
            table.add_row(name, f"{seconds:.2f}", f"{seconds / step_s:.0%}")
        table.add_row("whole step", f"{step_s:.2f}", "100%")
        console.print(table)
        console.print(
            f"per step: {statistics.median(r['groups_drawn'] for r in records):.0f} groups of "
            f"{config.rollout.group_size} drawn, {statistics.median(r['response_length_mean'] for r in records):.1f} "
            f"response tokens on average, {statistics.median(r['updates'] for r in records):.0f} updates"
        )

        chosen = [trainer.data.draw(i) for i in range(config.rollout.prompts_per_step)]
        chosen = list(enumerate(chosen))
        timings = {}
        for share in (True, False):
            settings = dataclasses.replace(config.rollout, share_prompt_prefill=share)
            backend = BuiltinRollout(trainer.model_chunks, settings)
            timings[share] = best_time(
                lambda: rollout(backend, chosen, settings, trainer.step_strategy.stop_token, config.training.seed), args.repeats
            )
        (shared_s, shared), (each_s, each) = timings[True], timings[False]
        if [s.response for s in shared] != [s.response for s in each]:
            raise SystemExit("shared and per-sample prefill sampled DIFFERENT tokens: the comparison measures nothing")
        generated = sum(len(s.response) for s in shared)
        prompt_tokens = sum(len(p.ids) for _, p in chosen)
        table = Table(title=(
            f"rollout of {len(chosen)} prompts x G={config.rollout.group_size} ({prompt_tokens / len(chosen):.0f} "
            f"prompt tokens on average, {generated} tokens generated), best of {args.repeats}"
        ))  # fmt: skip
        for column in ("prefill", "seconds", "generated tokens/s"):
            table.add_column(column, justify="right" if column != "prefill" else "left")
        table.add_row("once per prompt (cache copied)", f"{shared_s:.2f}", f"{generated / shared_s:,.0f}")
        table.add_row("once per sample", f"{each_s:.2f}", f"{generated / each_s:,.0f}")
        console.print(table)
        console.print(f"shared prefill: {each_s / shared_s:.2f}x the tokens/s of per-sample prefill")
    finally:
        trainer.step_strategy.close()
        trainer.metrics.close()


if __name__ == "__main__":
    main()
