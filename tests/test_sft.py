"""``dotsllm sft`` end to end on dots1-tiny: a mixture with a weight and a source of malformed records
(each counted and listed, the run finishing), an exact resume after SIGKILL, and the chat paths on
its checkpoint (``dotsllm chat``, ``eval --chat``, ``export-hf`` with the chat template)."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distributed.dist_launch import REPO, free_port
from pretrain_runs import finish, train_records, wait_for

CONFIG = REPO / "configs" / "sft" / "dots1-tiny.yaml"
DEMO = REPO / "dotsllm" / "posttrain" / "sft" / "demo"
BAD = REPO / "tests" / "data" / "sft_bad.jsonl"
KILL_STEPS = random.Random(20261201)


def start(overrides, log, nproc=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
    ]  # fmt: skip
    return subprocess.Popen([*launcher, "-m", "dotsllm.cli", "sft", str(CONFIG), *overrides], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """100 demo conversations, and a SentencePiece tokenizer (with the chat tokens) trained on them."""
    from dotsllm.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("sft_inputs")
    lines = (DEMO / "train.jsonl").read_text().splitlines()[:100]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    texts = [m["content"] for line in lines for m in json.loads(line)["messages"]]
    tokenizer = train_sentencepiece(texts * 3 + ["You are a helpful assistant."] * 20, str(root / "sp"), 300, 1)
    return root / "train.jsonl", tokenizer


def overrides(inputs, run_dir, *extra):
    train, tokenizer = inputs
    return [
        f"run_dir={run_dir}", "model=dots1-tiny", f"data.sources=[{{path: {train}, weight: 1.5}}, {{path: {BAD}}}]", "data.valid=[]",
        f"data.tokenizer={tokenizer}", "data.overlong=drop", "data.epochs=1", "training.seq_length=128",
        "training.micro_batch_size=2", "training.global_batch_size=4", "training.eval_interval=0",
        "checkpoint.load_from=null", "checkpoint.save_every_steps=3", "logging.log_interval=1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sft_reference")
    finish(start(overrides(inputs, run_dir), run_dir / "run.log"), run_dir / "run.log")
    return run_dir


def test_malformed_records_are_counted_listed_and_the_run_finishes(reference):
    report = json.loads((reference / "sft_data.json").read_text())
    errors = [json.loads(line) for line in (reference / "sft_errors.jsonl").read_text().splitlines()]
    assert [(e["source"], e["line"], e["reason"].split(":")[0]) for e in errors] == [
        (str(BAD), 2, "bad_json"), (str(BAD), 3, "missing_role"), (str(BAD), 4, "empty_assistant"),
        (str(BAD), 5, "unknown_role"), (str(BAD), 6, "too_long"), (str(BAD), 8, "missing_role"),
    ]  # fmt: skip
    assert report["records"] == 109 and report["rejected"] == 6 and report["rejected_missing_role"] == 2
    assert report["samples"] == 150 + 3  # weight 1.5 on 100 conversations, and the bad file's 3 good ones
    log = (reference / "run.log").read_text()
    assert "6 rejected (bad_json 1, empty_assistant 1, missing_role 2, too_long 1, unknown_role 1" in " ".join(log.split())
    assert f"done: 1 epoch(s) done at step {report['steps']}" in log

    records = train_records(reference)
    assert sorted(records) == list(range(1, report["steps"] + 1))
    assert records[report["steps"]]["loss"] < records[1]["loss"]
    for r in records.values():
        assert r["real_tokens"] == pytest.approx(r["packing_efficiency"] * 4 * 128)
        assert r["padding_fraction"] == pytest.approx(1 - r["packing_efficiency"]) and r["tokens_per_s"] > 0
    real = sum(r["real_tokens"] for r in records.values())
    assert report["packing_efficiency"] == pytest.approx(real / (len(records) * 4 * 128))
    assert report["packing_efficiency"] > 0.8  # 153 short samples; the demo set's ~3,000: 0.96 (bench: 0.97)


def test_sigkill_then_resume_is_bit_identical(inputs, reference, tmp_path):
    kill_after = KILL_STEPS.randint(4, 8)
    log = tmp_path / "killed.log"
    proc = start(overrides(inputs, tmp_path), log)
    wait_for(lambda: max(train_records(tmp_path), default=0) >= kill_after, proc, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finish(start(overrides(inputs, tmp_path), tmp_path / "resumed.log"), tmp_path / "resumed.log")
    got, want = train_records(tmp_path), train_records(reference)
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step]["loss"] == want[step]["loss"], f"step {step}, killed after {kill_after}"
        assert got[step]["batch_checksum"] == want[step]["batch_checksum"], f"step {step}"


def test_expert_parallel_run_on_two_processes_reads_and_learns_the_same(inputs, reference, tmp_path):
    """Resumed with EP=2 (two data-parallel ranks, each its half of every global batch) from the
    one-process run's first kept checkpoint, everything loaded: the same rows per step (checksums over
    the DP group) and the same losses, to fp32 reduction order."""
    from dotsllm.training.checkpoint import list_checkpoints, read_meta

    saved = list_checkpoints(reference / "checkpoints")[0]
    resume = [f"checkpoint.load_from={saved}", "checkpoint.load_optimizer=true", "checkpoint.load_progress=true",
              "parallel.ep=2"]  # fmt: skip
    finish(start(overrides(inputs, tmp_path, *resume), tmp_path / "ep2.log", nproc=2), tmp_path / "ep2.log")
    got, want = train_records(tmp_path), train_records(reference)
    assert sorted(got) == [step for step in sorted(want) if step > read_meta(saved)["step"]] and len(got) >= 2
    for step in got:
        assert got[step]["batch_checksum"] == want[step]["batch_checksum"], f"step {step}"
        assert got[step]["real_tokens"] == want[step]["real_tokens"], f"step {step}"
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-4), f"step {step}"


def test_chat_eval_and_export_share_the_template(inputs, reference, tmp_path, megatron_world, capsys):
    from transformers import AutoTokenizer

    from dotsllm import cli
    from dotsllm.chat_template import ChatTemplate, Message
    from dotsllm.tokenizer import Tokenizer
    from dotsllm.training.checkpoint import latest_checkpoint

    _, tokenizer = inputs
    ckpt = latest_checkpoint(reference / "checkpoints")
    prompt = "first word: quiet harbour"
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"prompt": prompt, "answer": "quiet"}) + "\n")
    args = ["eval", str(ckpt), "--tasks", str(task), "--tokenizer", tokenizer, "--chat", "--max-new-tokens", "6"]
    assert cli.main([*args, "--output", str(tmp_path / "eval.json")]) == 0
    (prediction,) = json.loads((tmp_path / "eval.json").read_text())["tasks"]["task"]["predictions"]
    capsys.readouterr()
    assert cli.main(["chat", str(ckpt), "--tokenizer", tokenizer, "--prompt", prompt, "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == prediction["prediction"] + "\n"

    out = tmp_path / "hf"
    assert cli.main(["export-hf", str(ckpt), str(out), "--tokenizer", tokenizer]) == 0
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|userprompt|>" in config["chat_template"] and config["eos_token"] == "<|endofresponse|>"
    messages = [Message("user", prompt), Message("assistant", "quiet")]
    ids = AutoTokenizer.from_pretrained(str(out)).apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], tokenize=True, return_dict=True
    )["input_ids"]
    assert list(ids) == ChatTemplate(Tokenizer(tokenizer)).encode(messages).ids
