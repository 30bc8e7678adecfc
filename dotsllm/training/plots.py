"""PNG plots of a run's ``metrics.jsonl``: loss and learning rate, the MoE expert load, the
zero-sum-learning metrics, GRPO's rewards (``dotsllm plot``, and at the end of every run)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # no pyplot: figures render with Agg and hold no global state
from matplotlib.ticker import EngFormatter, FormatStrFormatter, MaxNLocator, ScalarFormatter

from dotsllm.training.zero_sum import RECORD_KEYS as ZSL_KEYS
from dotsllm.jsonl import read_jsonl
from dotsllm.training.metrics import METRICS_FILE

FIGSIZE, DPI = (10, 6.5), 100


class MetricsFileError(ValueError):
    """A metrics file that is missing or holds a line that is not a metrics record."""


@dataclass
class RunMetrics:
    train: list[dict]  # one record per step (the last one logged: a resumed run repeats steps), by step
    valid: list[dict]
    zsl: list[dict]  # records holding zero-sum-learning metrics (train records or their own), by step
    heldout: list[dict] = field(default_factory=list)  # GRPO's held-out accuracy records, by step


def read_metrics(path: str | Path) -> RunMetrics:
    """Train and validation records of a ``metrics.jsonl``; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise MetricsFileError(f"{path}: no such metrics file")
    train, valid, zsl, heldout = {}, {}, {}, {}
    for lineno, record in read_jsonl(path):
        if isinstance(record, json.JSONDecodeError):
            raise MetricsFileError(f"{path}:{lineno}: not JSON ({record.msg})") from None
        missing = [k for k in ("step", "tokens_seen") if not isinstance(record, dict) or k not in record]
        if missing:
            raise MetricsFileError(f"{path}:{lineno}: record without {', '.join(missing)}")
        has_zsl = ZSL_KEYS["D"] in record  # in a training record, or in one of its own
        if has_zsl:
            zsl[record["step"]] = record
        if "loss" in record:
            train[record["step"]] = record
        elif "valid_loss" in record:
            valid[record["step"]] = record
        elif "heldout_accuracy" in record:
            heldout[record["step"]] = record
        elif not has_zsl:
            raise MetricsFileError(
                f"{path}:{lineno}: record has none of 'loss', 'valid_loss', 'heldout_accuracy', '{ZSL_KEYS['D']}'"
            )
    if not train:
        raise MetricsFileError(f"{path}: no training records")
    return RunMetrics(*([part[s] for s in sorted(part)] for part in (train, valid, zsl, heldout)))


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


def zero_sum_figure(metrics: RunMetrics) -> Figure | None:
    """The train loss, destructive interference D, and M with |ΔL| = (1 − D)·M, over steps (log x).

    None when no record holds zero-sum-learning metrics.
    """
    if not metrics.zsl:
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    loss_ax, d_ax, m_ax = fig.subplots(3, 1, sharex=True, height_ratios=(2, 1.5, 1.5))
    loss_ax.plot(_column(metrics.train, "step"), _column(metrics.train, "loss"), color="C0", linewidth=0.8)
    loss_ax.set_ylabel("train loss")
    loss_ax.set_yscale("log")
    loss_ax.yaxis.set_major_formatter(ScalarFormatter())
    loss_ax.yaxis.set_minor_formatter(ScalarFormatter())
    steps = _column(metrics.zsl, "step")
    d, m, delta = (_column(metrics.zsl, ZSL_KEYS[k]) for k in ("D", "M", "delta_loss"))
    d_ax.plot(steps, d, "o-", color="C3", markersize=3)
    d_ax.set_ylim(-0.02, 1.02)
    d_ax.set_ylabel("D (destructive\ninterference)")
    m_ax.plot(steps, m, "o-", color="C2", markersize=3, label="M = mean |Δℓ|")
    m_ax.plot(steps, np.abs(delta), "o-", color="C7", markersize=3, label="|ΔL| = (1 − D)·M")
    m_ax.set_yscale("log")
    m_ax.set_ylabel("per-step change")
    m_ax.set_xlabel("step")
    m_ax.legend(fontsize="small")
    for ax in (loss_ax, d_ax, m_ax):
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    loss_ax.set_title(
        f"zero-sum learning on a held-out batch (step {int(steps[-1])}: D {d[-1]:.3f}, M {m[-1]:.2e})", loc="left"
    )
    return fig


def grpo_figure(metrics: RunMetrics) -> Figure | None:
    """GRPO's reward curve (mean and each function), rollout and held-out accuracy; KL and entropy;
    response lengths. None for a run that logged no rewards."""
    if not any("reward_mean" in r for r in metrics.train):
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    reward_ax, policy_ax, length_ax = fig.subplots(3, 1, sharex=True, height_ratios=(3, 1.5, 1.5))
    steps = _column(metrics.train, "step")
    reward_ax.plot(steps, _column(metrics.train, "reward_mean"), color="C0", linewidth=1.8, label="reward (weighted sum)")
    names = sorted({k for r in metrics.train for k in r if k.startswith("reward/")})
    for i, name in enumerate(names, start=1):
        reward_ax.plot(steps, _column(metrics.train, name), color=f"C{i}", linewidth=0.9, alpha=0.8, label=name)
    if metrics.heldout:
        reward_ax.plot(
            _column(metrics.heldout, "step"), _column(metrics.heldout, "heldout_accuracy"), "s--", color="C3",
            markersize=5, label="held-out accuracy (greedy)",
        )  # fmt: skip
    reward_ax.set_ylabel("reward / accuracy")
    last = metrics.heldout[-1]["heldout_accuracy"] if metrics.heldout else None
    first = metrics.heldout[0]["heldout_accuracy"] if metrics.heldout else None
    title = "GRPO rewards" + (f" (held-out accuracy {first:.3f} → {last:.3f})" if metrics.heldout else "")
    reward_ax.set_title(title, loc="left")
    reward_ax.legend(fontsize="small")
    for key, color in (("kl", "C4"), ("entropy", "C5")):
        policy_ax.plot(steps, _column(metrics.train, key), color=color, label=key)
    policy_ax.set_ylabel("per token")
    policy_ax.legend(fontsize="small")
    length_ax.plot(steps, _column(metrics.train, "response_length_mean"), color="C6", label="mean")
    length_ax.plot(steps, _column(metrics.train, "response_length_max"), ":", color="C6", label="max")
    length_ax.set_ylabel("response tokens")
    length_ax.set_xlabel("step")
    length_ax.legend(fontsize="small")
    for ax in (reward_ax, policy_ax, length_ax):
        ax.grid(alpha=0.3)
    length_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def write_plots(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``loss.png`` (``expert_load.png`` for MoE runs, ``zero_sum.png`` when the run measured
    zero-sum learning, ``grpo.png`` for GRPO runs) to ``out_dir`` (``run_dir/plots``)."""
    metrics = read_metrics(Path(run_dir) / METRICS_FILE)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    figures = {
        "loss": loss_figure(metrics), "expert_load": expert_load_figure(metrics), "zero_sum": zero_sum_figure(metrics),
        "grpo": grpo_figure(metrics),
    }
    for name, fig in figures.items():
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
