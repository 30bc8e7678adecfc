"""``dotsllm ckpt list RUN_DIR``: a run's checkpoints with step, tokens, kind, size, and the latest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list a run's checkpoints")
    listing.add_argument("run_dir", help="a run directory (or its checkpoints/ directory)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dotsllm.training.checkpoint import describe_checkpoints

    rows = describe_checkpoints(Path(args.run_dir))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"checkpoints of {args.run_dir}")
    for column in ("name", "step", "tokens seen", "kind", "size", "latest"):
        table.add_column(
            column, justify="right" if column in ("step", "tokens seen", "size") else "left", no_wrap=column == "name"
        )
    for r in rows:
        size = f"{r['bytes'] / 2**20:.1f} MiB"
        table.add_row(
            r["name"], str(r["step"]), f"{r['tokens_seen']:,}", r["kind"], size, "latest" if r["latest"] else ""
        )
    Console().print(table if rows else f"no complete checkpoints under {args.run_dir}")
    return 0
