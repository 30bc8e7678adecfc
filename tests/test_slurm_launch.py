"""``launch/slurm/*.sbatch`` submitted unchanged to a real one-node SLURM (``local_slurm``, tests/conftest.py).

Pretraining: dots1-tiny as 2 srun tasks on CPU/gloo; USR1 makes it checkpoint, requeue itself and resume
to the very losses of an uninterrupted job. The data pipeline: its batch job submits the stages.
"""

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dotsllm.parallel.setup import launcher_ranks
from dotsllm.training.checkpoint import latest_checkpoint, list_checkpoints, read_meta
from pretrain_runs import metrics, train_records
from shards import write_shard

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "launch" / "slurm" / "pretrain.sbatch"
DATA_PIPELINE = REPO / "launch" / "slurm" / "data_pipeline.sbatch"
TINY_CONFIG = REPO / "configs" / "pretrain" / "dots1-tiny.yaml"
VOCAB, EOD = 8192, 0
STEPS, TOKENS = 12, 16384  # the batch ramp below: 8 steps of 1024 tokens, then 4 of 2048
# 2 tasks of 1 CPU on a node without GPUs; the script's other defaults (exclusive, all memory) stand.
TWO_CPU_TASKS = ["--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0"]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def test_launcher_ranks_come_from_torchrun_else_srun_else_a_world_of_one():
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}
    assert launcher_ranks({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", **srun}) == (3, 8, 3)
    assert launcher_ranks(srun) == (5, 16, 1)
    assert launcher_ranks({}) == (0, 1, 0)


def sbatch(cluster, script: Path, log_dir: Path, *args: str, options: list[str] = ()) -> int:
    """Submits ``script`` from the repository as a user would: venv active, logs to ``log_dir/%x-%j.out``."""
    env = {
        **cluster.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": sys.prefix,
        "OMP_NUM_THREADS": "1",
        "WANDB_SILENT": "true",
        "PYTHONWARNINGS": "ignore",
    }
    cmd = ["sbatch", "--parsable", f"--output={log_dir}/%x-%j.out", *options, str(script), *args]
    submitted = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    return int(submitted.stdout.strip().split(";")[0])


def job_info(cluster, job: int) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "-o", "show", "job", str(job)], env=cluster.env, capture_output=True, text=True)
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def wait_job(cluster, job: int, log: Path, until=None, timeout_s: float = 300) -> dict[str, str]:
    """Polls until ``until()`` holds (fails if the job ends first), or without it until the job ends.

    On a timeout the job is cancelled and the test fails with its log.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        info = job_info(cluster, job)
        if until is not None and until():
            return info
        if info.get("JobState") in ENDED:
            if until is None:
                return info
            pytest.fail(f"job {job} ended ({info['JobState']}) before the awaited moment:\n{tail(log)}")
        if time.monotonic() > deadline:
            subprocess.run(["scancel", str(job)], env=cluster.env)
            pytest.fail(f"job {job} still {info.get('JobState')} after {timeout_s} s:\n{tail(log)}")
        time.sleep(0.2)


def tail(log: Path) -> str:
    return log.read_text()[-5000:] if log.is_file() else f"(no {log})"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("slurm_shards")
    a = write_shard(root / "web", 300, VOCAB, EOD, seed=0)
    b = write_shard(root / "code", 100, VOCAB, EOD, seed=1)
    return [f"data.blend=[[0.7,{a}],[0.3,{b}]]", f"data.vocab_size={VOCAB}", f"data.eod_id={EOD}"]


def pretrain_args(shards: list[str], run_dir: Path) -> list[str]:
    return [
        str(TINY_CONFIG),
        f"run_dir={run_dir}",
        *shards,
        f"training.train_tokens={TOKENS}",
        "training.eval_interval=0",
        "batch_ramp.points=[{from_tokens: 0, global_batch_tokens: 1024},"
        " {from_tokens: 8192, global_batch_tokens: 2048}]",
        "checkpoint.save_every_steps=0",
        "checkpoint.milestone_every_tokens=0",
        "logging.log_interval=1",
        "logging.wandb_mode=disabled",
    ]


@pytest.fixture(scope="module")
def uninterrupted(local_slurm, shards, tmp_path_factory) -> tuple[Path, int, dict]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    job = sbatch(local_slurm, PRETRAIN, run_dir, *pretrain_args(shards, run_dir), options=TWO_CPU_TASKS)
    return run_dir, job, wait_job(local_slurm, job, run_dir / f"dotsllm-pretrain-{job}.out")


def test_pretrain_job_trains_two_ranks_to_the_token_budget(uninterrupted):
    run_dir, job, info = uninterrupted
    log = (run_dir / f"dotsllm-pretrain-{job}.out").read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), log[-5000:]
    assert f"job {job} (restart 0): 2 tasks on {info['NodeList']}" in log
    meta = read_meta(latest_checkpoint(run_dir / "checkpoints"))
    assert (meta["step"], meta["tokens_seen"], meta["world_size"]) == (STEPS, TOKENS, 2)
    records = train_records(run_dir)
    assert sorted(records) == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) and r["update_applied"] for r in records.values())
    assert records[STEPS]["tokens_seen"] == TOKENS


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_losses(local_slurm, shards, uninterrupted, tmp_path):
    reference_dir, _, _ = uninterrupted
    job = sbatch(local_slurm, PRETRAIN, tmp_path, *pretrain_args(shards, tmp_path), options=TWO_CPU_TASKS)
    log = tmp_path / f"dotsllm-pretrain-{job}.out"
    wait_job(local_slurm, job, log, until=lambda: max(train_records(tmp_path), default=0) >= 3)
    # What the time-limit warning (#SBATCH --signal=B:USR1@600) does, now.
    subprocess.run(["scancel", "--batch", "--signal=USR1", str(job)], env=local_slurm.env, check=True)
    info = wait_job(local_slurm, job, log)

    text = log.read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), text[-5000:]
    stopped_at = int(re.search(r"stop signal: saved at step (\d+)", text).group(1))
    assert 3 <= stopped_at < STEPS
    assert f"requeueing job {job}" in text and f"job {job} (restart 1)" in text
    assert re.search(rf"training dots1-tiny from step {stopped_at} on\s+{re.escape(str(tmp_path))}", text)
    assert [read_meta(c)["step"] for c in list_checkpoints(tmp_path / "checkpoints")] == [stopped_at, STEPS]
    # Each step trained once (resumed from the signal's checkpoint), with the uninterrupted job's losses.
    assert [r["step"] for r in metrics(tmp_path) if "loss" in r] == list(range(1, STEPS + 1))
    got, want = train_records(tmp_path), train_records(reference_dir)
    for step in range(1, STEPS + 1):
        assert got[step]["loss"] == want[step]["loss"], f"step {step}"  # bit-identical
        assert got[step]["batch_checksum"] == want[step]["batch_checksum"], f"step {step}"


def test_data_pipeline_job_runs_the_stages_as_slurm_jobs(local_slurm, tmp_path):
    docs = [{"id": f"doc{i}", "text": f"document {i}: " + "words " * (5 + i)} for i in range(20)]
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "out"
    off = {"enabled": False}
    config = {
        "input": {"paths": [str(tmp_path / "input")]},
        "output_dir": str(out),
        "tasks": 1,
        "progress": False,
        "steps": {
            **{step: off for step in ("url_filter", "extract", "language", "exact_dedup", "line_dedup", "minhash")},
            "quality": {rule: off for rule in ("gopher_quality", "gopher_repetition", "c4", "fineweb")},
            "tokenize": off,
        },
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    job = sbatch(local_slurm, DATA_PIPELINE, tmp_path, str(tmp_path / "config.yaml"))
    log = tmp_path / f"dotsllm-data-{job}.out"
    info = wait_job(local_slurm, job, log)

    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), tail(log)
    for stage in ("ingest", "filter", "final"):  # each ran as its own SLURM job
        assert (out / "logs" / stage / "completions" / "00000").is_file(), stage
        assert re.search(rf"Launching Slurm job dotsllm_data_{stage} .*\n.*id=\d+", log.read_text()), stage
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert (totals["input_lines"], totals["kept"], totals["errors"]) == (20, 20, 0)
    kept = [json.loads(line) for line in (out / "docs" / "00000.jsonl").read_text().splitlines()]
    assert sorted(d["id"] for d in kept) == sorted(d["id"] for d in docs)
