"""The `dotsllm` program: bad input ends in one stderr line `dotsllm COMMAND: ...` and status 2, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def dotsllm(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DOTSLLM_DEBUG", "MASTER_ADDR", "RANK", "WORLD_SIZE")}
    if debug:
        env["DOTSLLM_DEBUG"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "dotsllm.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


BAD_INPUT = {
    "uneven-pp": (
        ["plan", "--model", "dots1-142b", "--pp", "8"],
        "dotsllm plan: 62 layers do not split evenly over --pp 8: give the first/last stages fewer layers, "
        "e.g. --first-stage-layers 7 --last-stage-layers 7 (7 + 6×8 + 7 = 62)",
    ),
    "bad-layout": (["plan", "--model", "dots1-tiny", "--tp", "3", "--gpus", "8"], "dotsllm plan: world size 8 "),
    "config-key": (["pretrain", "configs/pretrain/dots1-tiny.yaml", "training.seq_lenght=5"], "dotsllm pretrain: "),
    "eval-path": (["eval", "/nonexistent", "--tasks", "perplexity"], "dotsllm eval: "),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_ends_in_one_line_and_status_2(case):
    args, start = BAD_INPUT[case]
    result = dotsllm(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.endswith("\n") and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(start), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    if case == "config-key":
        assert "seq_lenght" in result.stderr
    if case == "eval-path":
        assert "/nonexistent" in result.stderr


def test_an_error_after_the_world_started_ends_it_quietly(tmp_path):
    """import-hf starts a world of one before it reads the folder: the group is torn down, nothing else printed."""
    (tmp_path / "hf").mkdir()
    result = dotsllm("import-hf", str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    assert result.returncode == 2
    assert result.stderr.startswith("dotsllm import-hf: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert "config.json" in result.stderr and "[rank0]" not in result.stderr


def test_dotsllm_debug_shows_the_traceback():
    result = dotsllm("plan", "--model", "dots1-142b", "--pp", "8", debug=True)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "PipelineSplitError: 62 layers do not split evenly over --pp 8" in result.stderr


def test_help_names_the_debug_switch():
    result = dotsllm("--help")
    assert result.returncode == 0
    assert "DOTSLLM_DEBUG=1" in result.stdout and "exit status 2" in result.stdout
