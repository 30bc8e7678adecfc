"""Loss deceleration: a one-break broken power law fitted to a run's training loss.

Mircea et al., "Training Dynamics Underlying Language Model Scaling Laws: Loss Deceleration and
Zero-Sum Learning" (arXiv 2506.05447) find that the pretraining loss follows one power law early on
and bends, at a step t_d, to a slower one. They fit the one-break form of Caballero et al.'s broken
neural scaling law (arXiv 2210.14891):

    log L(t) = log b − c0·log t − c1·f1·log(1 + exp((log t − log d1)/f1))

whose log-log slope is −c0 well before d1 and −(c0 + c1) well after it, bending over a width of
about f1 in log t, and report t_d = d1, the loss at the break L_d = b·d1^(−c0), the log-log rate of
improvement after it r_d = c0 + c1, and the loss projected along the second segment to the budget T,
L̂_T = L_d·(t_d/T)^(r_d).

Taken from the paper's fitting code (github.com/mirandrom/zsl, analyses/01-deceleration/fit_bnsl.ipynb):
the log moving average (the value at t averages the losses logged in [t/1.2, t], a window growing
with t, so late noise is averaged away without blurring the early descent); subsampling to a
roughly even density in log t (the many late steps would otherwise outweigh the first segment); the
first 100 steps skipped as a transient (after Kaplan et al. 2020); ``curve_fit(method="dogbox")`` of
log L on log t; initial c0 and c1 from the slopes before and after an initial break, f1 = 0.3;
the root mean squared log error (RSLE) and 1σ ranges from the fit's covariance.

Where this differs from the notebook (which was written for OLMo's per-step curves):
- each smoothed value is placed at the mean step of its window, not at the window's end, where it
  lags the curve by ~9% in t and moves t_d as much;
- the notebook starts the break at a fixed 6000 steps (OLMo's); here the fit starts from the peak
  curvature of the smoothed curve and from a few breaks spread over the range, and keeps the best;
- the subsample is the logged points nearest to a grid of 40 points per decade (the notebook keeps
  steps 1..10, 20..100, ..., then every 1000th, which assumes a record per step);
- b and d1 are fitted as log b and log d1, with the break bounded to the fitted range and
  f1 to [0.02, 3], so that a curve without a break ends at a bound (reported) instead of diverging.

The x axis is the optimizer step (or, on request, tokens seen); early steps are skipped by step
number either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import curve_fit
from scipy.signal import savgol_filter

from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from dotsllm.training.metrics import METRICS_FILE
from dotsllm.training.plots import DPI, FIGSIZE, read_metrics

SMOOTHING_RATIO = 1.2  # the log moving average's window is [x / 1.2, x] (the paper's b = 1.2)
DEFAULT_SKIP_STEPS = 100
POINTS_PER_DECADE = 40
MIN_POINTS = 12  # five parameters, and enough points on each side of the break to tell the slopes
F1_BOUNDS = (0.02, 3.0)
PARAMETERS = ("log_b", "c0", "c1", "log_d1", "f1")


class CurveTooShortError(ValueError):
    """Too few loss points are left to fit the broken power law."""


class FitError(RuntimeError):
    """The least-squares fit did not converge from any start."""


def log_broken_power_law(log_x, log_b, c0, c1, log_d1, f1):
    """log L at log x (numpy arrays or floats); ``logaddexp(0, z)`` is log(1 + e^z) without overflow."""
    return log_b - c0 * log_x - c1 * f1 * np.logaddexp(0.0, (log_x - log_d1) / f1)


@dataclass(frozen=True)
class BrokenPowerLaw:
    log_b: float
    c0: float
    c1: float
    log_d1: float
    f1: float

    @property
    def t_d(self) -> float:
        return math.exp(self.log_d1)

    @property
    def L_d(self) -> float:  # noqa: N802 - the paper's name
        return math.exp(self.log_b - self.c0 * self.log_d1)

    @property
    def r_d(self) -> float:
        return self.c0 + self.c1

    def loss(self, x) -> np.ndarray:
        return np.exp(log_broken_power_law(np.log(x), self.log_b, self.c0, self.c1, self.log_d1, self.f1))

    def projected_loss(self, budget: float) -> float:
        """L̂_T: the post-break power law through (t_d, L_d) evaluated at ``budget``."""
        return self.L_d * (self.t_d / budget) ** self.r_d


@dataclass(frozen=True)
class LossCurve:
    """A run's training loss, one point per logged step (the last record of a step counts)."""

    x: np.ndarray  # steps, or tokens seen
    loss: np.ndarray
    steps: np.ndarray
    x_axis: str  # "step" | "tokens"
    source: str  # where it was read, for error messages
    nonfinite_dropped: int = 0  # logged steps whose loss was NaN/inf (skipped updates)


@dataclass(frozen=True)
class DecelerationFit:
    law: BrokenPowerLaw
    stderr: dict[str, float]  # 1σ of each fitted parameter, from curve_fit's covariance
    x: np.ndarray  # the smoothed, subsampled points that were fitted
    loss: np.ndarray
    rsle: float  # root mean squared log error of the fit on those points
    break_at_edge: bool  # t_d ended at the first or last fitted x: no break inside the data

    @property
    def t_d_range(self) -> tuple[float, float]:
        """t_d at ±1σ of log d1."""
        err = self.stderr["log_d1"]
        return math.exp(self.law.log_d1 - err), math.exp(self.law.log_d1 + err)


def read_loss_curve(run_dir: str | Path, x_axis: str = "step") -> LossCurve:
    """The training loss of ``run_dir/metrics.jsonl`` against steps or tokens seen."""
    if x_axis not in ("step", "tokens"):
        raise ValueError(f"x_axis must be 'step' or 'tokens', got {x_axis!r}")
    path = Path(run_dir) / METRICS_FILE
    records = read_metrics(path).train
    steps = np.array([r["step"] for r in records], float)
    x = np.array([r["tokens_seen"] for r in records], float) if x_axis == "tokens" else steps
    loss = np.array([math.nan if r["loss"] is None else r["loss"] for r in records], float)
    finite = np.isfinite(loss)
    return LossCurve(x[finite], loss[finite], steps[finite], x_axis, str(path), int((~finite).sum()))


def log_moving_average(x: np.ndarray, y: np.ndarray, ratio: float = SMOOTHING_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` over each window ``[x/ratio, x]``, placed at the window's mean x (both increasing)."""
    starts = np.searchsorted(x, x / ratio, side="left")
    ends = np.arange(1, len(x) + 1)
    count = ends - starts
    sum_x, sum_y = (np.concatenate([[0.0], np.cumsum(v)]) for v in (x, y))
    return (sum_x[ends] - sum_x[starts]) / count, (sum_y[ends] - sum_y[starts]) / count


def log_spaced_indices(x: np.ndarray, points_per_decade: int = POINTS_PER_DECADE) -> np.ndarray:
    """Indices of the points nearest to a log-uniform grid from x[0] to x[-1] (both ends kept)."""
    log_x = np.log10(x)
    grid = np.linspace(log_x[0], log_x[-1], max(2, math.ceil((log_x[-1] - log_x[0]) * points_per_decade) + 1))
    right = np.clip(np.searchsorted(log_x, grid), 1, len(x) - 1)
    nearest = np.where(grid - log_x[right - 1] <= log_x[right] - grid, right - 1, right)
    return np.unique(nearest)


def points_to_fit(
    curve: LossCurve,
    skip_steps: int = DEFAULT_SKIP_STEPS,
    last_step: int | None = None,
    points_per_decade: int = POINTS_PER_DECADE,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth the whole curve, keep the steps in (``skip_steps``, ``last_step``], subsample evenly in log x."""
    x, loss = log_moving_average(curve.x, curve.loss)
    kept = (curve.steps > skip_steps) & (curve.steps <= (last_step if last_step is not None else math.inf))
    x, loss = x[kept], loss[kept]
    if len(x) >= 2:
        idx = log_spaced_indices(x, points_per_decade)
        x, loss = x[idx], loss[idx]
    if len(x) < MIN_POINTS:
        until = f" up to step {last_step}" if last_step is not None else ""
        raise CurveTooShortError(
            f"{curve.source}: {len(x)} loss points to fit ({len(curve.x)} logged, {int(kept.sum())} after "
            f"step {skip_steps}{until}); the broken power law needs at least {MIN_POINTS} — log more often, "
            f"train longer or skip fewer early steps"
        )
    return x, loss


def fit_broken_power_law(x: np.ndarray, loss: np.ndarray) -> DecelerationFit:
    """Least-squares fit of the broken power law in log-log space, from several initial breaks."""
    log_x, log_y = np.log(x), np.log(loss)
    lower = [-np.inf, -np.inf, -np.inf, log_x[0], F1_BOUNDS[0]]
    upper = [np.inf, np.inf, np.inf, log_x[-1], F1_BOUNDS[1]]
    best = None
    for log_d1 in _initial_breaks(log_x, log_y):
        p0 = np.clip(_initial_parameters(log_x, log_y, log_d1), lower, upper)
        try:
            params, cov = curve_fit(log_broken_power_law, log_x, log_y, p0=p0, bounds=(lower, upper), method="dogbox")
        except RuntimeError:  # no convergence from this start; the others may converge
            continue
        sse = float(np.sum((log_broken_power_law(log_x, *params) - log_y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, params, cov)
    if best is None:
        raise FitError(f"the broken power law fit did not converge from any start on {len(x)} points")
    sse, params, cov = best
    law = BrokenPowerLaw(*map(float, params))
    edge_tolerance = 1e-3 * (log_x[-1] - log_x[0])
    return DecelerationFit(
        law=law,
        stderr={name: float(err) for name, err in zip(PARAMETERS, np.sqrt(np.abs(np.diag(cov))))},
        x=x,
        loss=loss,
        rsle=math.sqrt(sse / len(x)),
        break_at_edge=bool(min(law.log_d1 - log_x[0], log_x[-1] - law.log_d1) < edge_tolerance),
    )


def _initial_breaks(log_x: np.ndarray, log_y: np.ndarray) -> list[float]:
    """Where the smoothed curve bends most (its largest |d² log L / d log x²|), and 5 evenly spread points."""
    spread = list(np.linspace(log_x[0], log_x[-1], 7)[1:-1])
    window = min(len(log_x) // 3, POINTS_PER_DECADE // 2) | 1  # odd, about half a decade
    if window < 5:
        return spread
    # The points are about evenly spaced in log x, as Savitzky-Golay's derivative assumes.
    curvature = savgol_filter(log_y, window, 2, deriv=2, delta=float(np.mean(np.diff(log_x))))
    inner = slice(window // 2, len(log_x) - window // 2)
    return [float(log_x[inner][np.argmax(np.abs(curvature[inner]))]), *spread]


def _initial_parameters(log_x: np.ndarray, log_y: np.ndarray, log_d1: float) -> np.ndarray:
    """[log b, c0, c1, log d1, f1] from straight lines through the points before and after the break."""
    split = int(np.clip(np.searchsorted(log_x, log_d1), 2, len(log_x) - 2))
    slope0, intercept0 = np.polyfit(log_x[:split], log_y[:split], 1)
    slope1, _ = np.polyfit(log_x[split:], log_y[split:], 1)
    return np.array([intercept0, -slope0, slope0 - slope1, log_d1, 0.3])


def summary(
    curve: LossCurve, fit: DecelerationFit, steps: tuple[int, int | None], budget: float | None, budget_source: str
) -> dict:
    """The numbers of a fit of the ``steps`` (skipped, last) as a JSON-ready dict (non-finite values as null)."""
    law = fit.law
    numbers = {
        "x_axis": curve.x_axis,
        "metrics": curve.source,
        "skip_steps": steps[0],
        "last_step": steps[1],
        "points_logged": len(curve.x),
        "nonfinite_losses_dropped": curve.nonfinite_dropped,
        "points_fitted": len(fit.x),
        "fitted_range": [float(fit.x[0]), float(fit.x[-1])],
        "t_d": law.t_d,
        "t_d_1sigma": list(fit.t_d_range),
        "L_d": law.L_d,
        "r_d": law.r_d,
        "budget": budget,
        "budget_source": budget_source,
        "projected_loss": law.projected_loss(budget) if budget else None,
        "last_smoothed_loss": float(fit.loss[-1]),
        "rsle": fit.rsle,
        "break_at_edge": fit.break_at_edge,
        "decelerates": law.r_d < law.c0,
        "parameters": {name: getattr(law, name) for name in PARAMETERS},
        "stderr": dict(fit.stderr),
    }
    return _finite_or_none(numbers)


def _finite_or_none(value):
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def deceleration_figure(curve: LossCurve, fit: DecelerationFit, budget: float | None = None) -> Figure:
    """Loss and its broken-power-law fit, log-log, with t_d (±1σ) and the projection to the budget."""
    law = fit.law
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.plot(curve.x, curve.loss, color="C0", alpha=0.3, linewidth=0.8, label="train loss")
    ax.plot(fit.x, fit.loss, "o", color="C0", markersize=3, label="smoothed points fitted")
    x = np.geomspace(fit.x[0], fit.x[-1], 400)
    ax.plot(x, law.loss(x), color="C3", linewidth=1.8, label=f"broken power law (RSLE {fit.rsle:.4f})")
    end = fit.x[-1]
    if budget and budget > end:
        x = np.geomspace(end, budget, 100)
        ax.plot(x, law.loss(x), "--", color="C3", linewidth=1.2)
        end = budget
    for segment, slope in (((fit.x[0], law.t_d), law.c0), ((law.t_d, end), law.r_d)):  # the two power laws
        segment = np.array(segment)
        ax.plot(segment, law.L_d * (segment / law.t_d) ** -slope, ":", color="C3", linewidth=1.2)
    ax.axvline(law.t_d, color="C1", linewidth=1.2, label=f"$t_d$ = {law.t_d:.4g}, $L_d$ = {law.L_d:.4f}")
    ax.axvspan(*fit.t_d_range, color="C1", alpha=0.15)
    if budget:
        projected = law.projected_loss(budget)
        ax.plot([budget], [projected], "s", color="C4", label=rf"$\hat{{L}}_T$ = {projected:.4f} at T = {budget:.4g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("tokens seen" if curve.x_axis == "tokens" else "step")
    ax.set_ylabel("loss")
    ax.set_title(
        f"loss deceleration: log-log slope {law.c0:.3f} before $t_d$, $r_d$ = {law.r_d:.4f} after"
        + (" (break at the edge of the data)" if fit.break_at_edge else ""),
        loc="left",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig
