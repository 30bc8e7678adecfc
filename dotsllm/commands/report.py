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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("the stages' outputs (all required)")
    inputs.add_argument("--times", required=True, help="stage<TAB>seconds lines")
    inputs.add_argument("--data", required=True, help="the data pipeline's output folder")
    inputs.add_argument("--pretrain", required=True, help="the pretraining run")
    inputs.add_argument("--sft", required=True, help="the SFT run")
    inputs.add_argument(
        "--sft-eval", nargs=2, required=True, metavar=("BEFORE", "AFTER"),
        help="dotsllm eval JSONs of the SFT task before and after SFT",
    )  # fmt: skip
    inputs.add_argument("--grpo", required=True, help="the GRPO run")
    inputs.add_argument("--hf", required=True, help="the exported HF folder")
    inputs.add_argument(
        "--export-eval", nargs=2, required=True, metavar=("CHECKPOINT", "HF"),
        help="dotsllm eval JSONs of one task on the exported checkpoint and on its HF folder",
    )  # fmt: skip
    parser.add_argument(
        "--output", help="also write the rows as JSON here, each with its numbers as fields (\"numbers\")"
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dotsllm.evaluation.report import JobOutputs, ReportError, report_rows
    from dotsllm.training.plots import MetricsFileError

    outputs = JobOutputs(
        times=args.times, data=args.data, pretrain=args.pretrain, sft=args.sft, sft_eval=args.sft_eval,
        grpo=args.grpo, hf=args.hf, export_eval=args.export_eval,
    )  # fmt: skip
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


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{int(seconds) // 60}:{int(seconds) % 60:02d}"
