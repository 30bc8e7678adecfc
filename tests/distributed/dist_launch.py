"""Launch ``worker.py`` under ``python -m torch.distributed.run`` from a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(nproc: int, command: str, *args: object, timeout_s: float = 120, worker: Path = WORKER) -> str:
    """Run ``worker command *args`` (default ``worker.py``) on ``nproc`` local processes (gloo); returns their output.

    Fails the calling test with the workers' output when they exit non-zero or outlive ``timeout_s``
    (the whole process group is killed then).
    """
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={nproc}", "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(worker), command, *map(str, args),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)),
    }
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[3:])} timed out after {timeout_s}s:\n{output}")
    if proc.returncode:
        pytest.fail(f"{' '.join(cmd[3:])} exited with {proc.returncode}:\n{output}")
    return output
