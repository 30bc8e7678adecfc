"""Training diagnostics: the loss-deceleration fit and command, and the zero-sum-learning metrics."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from distributed.dist_launch import free_port
from distributed.zero_sum_worker import reduce_slice
from dotsllm.analysis.deceleration import (
    MIN_POINTS,
    BrokenPowerLaw,
    LossCurve,
    fit_broken_power_law,
    log_moving_average,
    points_to_fit,
    read_loss_curve,
)
from dotsllm.training.zero_sum import loss_change_sums, stats_from_sums, zero_sum_stats
from dotsllm.cli import main
from dotsllm.recipes.pretrain import PretrainConfig
from dotsllm.training.plots import DPI, FIGSIZE

# (b, c0, c1, d1, f1, last step, log interval): breaks sharp and smooth, early and late, like the
# paper's OLMo fits (c0 ≈ 0.2, r_d = c0 + c1 ≈ 0.01-0.05, f1 ≈ 0.2-0.8, t_d ≈ 4000-6000).
LAWS = [
    (20.0, 0.20, -0.18, 6000, 0.30, 60_000, 1),
    (26.0, 0.27, -0.23, 3700, 0.75, 100_000, 1),
    (12.0, 0.12, -0.07, 800, 0.20, 20_000, 1),
    (40.0, 0.35, -0.25, 20_000, 0.50, 200_000, 20),
]
NOISE = 0.01  # relative per-step noise of the synthetic losses


def synthetic_curve(b, c0, c1, d1, f1, last_step, every, seed=0):
    law = BrokenPowerLaw(math.log(b), c0, c1, math.log(d1), f1)
    steps = np.arange(every, last_step + 1, every, dtype=float)
    loss = law.loss(steps) * (1 + NOISE * np.random.default_rng(seed).standard_normal(len(steps)))
    return law, LossCurve(steps, loss, steps, "step", "synthetic")


def write_metrics(run_dir, records):
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("params", LAWS, ids=[f"d1={p[3]}-f1={p[4]}" for p in LAWS])
def test_fit_recovers_the_law_of_a_noisy_curve(params):
    law, curve = synthetic_curve(*params)
    fit = fit_broken_power_law(*points_to_fit(curve))
    assert fit.law.t_d == pytest.approx(law.t_d, rel=0.05)
    assert fit.law.r_d == pytest.approx(law.r_d, rel=0.05)
    assert fit.law.L_d == pytest.approx(law.L_d, rel=0.01)
    assert not fit.break_at_edge
    low, high = fit.t_d_range
    assert low < fit.law.t_d < high


def test_smoothing_is_a_window_mean_placed_at_its_mean_x():
    x = np.array([1.0, 2.0, 3.0, 10.0, 11.0, 12.0])
    y = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    sx, sy = log_moving_average(x, y, ratio=1.2)  # windows [x/1.2, x]: {1} {2} {3} {10} {10,11} {10,11,12}
    np.testing.assert_allclose(sx, [1, 2, 3, 10, 10.5, 11])
    np.testing.assert_allclose(sy, [6, 5, 4, 3, 2.5, 2])
    # On a straight power law the smoothed points stay on the curve (a window's end would lag ~9%).
    t = np.arange(1.0, 10_001)
    st, sl = log_moving_average(t, t**-0.3)
    np.testing.assert_allclose(sl[100:], st[100:] ** -0.3, rtol=1e-3)


@pytest.mark.parametrize(
    "last_step, fitted, after_skip",
    [(110, 3, 10), (90, 0, 0)],  # steps 101-110 span 0.04 decade: 3 log-spaced points; none at all
)
def test_too_short_curve_is_a_clear_error(tmp_path, last_step, fitted, after_skip):
    write_metrics(tmp_path, [{"step": s, "tokens_seen": 64 * s, "loss": 5.0 / s**0.2} for s in range(1, last_step + 1)])
    message = (
        f"dotsllm analyze deceleration: {tmp_path / 'metrics.jsonl'}: {fitted} loss points to fit ({last_step} logged, "
        f"{after_skip} after step 100); the broken power law needs at least {MIN_POINTS} — log more often, "
        "train longer or skip fewer early steps"
    )
    with pytest.raises(SystemExit) as error:
        main(["analyze", "deceleration", str(tmp_path)])
    assert str(error.value) == message


def test_command_writes_the_fit_as_png_and_json(tmp_path, capsys):
    _, curve = synthetic_curve(*LAWS[0][:5], last_step=30_000, every=5)
    steps, losses = curve.steps.astype(int).tolist(), curve.loss.tolist()
    records = [{"step": s, "tokens_seen": 4096 * s, "loss": v} for s, v in zip(steps, losses)]
    # a resumed run logs step 505 again (the last record counts); step 2503 skipped its update (not fitted)
    records.insert(100, {"step": 505, "tokens_seen": 4096 * 505, "loss": 99.0})
    records.insert(500, {"step": 2503, "tokens_seen": 4096 * 2503, "loss": math.nan})
    records.insert(501, {"step": 2503, "tokens_seen": 4096 * 2503, "loss": None})
    write_metrics(tmp_path, records)

    assert main(["analyze", "deceleration", str(tmp_path), "--budget-steps", "60000"]) == 0
    out_dir = tmp_path / "analysis"
    numbers = json.loads((out_dir / "deceleration.json").read_text())
    expected = fit_broken_power_law(*points_to_fit(read_loss_curve(tmp_path)))
    assert numbers["t_d"] == expected.law.t_d and numbers["r_d"] == expected.law.r_d
    assert numbers["L_d"] == expected.law.L_d
    L_T = numbers["L_d"] * (numbers["t_d"] / 60_000) ** numbers["r_d"]  # noqa: N806
    assert numbers["projected_loss"] == pytest.approx(L_T, rel=1e-12)
    assert (numbers["budget"], numbers["budget_source"], numbers["x_axis"]) == (60_000, "--budget-steps", "step")
    assert (numbers["points_logged"], numbers["nonfinite_losses_dropped"]) == (6000, 1)
    assert read_loss_curve(tmp_path).loss.max() < 99.0
    assert numbers["points_fitted"] == len(expected.x) and numbers["parameters"]["c0"] == expected.law.c0
    assert numbers["decelerates"] and not numbers["break_at_edge"]
    printed = capsys.readouterr().out
    assert printed.split()[-2:] == [str(out_dir / "deceleration.png"), str(out_dir / "deceleration.json")]
    for value in (f"{numbers['t_d']:,.0f}", *(f"{numbers[key]:.4f}" for key in ("L_d", "r_d", "projected_loss"))):
        assert value in printed
    with Image.open(out_dir / "deceleration.png") as image:
        assert image.size == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
        assert np.asarray(image.convert("L")).std() > 10

    elsewhere = tmp_path / "elsewhere"
    args = ["analyze", "deceleration", str(tmp_path), "--tokens", "--last-step", "20000", "--output", str(elsewhere)]
    assert main(args) == 0
    by_tokens = json.loads((elsewhere / "deceleration.json").read_text())
    # tokens are 4096 x steps here: the fit of the steps up to 20000, scaled
    until_20000 = fit_broken_power_law(*points_to_fit(read_loss_curve(tmp_path), last_step=20_000))
    assert until_20000.x[-1] <= 20_000 < expected.x[-1]
    assert by_tokens["t_d"] == pytest.approx(4096 * until_20000.law.t_d, rel=1e-4)
    assert (by_tokens["r_d"], by_tokens["L_d"]) == pytest.approx((until_20000.law.r_d, until_20000.law.L_d), rel=1e-4)
    assert by_tokens["fitted_range"][1] == pytest.approx(4096 * until_20000.x[-1])
    assert [by_tokens[k] for k in ("x_axis", "last_step", "budget", "projected_loss")] == ["tokens", 20_000, None, None]
    with pytest.raises(SystemExit, match="the fit is against steps: give --budget-steps, not --budget-tokens"):
        main(["analyze", "deceleration", str(tmp_path), "--budget-tokens", "1e9"])


def test_budget_from_the_config_is_where_its_batch_ramp_reaches_train_tokens():
    # dots1-tiny: 48 steps of 1024 tokens, then 24 of 2048 (the README's 72 steps)
    assert PretrainConfig.load("configs/pretrain/dots1-tiny.yaml").budget() == (72, 98304)


# ---- zero-sum learning -------------------------------------------------------------------------


def reference(before, after, mask=None):
    """D, M, ΔL straight from the definitions, in the tensors' own dtype."""
    delta = after - before
    if mask is not None:
        delta = delta[mask.bool()]
    return 1 - delta.sum().abs() / delta.abs().sum(), delta.abs().mean(), delta.mean()


def test_zero_sum_metrics_equal_the_definitions():
    gen = torch.Generator().manual_seed(0)
    before = torch.rand(4, 128, generator=gen) * 10
    after = before + 0.05 * torch.randn(4, 128, generator=gen) - 0.01  # a step that helps on average
    mask = torch.rand(4, 128, generator=gen) > 0.3
    for m in (None, mask, mask.float()):  # a bool mask or megatron's float loss_mask
        stats = zero_sum_stats(before, after, m)
        D, M, delta_loss = reference(before, after, m)
        assert stats.D == pytest.approx(D.item(), abs=1e-6)
        assert stats.M == pytest.approx(M.item(), abs=1e-6)
        assert stats.delta_loss == pytest.approx(delta_loss.item(), abs=1e-6)
        assert abs(stats.delta_loss) == pytest.approx((1 - stats.D) * stats.M, rel=1e-12)
        assert stats.tokens == (4 * 128 if m is None else int(mask.sum()))
    # masked-out tokens do not count, whatever their losses
    scrambled = torch.where(mask, after, torch.randn(4, 128, generator=gen) * 100)
    assert zero_sum_stats(before, scrambled, mask) == zero_sum_stats(before, after, mask)
    assert zero_sum_stats(before, after, mask).as_record() == {
        "zsl_D": stats.D, "zsl_M": stats.M, "zsl_delta_loss": stats.delta_loss
    }  # fmt: skip


def test_zero_sum_extremes_and_undefined_cases():
    before = torch.tensor([2.0, 3.0, 4.0, 5.0])
    all_better = zero_sum_stats(before, before - torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert all_better.D == pytest.approx(0.0, abs=1e-12) and all_better.delta_loss == pytest.approx(-all_better.M)
    cancelled = zero_sum_stats(before, before + torch.tensor([0.5, -0.5, 0.25, -0.25]))
    assert (cancelled.D, cancelled.M, cancelled.delta_loss) == (1.0, 0.375, 0.0)
    unchanged = zero_sum_stats(before, before.clone())
    assert math.isnan(unchanged.D) and (unchanged.M, unchanged.delta_loss, unchanged.tokens) == (0.0, 0.0, 4)
    nothing = zero_sum_stats(before, before + 1, torch.zeros(4))
    assert nothing.tokens == 0 and all(math.isnan(v) for v in (nothing.D, nothing.M, nothing.delta_loss))
    with pytest.raises(ValueError, match=r"must have one shape, got \[\(4,\), \(2, 2\)\]"):
        zero_sum_stats(before, before.view(2, 2))


def test_reduction_over_two_processes_equals_the_whole_batch(tmp_path):
    gen = torch.Generator().manual_seed(1)
    before = torch.rand(8, 32, generator=gen) * 8
    after = before + 0.1 * torch.randn(8, 32, generator=gen)
    mask = torch.rand(8, 32, generator=gen) > 0.2
    cut = 3  # uneven slices: the ranks' token counts differ, so averaging per-rank metrics would be wrong
    slices = [(before[:cut], after[:cut], mask[:cut]), (before[cut:], after[cut:], mask[cut:])]
    torch.multiprocessing.spawn(reduce_slice, args=(free_port(), slices, tmp_path), nprocs=2)
    whole = zero_sum_stats(before, after, mask)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["tokens"] == whole.tokens
        for key in ("D", "M", "delta_loss"):
            assert got[key] == pytest.approx(getattr(whole, key), rel=1e-12)
    per_rank = [stats_from_sums(loss_change_sums(*s)) for s in slices]
    assert abs(sum(s.D for s in per_rank) / 2 - whole.D) > 1e-4  # (the naive average is not the answer)
