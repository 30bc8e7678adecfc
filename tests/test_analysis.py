"""Training diagnostics: the zero-sum-learning metrics."""

import json
import math

import pytest
import torch

from distributed.dist_launch import free_port
from distributed.zero_sum_worker import reduce_slice
from dotsllm.analysis.zero_sum import loss_change_sums, stats_from_sums, zero_sum_stats


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
