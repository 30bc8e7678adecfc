"""``dotsllm pretrain`` end to end on dots1-tiny: exact resume, faults, milestones, resharding."""

import os
import random
import signal
from pathlib import Path

import pytest
import torch

from dotsllm.training.checkpoint import latest_checkpoint, list_checkpoints, read_meta
from pretrain_runs import finish, metrics, run, start, train_records, wait_for, wandb_history
from shards import write_shard

VOCAB, EOD = 8192, 0
KILL_STEPS = random.Random(20261130)  # seeded: a failing kill step reproduces
TOKENS_PER_STEP = [1024] * 8 + [2048] * 8  # the batch ramp below: 16 steps, 24576 tokens
MILESTONE = 6144  # steps 6, 10, 13, 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    a = write_shard(root / "web", 900, VOCAB, EOD, seed=0)
    b = write_shard(root / "code", 300, VOCAB, EOD, seed=1)
    return [f"data.blend=[[0.7,{a}],[0.3,{b}]]", f"data.vocab_size={VOCAB}", f"data.eod_id={EOD}"]


def overrides(shards, run_dir, *extra):
    return [
        f"run_dir={run_dir}",
        *shards,
        "training.train_tokens=24576",
        "training.eval_interval=0",
        "batch_ramp.points=[{from_tokens: 0, global_batch_tokens: 1024}, {from_tokens: 8192, global_batch_tokens: 2048}]",
        "checkpoint.save_every_steps=4",
        "checkpoint.keep_last=2",
        f"checkpoint.milestone_every_tokens={MILESTONE}",
        "logging.log_interval=1",
        "logging.wandb_mode=disabled",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """An uninterrupted run (with wandb offline)."""
    run_dir = tmp_path_factory.mktemp("reference")
    run(1, overrides(shards, run_dir, "logging.wandb_mode=offline"), run_dir.parent / "reference.log")
    return run_dir


def assert_same_trajectory(run_dir, reference_dir, context=""):
    got, want = train_records(run_dir), train_records(reference_dir)
    assert sorted(got) == list(range(1, 17)), context
    for step in want:
        assert got[step]["loss"] == want[step]["loss"], f"step {step} {context}"  # bit-identical
        assert got[step]["batch_checksum"] == want[step]["batch_checksum"], f"step {step} {context}"
        assert got[step]["tokens_seen"] == want[step]["tokens_seen"]


def test_reference_run_uses_schedules_and_keeps_milestones(reference):
    from dotsllm.recipes.pretrain import PretrainConfig

    config = PretrainConfig.load(Path(__file__).parents[1] / "configs/pretrain/dots1-tiny.yaml")
    records = train_records(reference)
    tokens = 0
    for step in range(1, 17):
        r = records[step]
        assert r["global_batch_tokens"] == TOKENS_PER_STEP[step - 1]
        assert r["lr"] == pytest.approx(config.lr_schedule.lr(step - 1, tokens), rel=1e-12)
        tokens += TOKENS_PER_STEP[step - 1]
        assert r["tokens_seen"] == tokens
        assert r["update_applied"] and r["aux_loss"] > 0
        assert set(r["expert_load"]) == {"2", "3", "4"}  # the MoE layers (1-based; layer 1 is dense)
    assert records[16]["loss"] < records[1]["loss"]

    names = [p.name for p in list_checkpoints(reference / "checkpoints")]
    milestones = [n for n in names if n.startswith("milestone")]
    assert milestones == [f"milestone_tokens_{t:015d}" for t in (6144, 12288, 18432, 24576)]
    assert [read_meta(reference / "checkpoints" / m)["tokens_seen"] for m in milestones] == [6144, 12288, 18432, 24576]
    assert [n for n in names if n.startswith("step_")] == ["step_00000008", "step_00000012"]  # keep_last 2
    assert latest_checkpoint(reference / "checkpoints").name == "milestone_tokens_000000000024576"

    # wandb offline: a run directory holding every logged step.
    history = wandb_history(reference)
    assert [row["_step"] for row in history] == list(range(1, 17))
    assert [row["loss"] for row in history] == [records[s]["loss"] for s in range(1, 17)]
    assert history[-1]["expert_load/layer_2/load_max_over_mean"] == records[16]["expert_load"]["2"]["load_max_over_mean"]


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(shards, reference, tmp_path):
    kill_after = KILL_STEPS.randint(5, 11)
    log = tmp_path / "killed.log"
    proc = start(1, overrides(shards, tmp_path), log)
    wait_for(lambda: max(train_records(tmp_path), default=0) >= kill_after, proc, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run(1, overrides(shards, tmp_path), tmp_path / "resumed.log")
    assert_same_trajectory(tmp_path, reference, f"killed after step {kill_after}")


def test_distributed_optimizer_resumes_bit_identically_after_sigkill(shards, tmp_path):
    """Killed after step 8-10, resumed from step 6: the re-run steps repeat the killed run's exactly."""
    settings = ["optimizer.use_distributed_optimizer=true", "checkpoint.save_every_steps=6", "checkpoint.milestone_every_tokens=0"]
    kill_after = KILL_STEPS.randint(8, 10)
    log = tmp_path / "killed.log"
    proc = start(1, overrides(shards, tmp_path, *settings), log)
    wait_for(lambda: max(train_records(tmp_path), default=0) >= kill_after, proc, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = train_records(tmp_path)
    run(1, overrides(shards, tmp_path, *settings), tmp_path / "resumed.log")
    resumed = train_records(tmp_path)
    assert sorted(resumed) == list(range(1, 17))
    assert [r["step"] for r in metrics(tmp_path) if "loss" in r].count(7) == 2  # step 7 ran again
    for step in range(7, max(killed) + 1):
        assert resumed[step]["loss"] == killed[step]["loss"], f"step {step}, killed after {kill_after}"
        assert resumed[step]["batch_checksum"] == killed[step]["batch_checksum"], f"step {step}"


def test_sigterm_saves_exits_zero_and_resumes(shards, reference, tmp_path):
    log = tmp_path / "terminated.log"
    proc = start(1, overrides(shards, tmp_path, "checkpoint.save_every_steps=0"), log)
    wait_for(lambda: max(train_records(tmp_path), default=0) >= 3, proc, log)
    proc.send_signal(signal.SIGTERM)
    finish(proc, log, expect_rc=0)
    stopped_at = read_meta(latest_checkpoint(tmp_path / "checkpoints"))["step"]
    assert 3 <= stopped_at < 16 and max(train_records(tmp_path)) == stopped_at
    run(1, overrides(shards, tmp_path), tmp_path / "resumed.log")
    assert_same_trajectory(tmp_path, reference)


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(shards, reference, tmp_path):
    log = tmp_path / "killed.log"
    proc = start(1, overrides(shards, tmp_path), log)
    partial = tmp_path / "checkpoints" / ".tmp_step_00000008"
    wait_for(partial.exists, proc, log, poll_s=0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial.exists() and not (tmp_path / "checkpoints" / "step_00000008").exists()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "milestone_tokens_000000000006144"
    run(1, overrides(shards, tmp_path), tmp_path / "resumed.log")
    assert not partial.exists()
    assert_same_trajectory(tmp_path, reference)


@pytest.mark.parametrize("distributed_optimizer", [False, True], ids=["adam", "distributed_adam"])
def test_expert_parallel_checkpoint_resumes_with_one_process(shards, tmp_path, megatron_world, distributed_optimizer):
    """Saved with EP=2 on 2 processes, loaded with EP=1: weights bit-equal, and the next two steps'
    losses within 1e-6 (the second depends on the restored Adam moments and step count)."""
    from megatron.core import dist_checkpointing

    from dotsllm.model import Dots1ModelConfig, build_model

    ep2, ep1 = tmp_path / "ep2", tmp_path / "ep1"
    ten_steps = [
        "training.train_tokens=12288", "checkpoint.milestone_every_tokens=0", "checkpoint.save_every_steps=8",
        f"optimizer.use_distributed_optimizer={str(distributed_optimizer).lower()}",
    ]  # fmt: skip
    run(2, overrides(shards, ep2, "parallel.ep=2", *ten_steps), tmp_path / "ep2.log")
    saved = ep2 / "checkpoints" / "step_00000008"
    run(1, overrides(shards, ep1, f"checkpoint.load_from={saved}", *ten_steps), tmp_path / "ep1.log")
    assert sorted(train_records(ep1)) == [9, 10]
    for step in (9, 10):
        assert abs(train_records(ep1)[step]["loss"] - train_records(ep2)[step]["loss"]) < 1e-6, f"step {step}"

    model = build_model(Dots1ModelConfig.from_preset("dots1-tiny"))
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(saved))
    model.load_state_dict(loaded["model"])
    resaved = tmp_path / "resaved"
    resaved.mkdir()
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(resaved))
    original = dist_checkpointing.load_plain_tensors(str(saved))
    again = dist_checkpointing.load_plain_tensors(str(resaved))
    model_keys = [k for k in again if isinstance(again[k], torch.Tensor)]
    assert any("experts" in k for k in model_keys) and any("expert_bias" in k for k in model_keys)
    for key in model_keys:
        assert torch.equal(original[key], again[key]), key


def test_nonfinite_losses_are_skipped_then_stop_the_run(shards, tmp_path):
    log = tmp_path / "nan.log"
    proc = start(1, overrides(shards, tmp_path, "lr_schedule.peak_lr=1e30",
                              "lr_schedule.warmup_steps=0", "training.max_nonfinite_steps=3"), log)  # fmt: skip
    rc = finish(proc, log, expect_rc=None)
    records = train_records(tmp_path)
    assert rc != 0 and "training.max_nonfinite_steps = 3" in log.read_text()
    skipped = [s for s, r in records.items() if not r["update_applied"]]
    assert len(skipped) == 4 and records[skipped[-1]]["nonfinite_skipped"] == 4


def test_missing_and_mismatched_shards_are_named(tmp_path):
    from dotsllm.training.data import TokenizerInfo, validate_shards

    prefix = write_shard(tmp_path / "big_vocab", 20, 9000, EOD)
    with pytest.raises(FileNotFoundError, match=r"nope.*nope\.bin, .*nope\.idx"):
        validate_shards([str(tmp_path / "nope")], TokenizerInfo(VOCAB, EOD), VOCAB, 0)
    with pytest.raises(ValueError, match="big_vocab.bin holds token id .* outside the tokenizer's vocabulary of 8192"):
        validate_shards([prefix], TokenizerInfo(VOCAB, EOD), VOCAB, 0)
    with pytest.raises(ValueError, match=r"the shards' tokenizer has 9000 tokens, more than the model's vocab_size 8192"):
        validate_shards([prefix], TokenizerInfo(9000, EOD), VOCAB, 0)


def test_a_budget_the_last_batch_overshoots_is_reached_and_saved(shards, tmp_path):
    """2500 tokens in 1024-token batches: the run takes a third step (3072 tokens) and checkpoints it,
    instead of stopping at 2048 on 'data exhausted' without a save."""
    settings = ["training.train_tokens=2500", "checkpoint.save_every_steps=0", "checkpoint.milestone_every_tokens=0"]
    run(1, overrides(shards, tmp_path / "a", *settings), tmp_path / "a.log")
    assert sorted(train_records(tmp_path / "a")) == [1, 2, 3]
    last = latest_checkpoint(tmp_path / "a" / "checkpoints")
    assert last.name == "step_00000003" and read_meta(last)["tokens_seen"] == 3072
    assert "done: token budget reached at step 3" in (tmp_path / "a.log").read_text()

    # the same run with another seq_length: an error, not a silent restart from step 0
    proc = start(1, overrides(shards, tmp_path / "a", *settings, "training.seq_length=64"), tmp_path / "b.log")
    assert finish(proc, tmp_path / "b.log", expect_rc=None) != 0
    assert "was trained at seq_length 128, this run has 64" in (tmp_path / "b.log").read_text()
    # asked for: a new run from its weights, counting from zero
    fresh = ["training.seq_length=64", f"checkpoint.load_from={last}", "checkpoint.load_progress=false"]
    run(1, overrides(shards, tmp_path / "c", *settings, *fresh), tmp_path / "c.log")
    records = train_records(tmp_path / "c")
    assert sorted(records) == [1, 2, 3] and records[3]["tokens_seen"] == 3072  # 16 samples of 64 per step


def test_zero_sum_metrics_leave_the_run_unchanged(shards, reference, tmp_path):
    """Measuring D and M every 4 steps (two forward passes of a held-out batch around the optimizer
    step) touches neither the training batches nor the RNG: the losses are the reference's, bit for bit."""
    run(1, overrides(shards, tmp_path, "diagnostics.zsl_interval=4", "diagnostics.zsl_samples=4"), tmp_path / "zsl.log")
    assert_same_trajectory(tmp_path, reference)
    zsl = [r for r in metrics(tmp_path) if "zsl_D" in r]
    assert [r["step"] for r in zsl] == [4, 8, 12, 16]
    for r in zsl:
        assert 0 <= r["zsl_D"] <= 1 and r["zsl_M"] > 0 and r["zsl_seconds"] > 0
        assert abs(r["zsl_delta_loss"]) == pytest.approx((1 - r["zsl_D"]) * r["zsl_M"], rel=1e-9)
