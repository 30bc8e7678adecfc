"""Training metrics: expert load from the routers, and one logger for console, JSONL and wandb."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

METRICS_FILE = "metrics.jsonl"


@dataclass
class LoggingSettings:
    log_interval: int = 1
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "dotsllm"
    wandb_run_name: str | None = None


class ExpertLoadMeter:
    """Tokens routed to each expert per MoE layer, summed over all ranks that route distinct tokens.

    Forward hooks on megatron-core's ``TopKRouter`` read the routing map; :meth:`collect` reduces
    over data/tensor/context parallel ranks and gathers the layers of every pipeline stage.
    """

    def __init__(self, model_chunks: list[torch.nn.Module]):
        from megatron.core.transformer.moe.router import TopKRouter

        self.loads: dict[int, torch.Tensor] = {}
        self.routers: dict[int, TopKRouter] = {}
        for chunk in model_chunks:
            for module in chunk.modules():
                if isinstance(module, TopKRouter):
                    self.routers[module.layer_number] = module
                    module.register_forward_hook(self._hook)

    def _hook(self, router, inputs, outputs) -> None:
        if not router.training:
            return
        counts = outputs[1].sum(0).float().detach()
        self.loads[router.layer_number] = self.loads.get(router.layer_number, 0) + counts

    def collect(self) -> dict[str, Any]:
        """``{layer: (max/mean load, bias L2 norm)}`` over the window since the last call; resets."""
        from megatron.core import parallel_state

        layers = sorted(self.routers)
        stats = {}
        if layers:
            device = self.routers[layers[0]].weight.device
            stacked = torch.stack(
                [self.loads.get(n, torch.zeros(self.routers[n].weight.shape[0], device=device)) for n in layers]
            )
            for group in (
                parallel_state.get_data_parallel_group(with_context_parallel=True),
                parallel_state.get_tensor_model_parallel_group(),
            ):
                torch.distributed.all_reduce(stacked, group=group)
            # one device-to-host copy for all layers (a sync per layer costs on GPU with ~60 MoE layers)
            bias_norms = torch.stack([self.routers[n].expert_bias.float().norm() for n in layers])
            for n, load, bias_norm in zip(layers, stacked.cpu(), bias_norms.tolist()):
                mean = load.mean().item()
                stats[n] = {
                    "load_max_over_mean": load.max().item() / mean if mean else float("nan"),
                    "bias_norm": bias_norm,
                }
        self.loads.clear()
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            gathered = [None] * parallel_state.get_pipeline_model_parallel_world_size()
            torch.distributed.all_gather_object(gathered, stats, group=parallel_state.get_pipeline_model_parallel_group())
            stats = {k: v for part in gathered for k, v in part.items()}
        return dict(sorted(stats.items()))


class AuxLossMeter:
    """The sequence aux loss of each MoE layer per step (before its coefficient), from megatron-core.

    megatron's tracker adds a layer's value once per micro-batch; :meth:`collect` reduces it over
    the pipeline, tensor and data-parallel ranks as megatron does and divides by the micro-batches
    run since the last call: with ``log_interval`` 1 that is the step's value, else the mean of the
    window's steps.
    """

    NAME = "seq_load_balancing_loss"

    def __init__(self, moe_layer_numbers: list[int], num_layers: int):
        from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker

        self.layers = moe_layer_numbers  # 1-based, as megatron numbers them
        self.num_layers = num_layers
        self.microbatches = 0
        clear_aux_losses_tracker()  # the first window starts now

    def add_step(self, num_microbatches: int) -> None:
        self.microbatches += num_microbatches

    def collect(self) -> dict[int, float]:
        """``{layer: aux loss}``, empty when nothing was tracked; resets the window."""
        from megatron.core.transformer.moe.moe_utils import (
            clear_aux_losses_tracker,
            get_moe_layer_wise_logging_tracker,
            reduce_aux_losses_tracker_across_ranks,
        )

        trackers = get_moe_layer_wise_logging_tracker()
        if self.NAME not in trackers:  # a pipeline stage without MoE layers still joins the reductions
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
            trackers[self.NAME] = {"values": torch.zeros(self.num_layers, device=device), "reduce_group": None,
                                   "avg_group": None, "reduce_group_has_dp": False}  # fmt: skip
        per_layer = {}
        if self.microbatches:
            reduce_aux_losses_tracker_across_ranks([self.NAME])
            values = (trackers[self.NAME]["values"].double() / self.microbatches).tolist()
            per_layer = {n: values[n - 1] for n in self.layers}
        clear_aux_losses_tracker()
        self.microbatches = 0
        return per_layer


class MetricsLogger:
    """Writes each record to the console, ``<run_dir>/metrics.jsonl`` and wandb (rank 0 only)."""

    def __init__(self, run_dir: Path, settings: LoggingSettings, config: dict[str, Any], enabled: bool):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.wandb_run = None
        if not enabled:
            return
        from rich.console import Console

        self.console = Console()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if settings.wandb_mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=settings.wandb_project,
                name=settings.wandb_run_name,
                dir=str(run_dir),
                mode=settings.wandb_mode,
                config=config,
                resume="allow",
                id=_wandb_run_id(run_dir),
            )

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self.wandb_run is not None:
            flat = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            for layer, stats in record.get("expert_load", {}).items():
                for key, value in stats.items():
                    flat[f"expert_load/layer_{layer}/{key}"] = value
            self.wandb_run.log(flat, step=record["step"])
        self.console.print(_format(record))

    def event(self, message: str) -> None:
        if self.enabled:
            self.console.print(f"[bold]{message}")

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _wandb_run_id(run_dir: Path) -> str:
    """A stable id per run directory, so a resumed job continues the same wandb run."""
    id_file = Path(run_dir) / "wandb_run_id"
    if not id_file.is_file():
        id_file.write_text(uuid.uuid4().hex[:12])
    return id_file.read_text().strip()


def _format(record: dict[str, Any]) -> str:
    parts = [f"step {record['step']:>6}", f"tokens {record['tokens_seen']:.3e}"]
    for key, fmt in (("loss", ".4f"), ("valid_loss", ".4f"), ("lr", ".2e"), ("grad_norm", ".3f"), ("tokens_per_s", ".0f"), ("mfu", ".1%")):
        value = record.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{key.replace('_', '-')} {value:{fmt}}")
    loads = [v["load_max_over_mean"] for v in record.get("expert_load", {}).values()]
    if loads:
        parts.append(f"expert-load max/mean {max(loads):.2f}")
    return "  ".join(parts)
