"""Checkpoint directory rules: which checkpoint a run resumes from, crash-safe and durable publishing,
incomplete checkpoints skipped, and the one resolver of a checkpoint path."""

import argparse
import json
import os
import re
import shutil

import pytest
import torch

from dotsllm.training import checkpoint as ckpt
from dotsllm.training.checkpoint import (
    Checkpointer,
    CheckpointSettings,
    IncompleteCheckpointError,
    IncompleteCheckpointWarning,
    resolve_checkpoint,
)


def fake_checkpoint(path, step, kind="rolling"):
    """A checkpoint written before dotsllm.json recorded its files: megatron's two files, not empty."""
    path.mkdir(parents=True)
    (path / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    (path / "common.pt").write_bytes(b"not empty")
    (path / ckpt.META_FILE).write_text(json.dumps({"step": step, "kind": kind, "tokens_seen": step * 10}))
    return path


def state(value):
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    return {
        "w": ShardedTensor.from_rank_offsets("w", torch.full((4,), float(value))),
        "v": ShardedTensor.from_rank_offsets("v", torch.full((300,), float(value))),
        "plain": {"note": "goes to common.pt"},
    }


def save(checkpointer, step):
    return checkpointer.save("rolling", state(step), {"step": step, "tokens_seen": step * 10})


def test_a_requeued_run_resumes_from_its_own_latest_not_load_from(megatron_world, tmp_path):
    imported = fake_checkpoint(tmp_path / "imported", 0, "imported")
    checkpointer = Checkpointer(tmp_path / "run" / "checkpoints", CheckpointSettings(load_from=str(imported)))
    assert checkpointer.resume_dir() == imported  # a fresh run starts from load_from
    own = fake_checkpoint(tmp_path / "run" / "checkpoints" / ckpt.rolling_name(40), 40)
    assert checkpointer.resume_dir() == own  # once it has saved, its own progress wins
    checkpointer.settings.load = False
    assert checkpointer.resume_dir() == imported
    checkpointer.settings.load_from = str(tmp_path / "run")  # a run directory: its latest complete one
    assert checkpointer.resume_dir() == own


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
    # the new one arrived but not whole (no power-loss-safe rename before): the old one comes back
    shutil.copytree(root / name, root / f"{ckpt.OLD_PREFIX}{name}")
    (root / name / "common.pt").write_bytes(b"")
    assert Checkpointer(root, CheckpointSettings()).resume_dir() == root / name
    assert (root / name / "common.pt").read_bytes() == b"not empty"


class FileOps:
    """Records, in order, the fsyncs (by the path of the descriptor), renames and deletions."""

    def __init__(self, monkeypatch):
        self.events = []
        real = {name: getattr(os, name) for name in ("fsync", "replace", "rename", "unlink", "rmdir")}
        rmtree = shutil.rmtree

        def fsync(fd):
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real["fsync"](fd)

        def move(name):
            def moved(src, dst, **kwargs):
                if not kwargs:  # shutil's descriptor-relative calls are recorded as their rmtree
                    self.events.append(("rename", os.path.abspath(src), os.path.abspath(dst)))
                return real[name](src, dst, **kwargs)

            return moved

        def delete(name):
            def deleted(path, **kwargs):
                if not kwargs:
                    self.events.append(("delete", os.path.abspath(path)))
                return real[name](path, **kwargs)

            return deleted

        def tree(path, *args, **kwargs):
            self.events.append(("delete", os.path.abspath(path)))
            return rmtree(path, *args, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        for name in ("replace", "rename"):
            monkeypatch.setattr(os, name, move(name))
        for name in ("unlink", "rmdir"):
            monkeypatch.setattr(os, name, delete(name))
        monkeypatch.setattr(shutil, "rmtree", tree)

    def index(self, event, after=-1):
        """The first index of ``event`` after index ``after``."""
        found = [i for i, e in enumerate(self.events) if i > after and e == event]
        assert found, f"no {event} after {self.events[after] if after >= 0 else 'the start'}"
        return found[0]


def check_durable_order(ops, final):
    """The order of a save's file operations that makes ``final`` survive a power loss (see the module
    doc of dotsllm/training/checkpoint.py); the index of the last fsync, after which deletions may come."""
    tmp, parent = final.with_name(f".tmp_{final.name}"), final.parent
    files = {p.relative_to(final) for p in final.rglob("*") if p.is_file()}
    assert {"common.pt", "metadata.json", ".metadata", ckpt.META_FILE} <= {str(f) for f in files}
    assert any(f.suffix == ".distcp" for f in files)
    renamed = ops.index(("rename", str(tmp), str(final)))
    synced = {e[1] for e in ops.events[:renamed] if e[0] == "fsync"}
    unsynced = {str(tmp / f) for f in files} - synced
    assert not unsynced, f"not fsynced before {tmp.name} -> {final.name}: {sorted(unsynced)}"
    assert str(tmp) in synced
    parent_synced = ops.index(("fsync", str(parent)), after=renamed)
    latest_tmp = str(parent / f".{ckpt.LATEST_FILE}.tmp")
    latest_moved = ops.index(("rename", latest_tmp, str(parent / ckpt.LATEST_FILE)), after=parent_synced)
    ops.index(("fsync", latest_tmp), after=parent_synced)  # its text is on disk before it is renamed
    assert ("fsync", latest_tmp) in ops.events[parent_synced:latest_moved]
    return ops.index(("fsync", str(parent)), after=latest_moved)


def test_save_fsyncs_every_file_before_publishing_and_deletes_only_after(megatron_world, tmp_path, monkeypatch):
    root = tmp_path.resolve() / "checkpoints"
    checkpointer = Checkpointer(root, CheckpointSettings(keep_last=1))
    first = save(checkpointer, 1)
    ops = FileOps(monkeypatch)
    second = save(checkpointer, 2)  # rotates the first away
    done = check_durable_order(ops, second)
    deleted = [i for i, e in enumerate(ops.events) if e[0] == "delete" and e[1].startswith(str(first))]
    assert deleted and min(deleted) > done and not first.exists()

    ops.events.clear()  # the same step saved again: the one it replaces is dropped only once it is published
    save(checkpointer, 2)
    done = check_durable_order(ops, second)
    old = str(root / f"{ckpt.OLD_PREFIX}{second.name}")
    aside = ops.index(("rename", str(second), old))
    assert aside < ops.index(("rename", str(root / f".tmp_{second.name}"), str(second)))
    assert ops.index(("delete", old), after=aside) > done and not os.path.exists(old)
    from megatron.core import dist_checkpointing

    loaded = dist_checkpointing.load({k: v for k, v in state(0).items() if k != "plain"}, str(second))
    assert torch.equal(loaded["w"], torch.full((4,), 2.0))
    assert sorted(p.name for p in root.iterdir()) == [ckpt.LATEST_FILE, ckpt.rolling_name(2)]
    files = {str(p.relative_to(second)): p.stat().st_size for p in second.rglob("*") if p.is_file()}
    assert ckpt.read_meta(second)["files"] == {name: size for name, size in files.items() if name != ckpt.META_FILE}


def test_resume_skips_incomplete_checkpoints_with_a_warning(megatron_world, tmp_path):
    root = tmp_path / "checkpoints"
    checkpointer = Checkpointer(root, CheckpointSettings(keep_last=3))
    for step in (1, 2, 3):
        save(checkpointer, step)
    third, second = root / ckpt.rolling_name(3), root / ckpt.rolling_name(2)
    os.truncate(third / "common.pt", 0)  # what a power loss leaves of a file written without fsync
    with pytest.warns(IncompleteCheckpointWarning) as warned:
        assert checkpointer.resume_dir() == second
    assert [str(w.message) for w in warned] == [
        f"skipping incomplete checkpoint {third}: common.pt is 0 bytes, "
        f"{ckpt.read_meta(third)['files']['common.pt']} when saved; the latest complete one is {second.name}"
    ]
    next(second.glob("*.distcp")).unlink()
    with pytest.warns(IncompleteCheckpointWarning) as warned:
        assert checkpointer.resume_dir() == root / ckpt.rolling_name(1)
    assert {re.sub(r":.*", "", str(w.message)) for w in warned} == {
        f"skipping incomplete checkpoint {path}" for path in (second, third)
    }
    assert any(re.search(r"__0_\d\.distcp missing", str(w.message)) for w in warned)


def test_with_only_incomplete_checkpoints_resume_takes_load_from_or_nothing(megatron_world, tmp_path):
    root = tmp_path / "checkpoints"
    checkpointer = Checkpointer(root, CheckpointSettings(keep_last=1))
    save(checkpointer, 1)
    only = save(checkpointer, 2)  # keep_last 1: the first is rotated away
    assert [p.name for p in ckpt.list_checkpoints(root)] == [only.name]
    (only / ckpt.META_FILE).write_text("")  # unreadable
    with pytest.warns(IncompleteCheckpointWarning, match=re.escape(f"{only}: dotsllm.json unreadable")):
        assert checkpointer.resume_dir() is None
    checkpointer.settings.load_from = str(fake_checkpoint(tmp_path / "imported", 0, "imported"))
    with pytest.warns(IncompleteCheckpointWarning, match="no complete checkpoint under"):
        assert checkpointer.resume_dir() == tmp_path / "imported"
    checkpointer.settings.load_from = str(tmp_path / "nothing")
    with pytest.warns(IncompleteCheckpointWarning), pytest.raises(FileNotFoundError, match="no such file or directory"):
        checkpointer.resume_dir()


def test_rotation_never_deletes_the_newest_complete_checkpoint(megatron_world, tmp_path):
    root = tmp_path / "checkpoints"
    complete = fake_checkpoint(root / ckpt.rolling_name(1), 1)
    broken = fake_checkpoint(root / ckpt.rolling_name(2), 2)
    (broken / "common.pt").write_bytes(b"")
    (root / ckpt.LATEST_FILE).write_text(broken.name + "\n")
    with pytest.warns(IncompleteCheckpointWarning, match=re.escape(f"{broken}: common.pt is empty")):
        Checkpointer(root, CheckpointSettings(keep_last=1))._rotate()
    assert complete.is_dir()


def test_legacy_checkpoints_need_megatron_files(tmp_path):
    legacy = fake_checkpoint(tmp_path / "legacy", 5)
    assert ckpt.checkpoint_problems(legacy) == []
    (legacy / "metadata.json").unlink()
    (legacy / "common.pt").write_bytes(b"")
    assert ckpt.checkpoint_problems(legacy) == ["metadata.json missing", "common.pt is empty"]
    assert ckpt.checkpoint_problems(tmp_path / "absent") == ["no such directory"]
    assert ckpt.checkpoint_problems(tmp_path) == ["no dotsllm.json"]


def test_resolve_checkpoint_a_checkpoint_a_checkpoints_folder_a_run_directory(tmp_path):
    run = tmp_path / "run"
    root = run / "checkpoints"
    first = fake_checkpoint(root / ckpt.rolling_name(1), 1)
    second = fake_checkpoint(root / ckpt.rolling_name(2), 2)
    (root / ckpt.LATEST_FILE).write_text(second.name + "\n")
    assert resolve_checkpoint(first) == first  # a checkpoint: itself
    assert resolve_checkpoint(root) == second  # a checkpoints folder: its latest
    assert resolve_checkpoint(str(run)) == second  # a run directory: the latest of its checkpoints/
    (root / ckpt.LATEST_FILE).unlink()
    assert resolve_checkpoint(root) == second  # no `latest`: the highest step

    (second / "common.pt").write_bytes(b"")
    with pytest.raises(IncompleteCheckpointError, match=re.escape(f"{second}: incomplete checkpoint: common.pt is")):
        resolve_checkpoint(second)
    with pytest.warns(IncompleteCheckpointWarning, match=re.escape(str(second))):
        assert resolve_checkpoint(run) == first
    shutil.rmtree(first)
    with pytest.warns(IncompleteCheckpointWarning):
        none_complete = f"{root}: no complete checkpoint; incomplete: {second.name} ("
        with pytest.raises(FileNotFoundError, match=re.escape(none_complete)):
            resolve_checkpoint(run)

    expected = "expected a dotsllm checkpoint (a folder holding dotsllm.json), a checkpoints folder or a run directory"
    nothing = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{nothing}: no such file or directory; {expected}")):
        resolve_checkpoint(nothing)
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'other'}: not a checkpoint; {expected}")):
        resolve_checkpoint(tmp_path / "other")


def test_checkpoint_arguments_print_a_clean_error(tmp_path, capsys):
    from dotsllm.commands import export_hf

    run = tmp_path / "run"
    latest = fake_checkpoint(run / "checkpoints" / ckpt.rolling_name(3), 3)
    parser = argparse.ArgumentParser(prog="dotsllm export-hf")
    export_hf.add_arguments(parser)
    assert parser.parse_args([str(run), "out"]).checkpoint == latest
    with pytest.raises(SystemExit):
        parser.parse_args([str(tmp_path / "nothing"), "out"])
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"dotsllm export-hf: error: argument checkpoint: {tmp_path / 'nothing'}: no such file")

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert ckpt.checkpoint_or_hf_argument(str(hf)) == hf  # an exported HF folder: itself
    assert ckpt.checkpoint_or_hf_argument(str(run)) == latest
    with pytest.raises(argparse.ArgumentTypeError, match="not a checkpoint"):
        ckpt.checkpoint_argument(str(hf))
