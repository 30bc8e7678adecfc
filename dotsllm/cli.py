"""The ``dotsllm`` command: subcommands only parse arguments and call into the library."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# subcommand -> (module in dotsllm.commands, one-line help). Modules are imported only when run,
# so `dotsllm --help` does not pay for importing megatron-core.
COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("plan", "parameters, FLOPs, memory and time of a model under a parallel layout"),
    "plot": ("plot", "PNGs of a run's loss, learning rate, expert load and zero-sum learning (from its metrics.jsonl)"),
    "pretrain": ("pretrain", "pretrain a dots1 model on Megatron token shards (the dots.llm1 recipe)"),
    "sft": ("sft", "supervised fine-tuning on the dots chat template (packed, assistant-only loss)"),
    "chat": ("chat", "talk to a checkpoint through the dots chat template (`--prompt` for one shot)"),
    "grpo": ("grpo", "GRPO with verifiable rewards (rollouts on the training layout) from a dotsllm checkpoint"),
    "smoke-train": ("smoke_train", "train a preset on one fixed batch (the quickest end-to-end check)"),
    "export-hf": ("export_hf", "a dotsllm checkpoint (any layout) as a HF Dots1ForCausalLM folder, streamed"),
    "import-hf": ("import_hf", "a HF dots1 folder as a dotsllm checkpoint to start pretraining from"),
    "eval": ("eval", "perplexity on held-out shards and greedy exact-match tasks of a checkpoint"),
    "report": ("report", "the main job's table: what each stage achieved (from the stages' outputs) and its wall time"),
    "ckpt": ("ckpt", "inspect checkpoints: `ckpt list RUN_DIR`"),
    "analyze": ("analyze", "training diagnostics: `analyze deceleration RUN_DIR` fits the loss deceleration"),
}


def main(argv: list[str] | None = None) -> int:
    # megatron-core warns at import about every optional CUDA package it does not find.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    # dist_checkpointing still builds torch ShardedTensors, which torch has deprecated.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*ShardedTensor")
    parser = argparse.ArgumentParser(prog="dotsllm", description="dots.llm1 on Megatron-Core")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(f"dotsllm.commands.{module_name}")
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
