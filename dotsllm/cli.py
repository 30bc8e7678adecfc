"""The ``dotsllm`` command: subcommands only parse arguments and call into the library."""

from __future__ import annotations

import argparse
import importlib
import os
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


DEBUG_ENV = "DOTSLLM_DEBUG"
# What bad input raises (a config's unknown key or bad value, a missing file, an impossible layout):
# the program ends it in one line. Commands' own `SystemExit("dotsllm CMD: ...")` are ended the same way.
BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError)
EPILOG = (
    f"Bad input (a config's unknown key or bad value, a missing file, an impossible layout) ends in one line, "
    f"'dotsllm COMMAND: what is wrong', and exit status 2; {DEBUG_ENV}=1 in the environment shows the traceback."
)


def main(argv: list[str] | None = None) -> int:
    """The ``dotsllm`` program. Run as one (``argv`` None: the console script, ``python -m dotsllm.cli``),
    bad input ends in one stderr line and status 2 (see :data:`EPILOG`); called with ``argv`` (from
    Python), exceptions propagate to the caller."""
    # megatron-core warns at import about every optional CUDA package it does not find.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    # dist_checkpointing still builds torch ShardedTensors, which torch has deprecated.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*ShardedTensor")
    parser = argparse.ArgumentParser(prog="dotsllm", description="dots.llm1 on Megatron-Core", epilog=EPILOG)
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_OneLineErrorParser
    )
    as_program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(f"dotsllm.commands.{module_name}")
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    if not as_program or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return int(args.run(args) or 0)
    try:
        return int(args.run(args) or 0)
    except BAD_INPUT as error:
        message = str(error) or type(error).__name__
    except SystemExit as error:
        if not isinstance(error.code, str):
            raise
        message = error.code
    end_distributed()
    print(one_line(f"dotsllm {args.command}", message), file=sys.stderr, flush=True)
    return 2


class _OneLineErrorParser(argparse.ArgumentParser):
    """A subcommand's parser whose usage errors are one line too: ``dotsllm CMD: message`` (status 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, one_line(self.prog, message) + "\n")


def one_line(prefix: str, message: str) -> str:
    """``PREFIX: message`` on one line (a message that already starts with ``dotsllm `` keeps its own prefix)."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return text if text.startswith("dotsllm ") else f"{prefix}: {text}"


def end_distributed() -> None:
    """Tear down the process group and megatron-core's parallel state, if the command started them, so
    that torch prints nothing more at exit."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return
    from dotsllm.parallel.setup import destroy_distributed

    try:
        destroy_distributed()
    except Exception:  # noqa: BLE001 - best effort on the way out; the error line is what matters
        pass


if __name__ == "__main__":
    sys.exit(main())
