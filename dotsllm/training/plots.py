"""PNG plots of a run's ``metrics.jsonl``: loss and learning rate, and the MoE expert load."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # no pyplot: figures render with Agg and hold no global state
from matplotlib.ticker import EngFormatter, FormatStrFormatter, MaxNLocator

from dotsllm.training.metrics import METRICS_FILE

FIGSIZE, DPI = (10, 6.5), 100


class MetricsFileError(ValueError):
    """A metrics file that is missing or holds a line that is not a metrics record."""


@dataclass
class RunMetrics:
    train: list[dict]  # one record per step (the last one logged: a resumed run repeats steps), by step
    valid: list[dict]


def read_metrics(path: str | Path) -> RunMetrics:
    """Train and validation records of a ``metrics.jsonl``; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise MetricsFileError(f"{path}: no such metrics file")
    train, valid = {}, {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise MetricsFileError(f"{path}:{lineno}: not JSON ({e.msg})") from None
        missing = [k for k in ("step", "tokens_seen") if not isinstance(record, dict) or k not in record]
        if missing:
            raise MetricsFileError(f"{path}:{lineno}: record without {', '.join(missing)}")
        if "loss" in record:
            train[record["step"]] = record
        elif "valid_loss" in record:
            valid[record["step"]] = record
        else:
            raise MetricsFileError(f"{path}:{lineno}: record has neither 'loss' nor 'valid_loss'")
    if not train:
        raise MetricsFileError(f"{path}: no training records")
    return RunMetrics([train[s] for s in sorted(train)], [valid[s] for s in sorted(valid)])


def loss_figure(metrics: RunMetrics) -> Figure:
    """Train loss (raw and smoothed) and validation loss over tokens seen; the LR below it."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    tokens = _column(metrics.train, "tokens_seen")
    loss = _column(metrics.train, "loss")
    smooth = len(loss) >= 20
    loss_ax.plot(tokens, loss, color="C0", alpha=0.35 if smooth else 1.0, linewidth=0.8, label="train")
    if smooth:
        loss_ax.plot(tokens, _ema(loss, span=max(5, len(loss) // 50)), color="C0", linewidth=1.8, label="train, EMA")
    if metrics.valid:
        loss_ax.plot(
            _column(metrics.valid, "tokens_seen"), _column(metrics.valid, "valid_loss"),
            "o-", color="C3", markersize=4, label="validation",
        )  # fmt: skip
    loss_ax.set_ylabel("loss")
    loss_ax.set_title(f"loss (last train {loss[-1]:.4f} at step {metrics.train[-1]['step']})", loc="left")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()
    lr_ax.plot(tokens, _column(metrics.train, "lr"), color="C2")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("tokens seen")
    lr_ax.grid(alpha=0.3)
    lr_ax.xaxis.set_major_formatter(EngFormatter())
    lr_ax.yaxis.set_major_formatter(FormatStrFormatter("%.1e"))
    return fig


def expert_load_figure(metrics: RunMetrics) -> Figure | None:
    """Max/mean tokens per expert as a heatmap (MoE layer × step), and each layer's expert-bias norm.

    None when the records carry no expert load (a dense model).
    """
    layers = sorted({int(k) for r in metrics.train for k in r.get("expert_load") or {}})
    if not layers:
        return None
    steps = _column(metrics.train, "step")
    load, bias = (_per_layer(metrics.train, layers, key) for key in ("load_max_over_mean", "bias_norm"))
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    heat_ax, bias_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    mesh = heat_ax.pcolormesh(_edges(steps), _edges(np.array(layers, float)), load, cmap="magma_r", vmin=1.0)
    fig.colorbar(mesh, ax=heat_ax, label="max / mean tokens per expert")
    heat_ax.set_ylabel("MoE layer")
    if len(layers) <= 16:
        heat_ax.set_yticks(layers)
    heat_ax.set_title(
        f"expert load (1 = balanced; last step: max {np.nanmax(load[:, -1]):.2f} over layers)", loc="left"
    )
    colors = ScalarMappable(Normalize(layers[0], layers[-1] + 1e-9), "viridis")
    for n, row in zip(layers, bias):
        bias_ax.plot(steps, row, color=colors.to_rgba(n), label=f"layer {n}")
    bias_ax.set_ylabel("expert-bias L2 norm")
    bias_ax.set_xlabel("step")
    bias_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    bias_ax.grid(alpha=0.3)
    if len(layers) <= 12:
        bias_ax.legend(ncols=min(len(layers), 6), fontsize="small")
    else:
        fig.colorbar(colors, ax=bias_ax, label="MoE layer")
    return fig


def write_plots(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``loss.png`` (and ``expert_load.png`` for MoE runs) to ``out_dir`` (``run_dir/plots``)."""
    metrics = read_metrics(Path(run_dir) / METRICS_FILE)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in (("loss", loss_figure(metrics)), ("expert_load", expert_load_figure(metrics))):
        if fig is not None:
            written.append(out / f"{name}.png")
            fig.savefig(written[-1])
    return written


def _column(records: list[dict], key: str) -> np.ndarray:
    """``key`` of each record as floats; absent or null values are NaN (gaps in the line)."""
    return np.array([math.nan if r.get(key) is None else r[key] for r in records], float)


def _per_layer(records: list[dict], layers: list[int], key: str) -> np.ndarray:
    """[layer, record] array of an expert-load statistic; NaN where a record lacks the layer."""
    loads = [r.get("expert_load") or {} for r in records]
    return np.array([[load.get(str(n), {}).get(key, math.nan) for load in loads] for n in layers], float)


def _ema(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average that steps over NaNs (as wandb's smoothing)."""
    alpha, out, avg = 2 / (span + 1), np.empty_like(values), math.nan
    for i, v in enumerate(values):
        if not math.isnan(v):
            avg = v if math.isnan(avg) else avg + alpha * (v - avg)
        out[i] = avg
    return out


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centers (midpoints; the outer cells as wide as their neighbour)."""
    if len(centers) == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    mid = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[2 * centers[0] - mid[0]], mid, [2 * centers[-1] - mid[-1]]])
