"""Checkpoints with megatron-core ``dist_checkpointing``: rolling ones, permanent milestones, atomic.

Layout under ``<run_dir>/checkpoints``::

    step_00001000/                   rolling: the newest ``keep_last`` are kept
    milestone_tokens_001000000000000/  permanent: one per ``milestone_every_tokens``, never rotated
    latest                           name of the newest complete checkpoint (written last)
    .tmp_<name>/                     a checkpoint being written; ignored, removed by the next save
    .old_<name>/                     one being replaced by a new <name>; restored if that never arrived

A checkpoint is complete or absent: it is written under ``.tmp_<name>``, its ``dotsllm.json``
metadata last, then renamed into place, and only then is ``latest`` replaced (atomically, its directory fsynced).
Because ``dist_checkpointing`` stores global tensors, a checkpoint loads into any TP/PP/EP/DP.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

META_FILE = "dotsllm.json"
LATEST_FILE = "latest"
OLD_PREFIX = ".old_"  # a checkpoint being replaced by a new one of the same name
# The distributed optimizer's reshardable format (the default one cannot be saved on CPU and
# does not reshard); the non-distributed optimizer ignores these keys.
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}


@dataclass
class CheckpointSettings:
    save_every_steps: int = 1000  # rolling checkpoints; 0 disables them
    keep_last: int = 2  # rolling checkpoints kept
    milestone_every_tokens: float = 0  # permanent checkpoints (1e12 for dots1-142b); 0 disables
    load: bool = True  # resume from the run's latest checkpoint (everything) when there is one
    load_from: str | None = None  # a fresh run (no checkpoint of its own yet) starts from this one
    # What a run started from `load_from` takes from it besides the weights: the optimizer state, and
    # the step, samples seen and schedules' position (False: count from zero, e.g. a new seq_length).
    load_optimizer: bool = True
    load_progress: bool = True


def rolling_name(step: int) -> str:
    return f"step_{step:08d}"


def milestone_name(tokens_seen: int) -> str:
    return f"milestone_tokens_{tokens_seen:015d}"


def read_meta(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt_dir} is not a complete dotsllm checkpoint (no {META_FILE})")
    return json.loads(path.read_text())


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (by step)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: (read_meta(p)["step"], p.name))


def latest_checkpoint(root: Path) -> Path | None:
    tracker = root / LATEST_FILE
    if tracker.is_file():
        candidate = root / tracker.read_text().strip()
        if (candidate / META_FILE).is_file():
            return candidate
    complete = list_checkpoints(root)
    return complete[-1] if complete else None


def checkpoint_dir(path: str | Path) -> Path:
    """``path`` itself, or the latest checkpoint of a checkpoints folder (one holding a ``latest`` file)."""
    path = Path(path)
    if (path / LATEST_FILE).is_file():
        return latest_checkpoint(path)
    return path


class Checkpointer:
    """Decides when to save, writes atomically, rotates rolling checkpoints, loads any layout."""

    def __init__(self, root: str | Path, settings: CheckpointSettings):
        self.root = Path(root)
        self.settings = settings

    # ---- when ---------------------------------------------------------------------------------

    def due(self, step: int, tokens_before: int, tokens_after: int) -> str | None:
        """The checkpoint kind due after a step: ``milestone``, ``rolling`` or None."""
        every = int(self.settings.milestone_every_tokens)
        if every and tokens_after // every > tokens_before // every:
            return "milestone"
        if self.settings.save_every_steps and step % self.settings.save_every_steps == 0:
            return "rolling"
        return None

    # ---- save ---------------------------------------------------------------------------------

    def save(self, kind: str, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write ``state`` (a sharded state dict) on every rank; publish it atomically."""
        name = milestone_name(meta["tokens_seen"]) if kind == "milestone" else rolling_name(meta["step"])
        if torch.distributed.get_rank() == 0:
            for stale in self.root.glob(".tmp_*"):  # left by a crash mid-save
                shutil.rmtree(stale, ignore_errors=True)
        # replace: the same step saved again (e.g. a stop signal right after a save)
        final = write_checkpoint(self.root / name, state, {**meta, "kind": kind}, replace=True)
        if torch.distributed.get_rank() == 0:
            _write_atomic(self.root / LATEST_FILE, name + "\n")
            _fsync_dir(self.root)  # the rename of `latest` survives a power loss
            self._rotate()
        torch.distributed.barrier()
        return final

    def _rotate(self) -> None:
        rolling = [p for p in list_checkpoints(self.root) if read_meta(p)["kind"] == "rolling"]
        latest = latest_checkpoint(self.root)
        for old in rolling[: max(0, len(rolling) - self.settings.keep_last)]:
            if old != latest:
                shutil.rmtree(old)

    # ---- load ---------------------------------------------------------------------------------

    def resume_dir(self) -> Path | None:
        """Where to resume from: this run's latest checkpoint (a requeued job continues its own
        progress), else ``load_from`` for a run that has none yet, else nothing."""
        if self.settings.load:
            if torch.distributed.get_rank() == 0:
                _finish_interrupted_replace(self.root)
            torch.distributed.barrier()
            own = latest_checkpoint(self.root)
            if own is not None:
                return own
        if self.settings.load_from:
            path = Path(self.settings.load_from)
            read_meta(path)  # a clear error if it is not a complete checkpoint
            return path
        return None

    @staticmethod
    def load(ckpt_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
        """Load ``state`` (a sharded state dict built for loading) from ``ckpt_dir``."""
        from megatron.core import dist_checkpointing

        return dist_checkpointing.load(state, str(ckpt_dir))


def write_checkpoint(
    ckpt_dir: str | Path, state: dict[str, Any] | Iterable[dict[str, Any]], meta: dict[str, Any], replace: bool = False
) -> Path:
    """Write one checkpoint directory on every rank, atomically: under ``.tmp_<name>`` beside it,
    ``dotsllm.json`` last, then renamed into place. An existing ``ckpt_dir`` is an error unless
    ``replace``; on an error nothing is left. Used by :meth:`Checkpointer.save` and for checkpoints
    outside a run (imports). ``state`` is a sharded state dict, or (world of one) groups of one, saved
    a group at a time by :func:`save_in_groups`.
    """
    from megatron.core import dist_checkpointing

    from dotsllm.training.streamed_save import save_in_groups

    final = Path(ckpt_dir)
    tmp = final.with_name(f".tmp_{final.name}")
    rank0 = torch.distributed.get_rank() == 0
    if rank0:
        if final.exists() and not replace:
            raise FileExistsError(f"{final} already exists")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    torch.distributed.barrier()
    try:
        if isinstance(state, dict):
            dist_checkpointing.save(state, str(tmp))
        else:
            save_in_groups(state, tmp)
    except BaseException:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    torch.distributed.barrier()
    if rank0:
        _write_atomic(tmp / META_FILE, json.dumps({**meta, "name": final.name}, indent=2))
        old = final.with_name(f"{OLD_PREFIX}{final.name}")
        if final.exists():  # moved aside, not deleted, until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    torch.distributed.barrier()
    return final


def _finish_interrupted_replace(root: Path) -> None:
    """After a crash while a checkpoint was being replaced by one of the same name: put the old one
    back if the new one never arrived, else drop it."""
    if not root.is_dir():
        return
    for old in root.glob(f"{OLD_PREFIX}*"):
        final = root / old.name.removeprefix(OLD_PREFIX)
        if (final / META_FILE).is_file():
            shutil.rmtree(old, ignore_errors=True)
        else:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(old, final)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
