"""Checkpoints with megatron-core ``dist_checkpointing``: rolling ones, permanent milestones, durable.

Layout under ``<run_dir>/checkpoints``::

    step_00001000/                   rolling: the newest ``keep_last`` are kept
    milestone_tokens_001000000000000/  permanent: one per ``milestone_every_tokens``, never rotated
    latest                           name of the newest checkpoint (moved once that one is durable)
    .tmp_<name>/                     a checkpoint being written; ignored, removed by the next save
    .old_<name>/                     one being replaced by a new <name>; restored if that never arrived

A checkpoint survives a crash or a power loss whole or not at all (:func:`write_checkpoint`): it is
written under ``.tmp_<name>``, each rank fsyncs the files it wrote, ``dotsllm.json`` (the metadata and
every file's size) comes last, the folder is fsynced, renamed into place and its parent fsynced; only
then does ``latest`` move, and only then are older checkpoints deleted. A checkpoint whose files do
not match its record (:func:`checkpoint_problems`) is skipped with a warning: :func:`latest_checkpoint`
gives the newest complete one. Because ``dist_checkpointing`` stores global tensors, a checkpoint
loads into any TP/PP/EP/DP.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

META_FILE = "dotsllm.json"
LATEST_FILE = "latest"
OLD_PREFIX = ".old_"  # a checkpoint being replaced by a new one of the same name
MEGATRON_FILES = ("metadata.json", "common.pt")  # what a checkpoint saved before the record of files needs
# torch_dist (DCP) data files are named after the rank that wrote them: ``__<rank>_<n>.distcp``, n one
# per writer bucket (megatron-core 0.16.1), with a prefix in streamed saves; the coordinator (rank 0)
# writes ``common.pt``, ``metadata.json`` and ``.metadata``.
DATA_FILE = re.compile(r".*__(\d+)_\d+\.distcp")
# The distributed optimizer's reshardable format (the default one cannot be saved on CPU and
# does not reshard); the non-distributed optimizer ignores these keys.
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}


class IncompleteCheckpointWarning(UserWarning):
    """An incomplete checkpoint was skipped."""


class IncompleteCheckpointError(ValueError):
    """A checkpoint named explicitly is incomplete."""


@dataclass
class CheckpointSettings:
    save_every_steps: int = 1000  # rolling checkpoints; 0 disables them
    keep_last: int = 2  # rolling checkpoints kept
    milestone_every_tokens: float = 0  # permanent checkpoints (1e12 for dots1-142b); 0 disables
    load: bool = True  # resume from the run's latest checkpoint (everything) when there is one
    # a fresh run (no checkpoint of its own yet) starts from this one: a checkpoint, a checkpoints
    # folder or a run directory (their latest complete one)
    load_from: str | None = None
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


# ---- which checkpoints are complete -------------------------------------------------------------


def checkpoint_problems(ckpt_dir: str | Path) -> list[str]:
    """What keeps ``ckpt_dir`` from being a complete checkpoint; empty when it is one.

    ``dotsllm.json`` lists every file with its size: each must be there with that size. Megatron's
    ``metadata.json`` and ``common.pt`` must be there, not empty, also in a checkpoint written before
    that record.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return ["no such directory"]
    try:
        meta = read_meta(ckpt_dir)
    except FileNotFoundError:
        return [f"no {META_FILE}"]
    except ValueError as error:
        return [f"{META_FILE} unreadable ({error})"]
    expected = {**dict.fromkeys(MEGATRON_FILES), **meta.get("files", {})}  # None: any size but 0
    problems = []
    for name, size in expected.items():
        try:
            found = (ckpt_dir / name).stat().st_size
        except FileNotFoundError:
            problems.append(f"{name} missing")
            continue
        if size is None and found == 0:
            problems.append(f"{name} is empty")
        elif size is not None and found != size:
            problems.append(f"{name} is {found} bytes, {size} when saved")
    return problems


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (by step)."""
    complete = [p for p in _checkpoint_dirs(root) if not checkpoint_problems(p)]
    return sorted(complete, key=lambda p: (read_meta(p)["step"], p.name))


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, None if there is none: the one ``latest`` names
    when it is complete, else the one of the highest step. Each incomplete one is then skipped with an
    :class:`IncompleteCheckpointWarning` (on rank 0) naming it and what is wrong."""
    root = Path(root)
    tracker = root / LATEST_FILE
    named = root / tracker.read_text().strip() if tracker.is_file() else None
    if named is not None and not checkpoint_problems(named):
        return named
    complete = list_checkpoints(root)
    found = complete[-1] if complete else None
    instead = f"the latest complete one is {found.name}" if found else f"no complete checkpoint under {root}"
    for path in dict.fromkeys([named, *_checkpoint_dirs(root)]):
        if path is not None and (problems := checkpoint_problems(path)):
            if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
                message = f"skipping incomplete checkpoint {path}: {'; '.join(problems)}; {instead}"
                warnings.warn(message, IncompleteCheckpointWarning, stacklevel=2)
    return found


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint ``path`` names: a checkpoint directory (holding ``dotsllm.json``) itself; a
    checkpoints folder (holding ``latest`` or checkpoints) or a run directory (holding ``checkpoints/``):
    its latest complete checkpoint.

    Raises :class:`IncompleteCheckpointError` for an incomplete checkpoint directory, and
    ``FileNotFoundError`` for anything else, or a folder with no complete checkpoint.
    """
    path = Path(path)
    if (path / META_FILE).is_file():
        if problems := checkpoint_problems(path):
            raise IncompleteCheckpointError(f"{path}: incomplete checkpoint: {'; '.join(problems)}")
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    holds = (root / LATEST_FILE).is_file() or any((p / META_FILE).is_file() for p in _checkpoint_dirs(root))
    if root != path or holds:
        if (found := latest_checkpoint(root)) is not None:
            return found
        incomplete = [f"{p.name} ({'; '.join(why)})" for p in _checkpoint_dirs(root) if (why := checkpoint_problems(p))]
        detail = f"; incomplete: {', '.join(incomplete)}" if incomplete else ""
        raise FileNotFoundError(f"{root}: no complete checkpoint{detail}")
    raise FileNotFoundError(
        f"{path}: {'not a checkpoint' if path.exists() else 'no such file or directory'}; expected a dotsllm "
        f"checkpoint (a folder holding {META_FILE}), a checkpoints folder or a run directory holding checkpoints/"
    )


def checkpoint_argument(text: str) -> Path:
    """:func:`resolve_checkpoint` as an argparse ``type``: its errors as argparse's ``error:`` line."""
    try:
        return resolve_checkpoint(text)
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def checkpoint_or_hf_argument(text: str) -> Path:
    """:func:`checkpoint_argument`, or an exported HF folder (``config.json``, no ``dotsllm.json``) itself."""
    path = Path(text)
    if (path / "config.json").is_file() and not (path / META_FILE).is_file():
        return path
    return checkpoint_argument(text)


def _checkpoint_dirs(root: Path) -> list[Path]:
    """The folders under ``root`` that may be checkpoints (not ``.tmp_``/``.old_`` ones)."""
    root = Path(root)
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def describe_checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """One row per complete checkpoint of a run directory (or its checkpoints/ folder), oldest first:
    name, step, tokens seen, kind, bytes, whether it is the latest, path."""
    root = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    latest = latest_checkpoint(root)
    rows = []
    for path in list_checkpoints(root):
        meta = read_meta(path)
        rows.append({
            "name": path.name,
            "step": meta["step"],
            "tokens_seen": meta["tokens_seen"],
            "kind": meta["kind"],
            "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
            "latest": path == latest,
            "path": str(path),
        })  # fmt: skip
    return rows


class Checkpointer:
    """Decides when to save, writes durably, rotates rolling checkpoints, loads any layout."""

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
        """Write ``state`` (a sharded state dict) on every rank; publish it as ``latest``; rotate."""
        name = milestone_name(meta["tokens_seen"]) if kind == "milestone" else rolling_name(meta["step"])
        if torch.distributed.get_rank() == 0:
            for stale in self.root.glob(".tmp_*"):  # left by a crash mid-save
                shutil.rmtree(stale, ignore_errors=True)
        # replace: the same step saved again (e.g. a stop signal right after a save)
        final = write_checkpoint(self.root / name, state, {**meta, "kind": kind}, replace=True, latest=True)
        if torch.distributed.get_rank() == 0:
            self._rotate()
        torch.distributed.barrier()
        return final

    def _rotate(self) -> None:
        """Delete the oldest complete rolling checkpoints beyond ``keep_last``, never the latest complete one."""
        rolling = [p for p in list_checkpoints(self.root) if read_meta(p)["kind"] == "rolling"]
        latest = latest_checkpoint(self.root)
        for old in rolling[: max(0, len(rolling) - self.settings.keep_last)]:
            if old != latest:
                shutil.rmtree(old)

    # ---- load ---------------------------------------------------------------------------------

    def resume_dir(self) -> Path | None:
        """Where to resume from: this run's latest complete checkpoint (a requeued job continues its
        own progress), else ``load_from`` (see :func:`resolve_checkpoint`) for a run that has none yet,
        else nothing. Rank 0 looks (checking every file of a checkpoint), every rank takes its answer."""
        found: list[Any] = [None]
        if torch.distributed.get_rank() == 0:
            try:
                found[0] = self._resume_dir()
            except (OSError, ValueError) as error:
                found[0] = error
        torch.distributed.broadcast_object_list(found, src=0)
        if isinstance(found[0], Exception):
            raise found[0]
        return found[0]

    def _resume_dir(self) -> Path | None:
        if self.settings.load:
            _finish_interrupted_replace(self.root)
            if (own := latest_checkpoint(self.root)) is not None:
                return own
        if self.settings.load_from:
            return resolve_checkpoint(self.settings.load_from)
        return None


def write_checkpoint(
    ckpt_dir: str | Path,
    state: dict[str, Any] | Iterable[dict[str, Any]],
    meta: dict[str, Any],
    replace: bool = False,
    latest: bool = False,
) -> Path:
    """Write one checkpoint directory on every rank, durably: under ``.tmp_<name>`` beside it, each
    rank fsyncs the files it wrote; then rank 0 writes ``dotsllm.json`` (``meta``, the name and each
    file's size), fsyncs it and the folder, renames it into place and fsyncs the parent; with
    ``latest``, points the parent's ``latest`` at it. Only then is a replaced ``ckpt_dir`` deleted.

    An existing ``ckpt_dir`` is an error unless ``replace``; on an error nothing is left. Used by
    :meth:`Checkpointer.save` and for checkpoints outside a run (imports). ``state`` is a sharded state
    dict, or (world of one) groups of one, saved a group at a time by :func:`save_in_groups`.
    """
    from megatron.core import dist_checkpointing

    from dotsllm.training.streamed_save import save_in_groups

    final = Path(ckpt_dir)
    tmp = final.with_name(f".tmp_{final.name}")
    old = final.with_name(f"{OLD_PREFIX}{final.name}")
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
        _fsync_own_files(tmp)
    except BaseException:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    torch.distributed.barrier()
    if rank0:
        files = {path.relative_to(tmp).as_posix(): path.stat().st_size for path in _files(tmp)}
        _write_synced(tmp / META_FILE, json.dumps({**meta, "name": final.name, "files": files}, indent=2))
        for folder in [*(path for path in tmp.rglob("*") if path.is_dir()), tmp]:
            _fsync(folder)
        if final.exists():  # moved aside, not deleted, until the new one is durable (and `latest`)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(final.parent)
        if latest:
            _write_atomic(final.parent / LATEST_FILE, final.name + "\n")
            _fsync(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    torch.distributed.barrier()
    return final


def _finish_interrupted_replace(root: Path) -> None:
    """After a crash while a checkpoint was being replaced by one of the same name: put the old one
    back if the new one never arrived whole, else drop it."""
    if not root.is_dir():
        return
    for old in root.glob(f"{OLD_PREFIX}*"):
        final = root / old.name.removeprefix(OLD_PREFIX)
        if checkpoint_problems(final):
            shutil.rmtree(final, ignore_errors=True)
            os.replace(old, final)
            _fsync(root)
        else:
            shutil.rmtree(old, ignore_errors=True)


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _fsync_own_files(ckpt_dir: Path) -> None:
    """fsync the files of a fresh save that this rank wrote (on a shared filesystem, an fsync flushes
    only this client's writes): its data files ``__<rank>_<n>.distcp``; rank 0 every other one too."""
    rank = torch.distributed.get_rank()
    for path in _files(ckpt_dir):
        match = DATA_FILE.fullmatch(path.name)
        if (int(match[1]) if match else 0) == rank:
            _fsync(path)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    """``path`` replaced by ``text`` at once (fsync its folder to make that durable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_synced(tmp, text)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    """fsync a file, or a folder (which makes the names created, renamed or deleted in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
