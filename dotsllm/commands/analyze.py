"""``dotsllm analyze deceleration RUN_DIR``: fit the loss deceleration of a run; PNG, JSON and a table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dotsllm.analysis.deceleration import DEFAULT_SKIP_STEPS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    analyses = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    decel = analyses.add_parser(
        "deceleration",
        help="fit a broken power law to the training loss: t_d, L_d, r_d and the loss projected to the budget",
    )
    decel.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding metrics.jsonl")
    decel.add_argument(
        "--skip-steps", type=int, default=DEFAULT_SKIP_STEPS, metavar="N",
        help=f"leave out the first N steps, a transient (default {DEFAULT_SKIP_STEPS})",
    )  # fmt: skip
    decel.add_argument(
        "--last-step", type=int, metavar="N", help="fit up to step N, e.g. the end of a WSD stable phase (default: all)"
    )
    decel.add_argument("--tokens", action="store_true", help="fit against tokens seen instead of steps")
    budget = decel.add_mutually_exclusive_group()
    budget.add_argument("--budget-steps", type=float, metavar="T", help="the run's budget T in steps")
    budget.add_argument("--budget-tokens", type=float, metavar="T", help="the run's budget T in tokens (with --tokens)")
    budget.add_argument(
        "--config", metavar="YAML", help="the run's pretrain config: T from training.train_tokens and its batch ramp"
    )
    decel.add_argument("--output", metavar="DIR", help="where to write the PNG and JSON (default: RUN_DIR/analysis)")


def run(args: argparse.Namespace) -> int:
    from dotsllm.analysis import deceleration

    x_axis = "tokens" if args.tokens else "step"
    try:
        budget, source = _budget(args, x_axis)
        curve = deceleration.read_loss_curve(args.run_dir, x_axis)
        fit = deceleration.fit_broken_power_law(*deceleration.points_to_fit(curve, args.skip_steps, args.last_step))
    except (ValueError, FileNotFoundError, deceleration.FitError) as e:  # bad input, a curve too short, no fit
        raise SystemExit(f"dotsllm analyze deceleration: {e}")
    numbers = deceleration.summary(curve, fit, (args.skip_steps, args.last_step), budget, source)

    out = Path(args.output) if args.output else Path(args.run_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    png, json_path = out / "deceleration.png", out / "deceleration.json"
    deceleration.deceleration_figure(curve, fit, budget).savefig(png)
    json_path.write_text(json.dumps(numbers, indent=2) + "\n")
    _print_table(numbers)
    print(png)
    print(json_path)
    return 0


def _budget(args: argparse.Namespace, x_axis: str) -> tuple[float | None, str]:
    """The budget T in the unit of the x axis, and where it came from."""
    from dotsllm.recipes.pretrain import PretrainConfig

    if args.config:
        steps, tokens = PretrainConfig.load(args.config).budget()
        return float(tokens if x_axis == "tokens" else steps), f"training.train_tokens of {args.config}"
    given = {"--budget-steps": args.budget_steps, "--budget-tokens": args.budget_tokens}
    flag = "--budget-tokens" if x_axis == "tokens" else "--budget-steps"
    other_flag, value = next(f for f in given if f != flag), given[flag]
    if given[other_flag] is not None:
        against = "tokens seen (--tokens)" if x_axis == "tokens" else "steps"
        raise ValueError(f"the fit is against {against}: give {flag}, not {other_flag}")
    if value is None:
        return None, f"not given ({flag} or --config)"
    if value <= 0:
        raise ValueError(f"{flag} must be positive, got {value:g}")
    return value, flag


def _print_table(numbers: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    unit = "tokens" if numbers["x_axis"] == "tokens" else "steps"
    x_format = ".4g" if unit == "tokens" else ",.0f"
    low, high, last = (_g(v, x_format) for v in (*numbers["t_d_1sigma"], numbers["fitted_range"][1]))
    rows = [
        ("t_d", _g(numbers["t_d"], x_format), f"{unit} at the break (1σ: {low} – {high})"),
        ("L_d", f"{numbers['L_d']:.4f}", "loss at the break"),
        ("r_d", f"{numbers['r_d']:.4f}", "log-log rate of improvement after the break"),
        ("c0", f"{numbers['parameters']['c0']:.4f}", "log-log rate before the break"),
        ("T", _g(numbers["budget"], x_format), f"budget in {unit}, {numbers['budget_source']}"),
        ("L̂_T", _g(numbers["projected_loss"], ".4f"), "loss projected to T along the post-break power law"),
        ("last loss", f"{numbers['last_smoothed_loss']:.4f}", f"smoothed, at {last} {unit}"),
        ("RSLE", f"{numbers['rsle']:.4f}", f"fit error on {numbers['points_fitted']} points (log loss)"),
    ]
    table = Table(title=f"loss deceleration of {numbers['metrics']}")
    for column in ("", "value", "meaning"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    if numbers["break_at_edge"]:
        console.print("[bold yellow]t_d is at the edge of the fitted range: the curve shows no break inside it")
    elif not numbers["decelerates"]:
        console.print("[bold yellow]r_d > c0: the loss speeds up at t_d, it does not decelerate (end of LR warmup?)")


def _g(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)
