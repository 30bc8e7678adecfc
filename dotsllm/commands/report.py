"""``dotsllm report``: the main job's table, what each stage achieved and how long it took.

Every input is named (``scripts/main_job.sh`` passes its own paths): the data pipeline's output folder
(its ``manifest.json``), the runs' folders (their ``metrics.jsonl``), the ``dotsllm eval --output``
JSONs, the exported HF folder, and the wall times (``stage<TAB>seconds`` lines). The rows are built by
:func:`dotsllm.evaluation.report.report_rows`: accuracies as value ± standard error where the eval
JSONs have it, sampled accuracy and pass@k where they were sampled (``dotsllm eval --samples``).
``--output`` writes the rows as JSON, each with a ``numbers`` dict of its numbers as fields (see
:mod:`dotsllm.evaluation.report`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("the stages' outputs (all required, unless --combine)")
    inputs.add_argument("--times", help="stage<TAB>seconds lines")
    inputs.add_argument("--data", help="the data pipeline's output folder")
    inputs.add_argument("--pretrain", help="the pretraining run")
    inputs.add_argument("--sft", help="the SFT run")
    inputs.add_argument(
        "--sft-eval", nargs=2, metavar=("BEFORE", "AFTER"), help="dotsllm eval JSONs of the SFT task before and after SFT"
    )
    inputs.add_argument("--grpo", help="the GRPO run")
    inputs.add_argument(
        "--grpo-eval", nargs=2, metavar=("BEFORE", "AFTER"),
        help="dotsllm eval JSONs of the GRPO task before GRPO (the SFT model) and after",
    )  # fmt: skip
    inputs.add_argument("--hf", help="the exported HF folder")
    inputs.add_argument(
        "--export-eval", nargs=2, metavar=("CHECKPOINT", "HF"),
        help="dotsllm eval JSONs of one task on the exported checkpoint and on its HF folder",
    )  # fmt: skip
    parser.add_argument(
        "--combine", nargs="+", metavar="REPORT",
        help="instead: several report JSONs (--output of runs with other seeds or thread counts): each headline "
        "number per run, its mean, spread, min and max, and each run's GRPO gain",
    )  # fmt: skip
    parser.add_argument(
        "--output", help="also write the rows as JSON here, each with its numbers as fields (\"numbers\")"
    )


INPUTS = ("times", "data", "pretrain", "sft", "sft_eval", "grpo", "grpo_eval", "hf", "export_eval")


def run(args: argparse.Namespace) -> int:
    from dotsllm.evaluation.report import JobOutputs, ReportError, report_rows
    from dotsllm.training.plots import MetricsFileError

    if args.combine:
        return _combine(args.combine, args.output)
    if missing := [f"--{name.replace('_', '-')}" for name in INPUTS if getattr(args, name) is None]:
        raise SystemExit(f"dotsllm report: missing {', '.join(missing)} (or give --combine REPORT ...)")
    outputs = JobOutputs(**{name: getattr(args, name) for name in INPUTS})
    try:
        found = report_rows(outputs)
    except ReportError as e:
        raise SystemExit(f"dotsllm report: {e}") from None
    except (MetricsFileError, FileNotFoundError, KeyError, IndexError) as e:
        raise SystemExit(f"dotsllm report: {type(e).__name__}: {e}") from None
    table = Table(title="main job: what each stage achieved")
    for column in ("stage", "achieved", "wall time"):
        table.add_column(column)
    for row in found:
        table.add_row(row["stage"], row["achieved"], _duration(row["seconds"]), end_section=row is found[-2])
    Console(width=160).print(table)
    if args.output:
        Path(args.output).write_text(json.dumps(found, indent=2, ensure_ascii=False) + "\n")
    return 0


def _combine(paths: list[str], output: str | None) -> int:
    from dotsllm.evaluation.report import combine_reports, read_json

    combined = combine_reports({path: read_json(Path(path)) for path in paths})
    table = Table(title=f"the main job over {len(paths)} runs: mean ± standard deviation [min – max]")
    for column in ("number", *(f"run {i + 1}" for i in range(len(paths))), "mean ± sd [min – max]"):
        table.add_column(column)
    for label, stats in combined["numbers"].items():
        values = [_cell(v) for v in stats["per_run"].values()]
        spread = "–" if stats["mean"] is None else (
            f"{_cell(stats['mean'])} ± {_cell(stats['std'])} [{_cell(stats['min'])} – {_cell(stats['max'])}]"
        )  # fmt: skip
        table.add_row(label, *values, spread)
    gains = [f"{g['ratio']:.2f}× / {g['difference']:+.3f}" for g in combined["grpo_gain"].values()]
    table.add_row("GRPO gain, greedy accuracy (after / before, after − before)", *gains, "", end_section=True)
    console = Console(width=200)
    console.print(table)
    for i, path in enumerate(paths, 1):
        console.print(f"run {i}: {path}")
    if output:
        Path(output).write_text(json.dumps(combined, indent=2) + "\n")
    return 0


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{int(seconds) // 60}:{int(seconds) % 60:02d}"
