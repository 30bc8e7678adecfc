"""``dotsllm report``: the main job's table from hand-written stage outputs, value by value."""

import json

import pytest

from dotsllm.cli import main


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def eval_result(task, score, predictions, step=None):
    correct = sum(c for _, c in predictions)
    return {
        "step": step,
        "tasks": {
            task: {
                "score": score, "samples": len(predictions), "correct": correct,
                "predictions": [{"prediction": p, "correct": c} for p, c in predictions],
            }
        }
    }  # fmt: skip


@pytest.fixture
def job(tmp_path):
    (tmp_path / "data").mkdir()
    totals = {"input_lines": 1245, "kept": 1195, "rejected": 41, "errors": 9, "tokens": 63264}
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"totals": totals}))
    write_jsonl(tmp_path / "pretrain" / "metrics.jsonl", [
        {"step": 4, "tokens_seen": 4096, "loss": 9.876},
        {"step": 64, "tokens_seen": 81920, "valid_loss": 3.5324},
        {"step": 72, "tokens_seen": 98304, "loss": 3.4106},
    ])  # fmt: skip
    write_jsonl(tmp_path / "sft" / "metrics.jsonl", [
        {"step": 20, "tokens_seen": 1, "loss": 2.0},
        {"step": 100, "tokens_seen": 2, "valid_loss": 1.1434},
        {"step": 300, "tokens_seen": 3, "valid_loss": 0.0031},
        {"step": 380, "tokens_seen": 4, "loss": 0.01},  # logged every 20 steps: the last step is the checkpoint's
    ])  # fmt: skip
    write_jsonl(tmp_path / "grpo" / "metrics.jsonl", [
        {"step": 0, "tokens_seen": 0, "heldout_accuracy": 0.31, "heldout_samples": 200},
        {"step": 1, "tokens_seen": 10, "loss": 0.1, "reward_mean": 0.25, "accuracy": 0.125},
        {"step": 2, "tokens_seen": 20, "loss": 0.1, "reward_mean": 0.5, "accuracy": 0.25},
        *({"step": s, "tokens_seen": 10 * s, "loss": 0.1, "reward_mean": s / 10, "accuracy": s / 20}
          for s in range(3, 9)),
        {"step": 8, "tokens_seen": 80, "heldout_accuracy": 0.455, "heldout_samples": 200},
    ])  # fmt: skip
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "model-00001-of-00002.safetensors").write_bytes(b"x" * 2**20)
    (tmp_path / "hf" / "model-00002-of-00002.safetensors").write_bytes(b"x" * 2**19)
    evals = tmp_path / "evals"
    evals.mkdir()
    (evals / "before.json").write_text(json.dumps(eval_result("copy", "exact", [("1", False), ("2", False)])))
    (evals / "after.json").write_text(json.dumps(eval_result("copy", "exact", [("7", True), ("2", True)], step=393)))
    math = [("1 + 1 = 2. \\boxed{2}", True), ("3", False), ("\\boxed{9}", True)]
    (evals / "ckpt.json").write_text(json.dumps(eval_result("math", "math", math)))
    (evals / "hf.json").write_text(json.dumps(eval_result("math", "math", [*math[:2], ("\\boxed{8}", False)])))
    (tmp_path / "stages.tsv").write_text("data pipeline\t11\npretraining\t95\nSFT\t200\nGRPO\t301\nexport to HF\t9\n")
    return tmp_path


def report_args(job):
    return [
        "report", "--times", str(job / "stages.tsv"), "--data", str(job / "data"), "--pretrain", str(job / "pretrain"),
        "--sft", str(job / "sft"), "--sft-eval", str(job / "evals/before.json"), str(job / "evals/after.json"),
        "--grpo", str(job / "grpo"), "--hf", str(job / "hf"),
        "--export-eval", str(job / "evals/ckpt.json"), str(job / "evals/hf.json"), "--output", str(job / "rows.json"),
    ]  # fmt: skip


def test_report_rows_say_what_each_stage_achieved(job, capsys):
    assert main(report_args(job)) == 0
    rows = json.loads((job / "rows.json").read_text())
    assert rows == [
        {"stage": "data pipeline", "seconds": 11.0,
         "achieved": "1,245 input lines → 1,195 kept, 41 rejected, 9 malformed; 63,264 tokens"},
        {"stage": "pretraining", "seconds": 95.0,
         "achieved": "72 steps, 98,304 tokens; train loss 9.88 → 3.41, valid loss 3.53 (step 64)"},
        {"stage": "SFT", "seconds": 200.0,
         "achieved": "held-out exact match: copy 0/2 → 2/2; 393 steps, valid loss 1.143 → 0.003 (steps 100 → 300)"},
        {"stage": "GRPO", "seconds": 301.0,
         "achieved": "held-out greedy accuracy 0.310 → 0.455 (200 prompts, steps 0 → 8); reward mean 0.375 (steps 1–2) "
                     "→ 0.750 (steps 7–8), sampled accuracy 0.188 (steps 1–2) → 0.375 (steps 7–8); "
                     f"reward curve {job / 'grpo'}/plots/grpo.png"},
        {"stage": "export to HF", "seconds": 9.0,
         "achieved": f"{job / 'hf'}: 2 safetensors file(s), 1.5 MiB, tokenizer with the chat template"},
        {"stage": "evaluation", "seconds": None,
         "achieved": "math math accuracy: transformers on the HF folder 1/3, dotsllm on the checkpoint 2/3; "
                     "2/3 predictions identical"},
        {"stage": "total", "achieved": "", "seconds": 616.0},
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert "10:16" in out and "5:01" in out  # total and GRPO wall time, m:ss


def test_report_names_the_bad_line_of_the_times_file(job):
    (job / "stages.tsv").write_text("data pipeline\t11\npretraining 95\n")
    with pytest.raises(SystemExit, match=r"stages.tsv:2: expected stage<TAB>seconds"):
        main(report_args(job))


def test_report_needs_every_input_named(job):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--output", str(job / "rows.json")])  # no demo paths to fall back on
    assert exit_info.value.code == 2


def test_report_rows_are_a_library_function_and_name_a_bad_eval_json(job):
    from dotsllm.evaluation.report import JobOutputs, ReportError, report_rows

    evals = job / "evals"
    outputs = JobOutputs(
        times=job / "stages.tsv", data=job / "data", pretrain=job / "pretrain", sft=job / "sft",
        sft_eval=(evals / "before.json", evals / "after.json"), grpo=job / "grpo", hf=job / "hf",
        export_eval=(str(evals / "ckpt.json"), str(evals / "hf.json")),
    )  # fmt: skip
    assert main(report_args(job)) == 0
    assert report_rows(outputs) == json.loads((job / "rows.json").read_text())
    (evals / "hf.json").write_text('{"tasks": ')
    with pytest.raises(ReportError, match=r"hf.json: not JSON"):
        report_rows(outputs)
    with pytest.raises(SystemExit, match=r"dotsllm report: .*hf.json: not JSON"):
        main(report_args(job))
    (job / "hf" / "model-00001-of-00002.safetensors").unlink()
    (job / "hf" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SystemExit, match=r"dotsllm report: .*hf holds no safetensors"):
        main(report_args(job))
