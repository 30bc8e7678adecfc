"""``dotsllm plan``: parameters, FLOPs per token, per-GPU memory and run time of a model under a layout,
and whether it fits a GPU's memory (else which layouts of the same GPUs do)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dotsllm.plan import Plan

GIB = 2**30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="dots1-142b", help="preset name or YAML path")
    layout = parser.add_argument_group("layout")
    for flag, text in [
        ("--tp", "tensor parallel"),
        ("--pp", "pipeline parallel"),
        ("--ep", "expert parallel"),
        ("--etp", "expert tensor parallel"),
        ("--cp", "context parallel (not supported yet: only 1)"),
    ]:
        layout.add_argument(flag, type=int, default=1, help=f"{text} size (default 1)")
    layout.add_argument("--dp", type=int, help="data parallel size (default: from --gpus, else 1)")
    layout.add_argument("--gpus", type=int, help="world size (default: dp x tp x pp x cp)")
    layout.add_argument("--first-stage-layers", type=int, help="decoder layers on the first PP stage (uneven PP)")
    layout.add_argument("--last-stage-layers", type=int, help="decoder layers on the last PP stage (uneven PP)")
    batch = parser.add_argument_group("batch")
    batch.add_argument("--seq-len", type=int, default=8192)
    batch.add_argument("--micro-batch-size", type=int, default=1)
    batch.add_argument("--global-batch-tokens", type=int, default=64 * 2**20, help="default 64M (dots.llm1's first)")
    memory = parser.add_argument_group("memory")
    memory.add_argument(
        "--gpu-memory", type=float, default=80.0, metavar="GIB",
        help="memory of one GPU, for the verdict (default 80: H100/H800)",
    )  # fmt: skip
    cost = parser.add_argument_group("cost")
    cost.add_argument("--tokens", type=float, default=11.2e12, help="training tokens (default 11.2T)")
    cost.add_argument("--gpu-flops", type=float, default=989e12, help="peak FLOP/s per GPU (default H800/H100 bf16)")
    cost.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization (default 0.4)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    from dotsllm.model.config import Dots1ModelConfig
    from dotsllm.parallel import ParallelConfig
    from dotsllm.plan import make_plan

    parallel = ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp, cp=args.cp)
    if args.gpus is not None:
        dp = parallel.data_parallel_size(args.gpus)
        if args.dp is not None and args.dp != dp:
            raise ValueError(f"--dp {args.dp} disagrees with --gpus {args.gpus}, which gives dp = {dp}")
    else:
        dp = args.dp or 1
    if args.gpu_memory <= 0:
        raise ValueError(f"--gpu-memory must be positive, not {args.gpu_memory:g}")
    plan = make_plan(
        Dots1ModelConfig.from_preset(args.model),
        parallel,
        dp,
        seq_len=args.seq_len,
        micro_batch_size=args.micro_batch_size,
        global_batch_tokens=args.global_batch_tokens,
        tokens=args.tokens,
        gpu_flops=args.gpu_flops,
        mfu=args.mfu,
        first_stage_layers=args.first_stage_layers,
        last_stage_layers=args.last_stage_layers,
        gpu_memory_gib=args.gpu_memory,
    )
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        _print_tables(plan)
    return 0


def _print_tables(plan: Plan) -> None:
    from rich.console import Console
    from rich.table import Table

    params = Table(
        title=f"{plan.model}: parameters",
        title_justify="left",
        caption="active: all but the routed experts a token is not sent to",
        caption_justify="left",
    )
    params.add_column("role")
    params.add_column("parameters", justify="right")
    for role, n in plan.params_by_role.items():
        params.add_row(role, f"{n:,}")
    params.add_row("[bold]total", f"[bold]{plan.total_params:,}")
    params.add_row("[bold]active per token (incl. input embedding)", f"[bold]{plan.active_params:,}")
    params.add_row("active per token, without input embedding", f"{plan.active_params_without_embedding:,}")
    params.add_row("active matmul (FLOPs)", f"{plan.active_matmul_params:,}")

    worst = plan.worst_stage
    layout = ", ".join(f"{k}={v}" for k, v in plan.layout.items())
    memory = Table(
        title=f"per-GPU memory, worst PP stage {worst.stage} ({worst.layers} layers) of {layout}", title_justify="left"
    )
    memory.add_column("")
    memory.add_column("GiB", justify="right")
    for label, nbytes in [
        (f"weights, bf16 ({worst.params:,} params, {worst.expert_params:,} in routed experts)", worst.weights),
        ("main grads, fp32", worst.grads),
        ("optimizer: fp32 master + Adam m, v", worst.optimizer),
        ("optimizer, distributed over DP / expert-DP", worst.optimizer_distributed),
        ("activations (1F1B in-flight, no recompute; estimate)", worst.activations),
        ("[bold]total", worst.total),
        ("[bold]total with distributed optimizer", worst.total_distributed),
    ]:
        memory.add_row(label, f"{nbytes / GIB:,.2f}")
    if len(plan.stages) > 1:
        totals = [s.total_distributed / GIB for s in plan.stages]
        memory.add_row(
            f"all {len(totals)} stages, with distributed optimizer", f"{min(totals):,.2f}–{max(totals):,.2f}"
        )

    cost = Table(
        title="compute",
        title_justify="left",
        caption="attention term not halved for the causal mask (PaLM / Megatron-LM MFU convention)",
        caption_justify="left",
    )
    cost.add_column("")
    cost.add_column("value", justify="right")
    tokens = f"{plan.tokens:.4g} tokens at MFU {plan.mfu:g} of {plan.gpu_flops:.4g} FLOP/s"
    for label, value in [
        (f"training FLOPs per token, 6 N + 12 L A s (s = {plan.seq_len})", f"{plan.flops_per_token:.4g}"),
        ("micro-batches per step / steps", f"{plan.microbatches_per_step:,} / {plan.steps:,}"),
        (f"GPU-hours for {tokens}", f"{plan.gpu_hours:,.0f}"),
        ("GPU-hours per 1T tokens (dots.llm1 reports 130K on H800)", f"{plan.gpu_hours / plan.tokens * 1e12:,.0f}"),
        (f"wall-clock days on {plan.layout['gpus']:,} GPUs", f"{plan.days:,.1f}"),
    ]:
        cost.add_row(label, value)

    console = Console()
    for table in (params, memory, *_verdict_tables(plan), cost):
        console.print(table)


def _verdict_tables(plan: Plan) -> list:
    """The verdict against the GPU's memory, and the layouts that fit when this one does not."""
    from rich.table import Table

    verdict = plan.verdict
    cap = f"{verdict.gpu_memory_gib:g} GiB"
    fit = Table(title=f"verdict: {verdict.summary()}", title_justify="left")
    fit.add_column("optimizer")
    fit.add_column("worst stage", justify="right")
    fit.add_column("GiB", justify="right")
    fit.add_column("fits")
    for label, stage, gib, fits in [
        ("distributed over DP (the trainer's default)", verdict.worst_stage, verdict.worst_stage_gib, verdict.fits),
        (
            "replicated",
            verdict.worst_stage_without_distributed_optimizer,
            verdict.worst_stage_gib_without_distributed_optimizer,
            verdict.fits_without_distributed_optimizer,
        ),
    ]:
        fit.add_row(label, str(stage), f"{gib:,.2f}", "[green]yes" if fits else "[red]no")
    tables = [fit]
    if verdict.fits:
        return tables
    gpus = plan.layout["gpus"]
    if verdict.alternatives:
        others = Table(
            title=f"layouts of the same {gpus:,} GPUs that fit in {cap}, closest to this one first",
            title_justify="left",
            caption="the other options as given; --json lists each layout's options in full",
            caption_justify="left",
        )
        others.add_column("change")
        others.add_column("layout")
        others.add_column("worst stage GiB", justify="right")
        for alt in verdict.alternatives:
            others.add_row(alt.change, _layout_text(alt.layout), f"{alt.worst_stage_gib:,.2f}")
        tables.append(others)
    elif verdict.more_gpus is not None:
        alt = verdict.more_gpus
        more = Table(
            title=(
                f"none of the {verdict.layouts_tried:,} layouts of {gpus:,} GPUs fits in {cap}; "
                f"{alt.layout['gpus']:,} GPUs would"
            ),
            title_justify="left",
        )
        more.add_column("change")
        more.add_column("layout")
        more.add_column("worst stage GiB", justify="right")
        more.add_row(alt.change, _layout_text(alt.layout), f"{alt.worst_stage_gib:,.2f}")
        tables.append(more)
    else:
        tables.append(
            Table(
                title=(
                    f"no layout fits in {cap} on up to {2**17} GPUs: shorten --seq-len or the micro-batch"
                ),
                title_justify="left",
            )
        )
    return tables


def _layout_text(layout: dict) -> str:
    text = ", ".join(f"{k}={layout[k]}" for k in ("tp", "pp", "ep", "etp", "dp"))
    return f"{text}, mbs={layout['micro_batch_size']}"
