"""Start ``dotsllm pretrain`` (or other ``dotsllm``) runs from tests (one process, or ``torchrun`` for several)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distributed.dist_launch import REPO, free_port

TINY_CONFIG = REPO / "configs" / "pretrain" / "dots1-tiny.yaml"


def dotsllm_command(nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        launcher = [sys.executable, "-m", "dotsllm.cli"]
    else:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "dotsllm.cli",
        ]  # fmt: skip
    return [*launcher, *args]


def start(nproc: int, overrides: list[str], log: Path, command: tuple[str, ...] = ("pretrain", str(TINY_CONFIG)),
          env: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
    """``dotsllm *command *overrides`` (pretraining on the tiny config by default), its output in ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.Popen(
        dotsllm_command(nproc, [*command, *overrides]), cwd=REPO, env=env, stdout=open(log, "w"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, log: Path, timeout_s: float = 240, expect_rc: int | None = 0) -> int:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"run timed out after {timeout_s}s:\n{log.read_text()[-5000:]}")
    if expect_rc is not None and proc.returncode != expect_rc:
        pytest.fail(f"run exited {proc.returncode}, expected {expect_rc}:\n{log.read_text()[-5000:]}")
    return proc.returncode


def run(nproc: int, overrides: list[str], log: Path, timeout_s: float = 240, **options) -> None:
    finish(start(nproc, overrides, log, **options), log, timeout_s)


def wait_for(predicate, proc: subprocess.Popen, log: Path, timeout_s: float = 240, poll_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before the awaited moment:\n{log.read_text()[-5000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"awaited moment never came:\n{log.read_text()[-5000:]}")
        time.sleep(poll_s)


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def train_records(run_dir: Path) -> dict[int, dict]:
    """The last record of each step (a resumed run logs the steps after its checkpoint again)."""
    return {r["step"]: r for r in metrics(run_dir) if "loss" in r}


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of the run's offline wandb file.

    wandb 0.31 ships no Python reader for ``run-*.wandb``; the file is a LevelDB-style log (32 KiB
    blocks of records with a 7-byte header: crc, length, type) of ``wandb_internal_pb2.Record``s
    after a 7-byte W&B header.
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    raw, pos, block = path.read_bytes(), 7, 32768
    records, pending = [], b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            records.append(pending)
    rows = []
    for data in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows
