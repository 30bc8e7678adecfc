"""Checkpoint directory rules: which checkpoint a run resumes from, and crash-safe publishing."""

import json

import pytest
import torch

from dotsllm.training import checkpoint as ckpt
from dotsllm.training.checkpoint import Checkpointer, CheckpointSettings


def fake_checkpoint(path, step, kind="rolling"):
    path.mkdir(parents=True)
    (path / ckpt.META_FILE).write_text(json.dumps({"step": step, "kind": kind, "tokens_seen": step * 10}))
    return path


def test_a_requeued_run_resumes_from_its_own_latest_not_load_from(megatron_world, tmp_path):
    imported = fake_checkpoint(tmp_path / "imported", 0, "imported")
    checkpointer = Checkpointer(tmp_path / "run" / "checkpoints", CheckpointSettings(load_from=str(imported)))
    assert checkpointer.resume_dir() == imported  # a fresh run starts from load_from
    own = fake_checkpoint(tmp_path / "run" / "checkpoints" / ckpt.rolling_name(40), 40)
    assert checkpointer.resume_dir() == own  # once it has saved, its own progress wins
    checkpointer.settings.load = False
    assert checkpointer.resume_dir() == imported


def test_a_crash_while_replacing_a_checkpoint_keeps_the_old_one(megatron_world, tmp_path):
    root = tmp_path / "checkpoints"
    name = ckpt.rolling_name(8)
    # the crash came after the old one was moved aside and before the new one was renamed in
    fake_checkpoint(root / f"{ckpt.OLD_PREFIX}{name}", 8)
    (root / ckpt.LATEST_FILE).write_text(name + "\n")
    assert Checkpointer(root, CheckpointSettings()).resume_dir() == root / name
    assert not (root / f"{ckpt.OLD_PREFIX}{name}").exists()
    # the crash came after the new one arrived: the old one is dropped
    fake_checkpoint(root / f"{ckpt.OLD_PREFIX}{name}", 8)
    assert Checkpointer(root, CheckpointSettings()).resume_dir() == root / name
    assert not (root / f"{ckpt.OLD_PREFIX}{name}").exists()


def test_save_replaces_in_place_and_fsyncs_the_directory_after_latest(megatron_world, tmp_path, monkeypatch):
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    events = []
    fsync_dir, write_atomic = ckpt._fsync_dir, ckpt._write_atomic
    monkeypatch.setattr(ckpt, "_fsync_dir", lambda path: (events.append(("fsync", path.name)), fsync_dir(path)))
    monkeypatch.setattr(ckpt, "_write_atomic", lambda path, text: (events.append(("write", path.name)), write_atomic(path, text)))

    def state(value):
        return {"w": ShardedTensor.from_rank_offsets("w", torch.full((4,), value))}

    root = tmp_path / "checkpoints"
    checkpointer = Checkpointer(root, CheckpointSettings())
    checkpointer.save("rolling", state(1.0), {"step": 3, "tokens_seen": 30})
    assert events[-2:] == [("write", ckpt.LATEST_FILE), ("fsync", "checkpoints")]
    checkpointer.save("rolling", state(2.0), {"step": 3, "tokens_seen": 30})  # the same step again
    loaded = Checkpointer.load(root / ckpt.rolling_name(3), state(0.0))
    assert torch.equal(loaded["w"], torch.full((4,), 2.0))
    assert sorted(p.name for p in root.iterdir()) == [ckpt.LATEST_FILE, ckpt.rolling_name(3)]
