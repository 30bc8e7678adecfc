"""Two processes (gloo) save one checkpoint: each fsyncs the data files it wrote (on a shared filesystem
an fsync flushes only the writes of the client that calls it), rank 0 also the coordinator's files
and the folders (dotsllm/training/checkpoint.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from dist_launch import run_workers

from dotsllm.training.checkpoint import read_meta

WORKER = Path(__file__).with_name("checkpoint_worker.py")


def test_each_rank_fsyncs_the_files_it_wrote(tmp_path):
    root = tmp_path.resolve() / "checkpoints"
    run_workers(2, "save", root, tmp_path, worker=WORKER, timeout_s=300)
    final, tmp = root / "step_00000001", root / ".tmp_step_00000001"
    files = set(read_meta(final)["files"])
    synced = {}  # by rank: the paths it fsynced under the folder the checkpoint was written in
    for rank in (0, 1):
        paths = json.loads((tmp_path / f"rank{rank}.json").read_text())
        synced[rank] = {str(Path(p).relative_to(tmp)) for p in paths if Path(p).is_relative_to(tmp)}
    data = {rank: {f for f in files if re.fullmatch(rf"__{rank}_\d+\.distcp", f)} for rank in (0, 1)}
    assert data[0] and data[1] and files == data[0] | data[1] | {"common.pt", "metadata.json", ".metadata"}
    # each its own data files, no other's; rank 0 the coordinator's files, dotsllm.json and the folder
    assert data[1] <= synced[1] and not synced[1] & (files - data[1])
    assert data[0] | {"common.pt", "metadata.json", ".metadata", "dotsllm.json", "."} <= synced[0]
    assert not synced[0] & data[1]
