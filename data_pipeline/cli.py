"""`data_pipeline run CONFIG [key=value ...]` and `data_pipeline train-tokenizer INPUT ... --output PREFIX`."""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="data_pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the pipeline of a YAML config")
    run.add_argument("config", help="YAML file, e.g. configs/data/sample.yaml")
    run.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. executor=slurm")
    run.add_argument("--tasks", type=int, help="tasks per parallel stage (same as tasks=N)")
    run.add_argument("--workers", type=int, help="local processes at once (same as workers=N)")
    run.add_argument("--verbose", action="store_true", help="datatrove's logs and per-task stats on the console too")
    train = commands.add_parser("train-tokenizer", help="train a SentencePiece BPE tokenizer on JSONL documents")
    train.add_argument("inputs", nargs="+", help="JSONL files, directories or globs with a `text` field")
    train.add_argument("--output", required=True, help="model prefix; writes PREFIX.model and PREFIX.vocab")
    train.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args(argv)

    if args.command == "run":
        from data_pipeline.config import load_config
        from data_pipeline.pipeline import run_pipeline

        overrides = list(args.overrides)
        overrides += [f"{k}={v}" for k in ("tasks", "workers") if (v := getattr(args, k)) is not None]
        overrides += ["verbose=true"] * args.verbose
        try:
            config = load_config(args.config, overrides)
        except ValueError as e:
            parser.error(str(e))
        manifest = run_pipeline(config)
        if manifest:
            print_summary(manifest)
            t = manifest["totals"]
            print(f"{t['input_lines']} input lines → {t['kept']} kept, {t['rejected']} rejected, {t['errors']} errors; "
                  f"{t['tokens']} tokens → {config.output_dir}/manifest.json")
        return 0

    from data_pipeline.steps.reader import iter_texts
    from dotsllm.tokenizer import train_sentencepiece

    path = train_sentencepiece(iter_texts(args.inputs), args.output, args.vocab_size)
    print(f"wrote {path}")
    return 0


def print_summary(manifest: dict) -> None:
    """The per-stage table: documents in and out, dropped and characters removed by reason, task time."""
    from rich.console import Console
    from rich.table import Table

    def reasons(counts: dict) -> str:
        return "\n".join(f"{reason} {n:,}" for reason, n in sorted(counts.items(), key=lambda item: -item[1]))

    table = Table(title="data pipeline")
    for column in ("stage", "in", "out", "dropped", "characters removed", "task time"):
        table.add_column(column, justify="left" if column in ("stage", "dropped", "characters removed") else "right")
    for stage, s in manifest["summary"].items():
        table.add_row(stage, *(f"{s[k]:,}" if s[k] is not None else "" for k in ("in", "out")),
                      reasons(s["dropped"]), reasons(s["removed_chars"]), f"{s['time_s']:,.1f} s")
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
