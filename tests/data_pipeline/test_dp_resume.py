"""A run killed with SIGKILL in the middle of a stage, run again, gives the outputs of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import planted_config
from dp_planted import outputs

REPO = Path(__file__).resolve().parents[2]


def _files(out: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob(pattern))}


def test_killed_run_resumes_to_the_same_outputs(planted, planted_run):
    root, _ = planted
    out = root / "killed"
    command = [sys.executable, "-m", "data_pipeline.cli", "run", str(planted_config(root, out))]
    proc = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first_done = out / "logs" / "filter" / "completions" / "00000"
    deadline = time.monotonic() + 120
    while not first_done.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (out / "logs" / "filter" / "completions").iterdir())
    assert done[0] == "00000" and len(done) < 3, f"not killed mid-stage: {done}"
    assert not (out / "manifest.json").exists()

    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for pattern in ("docs/*.jsonl", "tokens/*", "errors/*.jsonl", "rejected/*/*.jsonl", "tokenizer.vocab"):
        assert _files(out, pattern) == _files(planted_run, pattern), pattern
    assert outputs(out)["manifest"]["totals"] == outputs(planted_run)["manifest"]["totals"]
