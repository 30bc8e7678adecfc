"""WSD learning rate, batch ramp and the resumable sample order, as pure functions."""

from pathlib import Path

import pytest

from dotsllm.config_loading import apply_overrides, from_dict
from dotsllm.recipes.pretrain import PretrainConfig
from dotsllm.training.data import StepBatchSampler, parse_blend
from dotsllm.training.schedules import BatchRamp, WSDSchedule

REPO = Path(__file__).resolve().parents[1]
T = 1e12
DOTS = WSDSchedule(
    peak_lr=3e-4,
    warmup_steps=4000,
    phases=[
        {"name": "stable", "tokens": 10 * T, "end_lr": 3e-4},
        {"name": "anneal1", "tokens": 1 * T, "end_lr": 3e-5},
        {"name": "anneal2", "tokens": 0.2 * T, "end_lr": 1e-5},
    ],
)
RAMP = BatchRamp(
    points=[
        {"from_tokens": 0, "global_batch_tokens": 64 * 2**20},
        {"from_tokens": 6 * T, "global_batch_tokens": 96 * 2**20},
        {"from_tokens": 8.3e12, "global_batch_tokens": 128 * 2**20},
    ]
)


def test_wsd_boundaries():
    assert DOTS.lr(0, 0) == pytest.approx(3e-4 / 4000)
    assert DOTS.lr(1999, 0) == pytest.approx(1.5e-4)
    assert DOTS.lr(3999, 0) == pytest.approx(3e-4)
    assert DOTS.lr(4000, 1 * T) == 3e-4
    assert DOTS.lr(10**6, 10 * T - 1) == pytest.approx(3e-4)
    assert DOTS.lr(10**6, 10 * T) == pytest.approx(3e-4)  # anneal 1 starts at the stable LR
    assert DOTS.lr(10**6, 10.5 * T) == pytest.approx((3e-4 + 3e-5) / 2)
    assert DOTS.lr(10**6, 11 * T) == pytest.approx(3e-5)
    assert DOTS.lr(10**6, 11.1 * T) == pytest.approx(2e-5)
    assert DOTS.lr(10**6, 11.2 * T) == pytest.approx(1e-5)
    assert DOTS.lr(10**6, 20 * T) == pytest.approx(1e-5)
    assert [DOTS.phase_name(t * T) for t in (0, 10, 11, 11.19)] == ["stable", "anneal1", "anneal2", "anneal2"]
    cosine = WSDSchedule(peak_lr=1.0, warmup_steps=0, phases=[{"name": "a", "tokens": 100, "end_lr": 0.0, "shape": "cosine"}])
    assert cosine.lr(5, 50) == pytest.approx(0.5) and cosine.lr(5, 25) == pytest.approx(0.8535533905932737)


def test_batch_ramp_boundaries():
    assert RAMP.global_batch_tokens(0) == 67108864
    assert RAMP.global_batch_tokens(6 * T - 1) == 67108864
    assert RAMP.global_batch_tokens(6 * T) == 100663296
    assert RAMP.global_batch_tokens(8.3e12) == 134217728
    assert RAMP.global_batch_samples(0, 8192, granularity=64) == 8192
    assert RAMP.global_batch_samples(9 * T, 8192, granularity=64) == 16384
    with pytest.raises(ValueError, match="multiple of seq_length"):
        RAMP.global_batch_samples(0, 8192, granularity=3)
    with pytest.raises(ValueError, match="from_tokens: 0"):
        BatchRamp(points=[{"from_tokens": 5, "global_batch_tokens": 8}])


def test_sampler_order_is_a_function_of_consumed_samples():
    ramp = BatchRamp(points=[{"from_tokens": 0, "global_batch_tokens": 8 * 16}, {"from_tokens": 24 * 16, "global_batch_tokens": 16 * 16}])

    def batches(consumed, rank, dp=2):
        return list(StepBatchSampler(80, consumed, 2, rank, dp, 16, ramp))

    rank0, rank1 = batches(0, 0), batches(0, 1)
    # step 1-3: 8 samples (4 per rank, 2 micro-batches); from 24 samples on: 16 per step.
    assert rank0[:2] == [[0, 1], [2, 3]] and rank1[:2] == [[4, 5], [6, 7]]
    assert rank0[6:10] == [[24, 25], [26, 27], [28, 29], [30, 31]]
    assert rank1[6:10] == [[32, 33], [34, 35], [36, 37], [38, 39]]
    seen = sorted(i for mb in rank0 + rank1 for i in mb)
    assert seen == list(range(72))  # 3 x 8 + 3 x 16; the last partial step is not started
    # Resuming after step 4 (40 samples) continues exactly where the full order is.
    assert batches(40, 0) == rank0[10:] and batches(40, 1) == rank1[10:]


def test_blend_folders_expand_to_shards_weighted_by_size(tmp_path):
    for name, size in (("00000", 300), ("00001", 100)):
        (tmp_path / "tokens").mkdir(exist_ok=True)
        (tmp_path / "tokens" / f"{name}.bin").write_bytes(b"x" * size)
        (tmp_path / "tokens" / f"{name}.idx").write_bytes(b"")
    folder = str(tmp_path / "tokens")
    assert parse_blend([folder]) == ([f"{folder}/00000", f"{folder}/00001"], [0.75, 0.25])
    prefixes, weights = parse_blend([[0.4, folder], [0.6, "other/x"]])
    assert prefixes == [f"{folder}/00000", f"{folder}/00001", "other/x"]
    assert weights == pytest.approx([0.3, 0.1, 0.6])
    with pytest.raises(FileNotFoundError, match="holds no .bin shards"):
        parse_blend([str(tmp_path)])


def test_blend_and_overrides():
    assert parse_blend(["a", "b"]) == (["a", "b"], None)
    assert parse_blend([[0.3, "a"], [0.7, "b"]]) == (["a", "b"], [0.3, 0.7])
    with pytest.raises(ValueError, match="data.blend"):
        parse_blend([])
    values = apply_overrides({"training": {"seq_length": 8}}, ["training.seq_length=16", "parallel.ep=2", "data.blend=[x]"])
    assert values == {"training": {"seq_length": 16}, "parallel": {"ep": 2}, "data": {"blend": ["x"]}}
    config = from_dict(PretrainConfig, {**values, "run_dir": "r"})
    assert config.training.seq_length == 16 and config.parallel.ep == 2
    with pytest.raises(ValueError, match=r"config: training: unknown key\(s\) \['seq_lenght'\]"):
        from_dict(PretrainConfig, {"run_dir": "r", "training": {"seq_lenght": 4}})
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["training.seq_length"])


def test_shipped_configs_load():
    import pathlib

    for path in sorted(pathlib.Path(__file__).parents[1].glob("configs/pretrain/*.yaml")):
        config = PretrainConfig.load(path)
        assert config.lr_schedule.peak_lr > 0
    real = PretrainConfig.load(pathlib.Path(__file__).parents[1] / "configs/pretrain/dots1-142b.yaml")
    assert real.lr_schedule.lr(10**6, 10.5 * T) == pytest.approx(DOTS.lr(10**6, 10.5 * T))
    assert real.batch_ramp == RAMP
    assert real.checkpoint.milestone_every_tokens == 1e12


def test_142b_run_reaches_its_token_budget_with_whole_batches():
    """ceil(11.2e12 / 8192) samples do not fill the last 128M-token batches: the run would stop at step
    133,862, 33.9M tokens short. Sized by the ramp it takes 133,863 steps and ends past the budget."""
    config = PretrainConfig.load(REPO / "configs/pretrain/dots1-142b.yaml")
    seq, budget = config.training.seq_length, config.training.train_tokens
    steps, samples = config.batch_ramp.samples_to_reach(budget, seq, granularity=128)
    assert (steps, samples) == (133_863, 1_367_199_744)
    last_batch = config.batch_ramp.global_batch_samples(samples * seq - 1, seq, 128)
    assert last_batch == 2**27 // seq and budget <= samples * seq < budget + last_batch * seq
    assert samples > -(-budget // seq)  # more than the naive ceil(11.2e12 / 8192)
