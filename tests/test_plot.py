"""``dotsllm plot``: PNGs from a metrics.jsonl, their data, and errors that name the file and line."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from dotsllm.cli import main
from dotsllm.training.plots import DPI, FIGSIZE, expert_load_figure, loss_figure, read_metrics, zero_sum_figure

STEPS = range(1, 31)


def record(step, **extra):
    return {"step": step, "tokens_seen": 1024 * step, **extra}


def train_record(step):
    return record(
        step,
        loss=10.0 / step,
        lr=1e-3 * min(1, step / 10),
        expert_load={str(n): {"load_max_over_mean": 1 + n / step, "bias_norm": 0.01 * n * step} for n in (2, 3)},
    )


@pytest.fixture
def run_dir(tmp_path):
    lines = [train_record(s) for s in STEPS] + [record(10, valid_loss=1.5), record(20, valid_loss=0.8)]
    lines.insert(5, record(3, loss=99.0, lr=0.0))  # a resumed run logs step 3 again: the last one counts
    lines.insert(6, train_record(3))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return tmp_path


def test_plot_command_writes_pngs_of_the_figure_size(run_dir, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["expert_load.png", "loss.png"]
    assert capsys.readouterr().out.split() == [str(out / "loss.png"), str(out / "expert_load.png")]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
            assert np.asarray(image.convert("L")).std() > 10  # drawn on, not blank
    main(["plot", str(run_dir)])
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == ["expert_load.png", "loss.png"]


def test_loss_figure_plots_the_records(run_dir):
    metrics = read_metrics(run_dir / "metrics.jsonl")
    loss_ax, lr_ax = loss_figure(metrics).axes
    train, ema, valid = loss_ax.get_lines()
    tokens = [1024.0 * s for s in STEPS]
    np.testing.assert_array_equal(train.get_xdata(), tokens)
    np.testing.assert_array_equal(train.get_ydata(), [10.0 / s for s in STEPS])
    assert ema.get_ydata()[0] == 10.0 and ema.get_ydata()[-1] > 10.0 / STEPS[-1]  # smoothed lags behind
    np.testing.assert_array_equal(valid.get_xydata(), [[10240, 1.5], [20480, 0.8]])
    np.testing.assert_array_equal(lr_ax.get_lines()[0].get_ydata(), [1e-3 * min(1, s / 10) for s in STEPS])


def test_expert_load_figure_is_layer_by_step(run_dir):
    heat_ax, bias_ax, _ = expert_load_figure(read_metrics(run_dir / "metrics.jsonl")).axes  # and the colorbar
    (mesh,) = heat_ax.collections
    np.testing.assert_allclose(mesh.get_array(), [[1 + n / s for s in STEPS] for n in (2, 3)])
    assert [line.get_label() for line in bias_ax.get_lines()] == ["layer 2", "layer 3"]
    np.testing.assert_allclose(bias_ax.get_lines()[1].get_ydata(), [0.03 * s for s in STEPS])


def test_dense_run_has_no_expert_load_figure(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record(1, loss=2.0, lr=1e-3, expert_load={})) + "\n")
    assert expert_load_figure(read_metrics(tmp_path / "metrics.jsonl")) is None
    assert main(["plot", str(tmp_path)]) == 0
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["loss.png"]


def zsl(D, M):
    return {"zsl_D": D, "zsl_M": M, "zsl_delta_loss": 0.0 if math.isnan(D) else -(1 - D) * M, "zsl_seconds": 0.5}


def test_zero_sum_figure_draws_loss_D_and_M(tmp_path):
    """ZSL metrics in training records (steps 10, 20) or in records of their own (30, 40: D undefined)."""
    lines = [record(s, loss=10.0 / s, lr=1e-3, **(zsl(s / 50, 0.01) if s in (10, 20) else {})) for s in range(1, 41)]
    lines.insert(30, record(30, **zsl(0.9, 0.004)))
    lines.append(record(40, **zsl(math.nan, 0.0)))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in metrics.train] == list(range(1, 41))
    loss_ax, d_ax, m_ax = zero_sum_figure(metrics).axes
    np.testing.assert_array_equal(loss_ax.get_lines()[0].get_ydata(), [10.0 / s for s in range(1, 41)])
    np.testing.assert_array_equal(d_ax.get_lines()[0].get_xydata(), [[10, 0.2], [20, 0.4], [30, 0.9], [40, math.nan]])
    m_line, delta_line = m_ax.get_lines()
    np.testing.assert_array_equal(m_line.get_ydata(), [0.01, 0.01, 0.004, 0.0])
    np.testing.assert_allclose(delta_line.get_ydata(), [0.008, 0.006, 0.0004, 0.0])  # |ΔL| = (1 - D)·M
    assert main(["plot", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["loss.png", "zero_sum.png"]
    with Image.open(tmp_path / "plots" / "zero_sum.png") as image:
        assert image.size == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)


@pytest.mark.parametrize(
    "third_line, message",
    [
        ('{"step": 3, "tokens_seen": 3072, "loss": 1.0', ":3: not JSON"),
        ('{"tokens_seen": 3072, "loss": 1.0}', ":3: record without step"),
        ('{"step": 3, "tokens_seen": 3072}', ":3: record has none of 'loss', 'valid_loss', 'heldout_accuracy', 'zsl_D'"),
        ("[1, 2]", ":3: record without step, tokens_seen"),
    ],
)
def test_bad_line_is_named(tmp_path, third_line, message):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(train_record(s)) + "\n" for s in (1, 2)) + third_line + "\n")
    with pytest.raises(SystemExit, match="dotsllm plot: " + f"{path}{message}".replace("[", r"\[")):
        main(["plot", str(tmp_path)])


def test_missing_or_empty_metrics_are_named(tmp_path):
    with pytest.raises(SystemExit, match=f"{tmp_path / 'metrics.jsonl'}: no such metrics file"):
        main(["plot", str(tmp_path)])
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record(4, valid_loss=1.0)) + "\n")
    with pytest.raises(SystemExit, match="metrics.jsonl: no training records"):
        main(["plot", str(tmp_path)])
