"""``dotsllm report``: the main job's table from hand-written stage outputs, value by value."""

import json
import math

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
    digits = [("1", False), ("2", True), ("3", False), ("4", False)]
    (evals / "before_grpo.json").write_text(json.dumps(eval_result("digits", "exact", digits)))
    (evals / "after_grpo.json").write_text(json.dumps(eval_result("digits", "exact", [(p, True) for p, _ in digits])))
    math = [("1 + 1 = 2. \\boxed{2}", True), ("3", False), ("\\boxed{9}", True)]
    (evals / "ckpt.json").write_text(json.dumps(eval_result("math", "math", math)))
    (evals / "hf.json").write_text(json.dumps(eval_result("math", "math", [*math[:2], ("\\boxed{8}", False)])))
    (tmp_path / "stages.tsv").write_text("data pipeline\t11\npretraining\t95\nSFT\t200\nGRPO\t301\nexport to HF\t9\n")
    return tmp_path


def report_args(job):
    return [
        "report", "--times", str(job / "stages.tsv"), "--data", str(job / "data"), "--pretrain", str(job / "pretrain"),
        "--sft", str(job / "sft"), "--sft-eval", str(job / "evals/before.json"), str(job / "evals/after.json"),
        "--grpo", str(job / "grpo"), "--grpo-eval", str(job / "evals/before_grpo.json"), str(job / "evals/after_grpo.json"),
        "--hf", str(job / "hf"),
        "--export-eval", str(job / "evals/ckpt.json"), str(job / "evals/hf.json"), "--output", str(job / "rows.json"),
    ]  # fmt: skip


def test_report_rows_say_what_each_stage_achieved(job, capsys):
    assert main(report_args(job)) == 0
    rows = json.loads((job / "rows.json").read_text())
    assert [{k: v for k, v in row.items() if k != "numbers"} for row in rows] == [
        {"stage": "data pipeline", "seconds": 11.0,
         "achieved": "1,245 input lines → 1,195 kept, 41 rejected, 9 malformed; 63,264 tokens"},
        {"stage": "pretraining", "seconds": 95.0,
         "achieved": "72 steps, 98,304 tokens; train loss 9.88 → 3.41, valid loss 3.53 (step 64)"},
        {"stage": "SFT", "seconds": 200.0,
         "achieved": "held-out exact match: copy 0/2 → 2/2; 393 steps, valid loss 1.143 → 0.003 (steps 100 → 300)"},
        {"stage": "GRPO", "seconds": 301.0,
         "achieved": "held-out exact match: digits 1/4 → 4/4; during training: held-out greedy accuracy 0.310 → "
                     "0.455 (200 prompts, steps 0 → 8), reward mean 0.375 (steps 1–2) → 0.750 (steps 7–8), sampled "
                     f"accuracy 0.188 (steps 1–2) → 0.375 (steps 7–8); reward curve {job / 'grpo'}/plots/grpo.png"},
        {"stage": "export to HF", "seconds": 9.0,
         "achieved": f"{job / 'hf'}: 2 safetensors file(s), 1.5 MiB, tokenizer with the chat template"},
        {"stage": "evaluation", "seconds": None,
         "achieved": "math math accuracy: transformers on the HF folder 1/3, dotsllm on the checkpoint 2/3; "
                     "2/3 predictions identical"},
        {"stage": "total", "achieved": "", "seconds": 616.0},
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert "10:16" in out and "5:01" in out  # total and GRPO wall time, m:ss

    numbers = {row["stage"]: row["numbers"] for row in rows}
    assert numbers["data pipeline"] == {
        "input_lines": 1245, "kept": 1195, "rejected": 41, "malformed": 9, "tokens": 63264
    }  # fmt: skip
    assert numbers["pretraining"] == {
        "steps": 72, "tokens_seen": 98304, "train_loss_first": 9.876, "train_loss_last": 3.4106,
        "valid_loss": 3.5324, "valid_loss_step": 64,
    }  # fmt: skip
    copy = {"score": "exact", "prompts": 2, "accuracy_se": 0.0}
    assert numbers["SFT"] == {
        "steps": 393, "valid_loss_first": 1.1434, "valid_loss_last": 0.0031, "valid_loss_first_step": 100,
        "valid_loss_last_step": 300,
        "tasks": {"copy": {"before": {**copy, "correct": 0, "accuracy": 0.0},
                           "after": {**copy, "correct": 2, "accuracy": 1.0}}},
    }  # fmt: skip
    # held-out accuracy SE sqrt(p(1 - p) / 200): p = 0.31 and 0.455
    assert numbers["GRPO"] == {
        "heldout_prompts": 200, "heldout_accuracy_first": 0.31, "heldout_accuracy_last": 0.455,
        "heldout_accuracy_first_se": pytest.approx(math.sqrt(0.31 * 0.69 / 200)),
        "heldout_accuracy_last_se": pytest.approx(math.sqrt(0.455 * 0.545 / 200)),
        "heldout_first_step": 0, "heldout_last_step": 8,
        "reward_mean_first_quarter": 0.375, "reward_mean_last_quarter": 0.75,
        "sampled_accuracy_first_quarter": 0.1875, "sampled_accuracy_last_quarter": 0.375,
        "tasks": {"digits": {"before": {"score": "exact", "prompts": 4, "correct": 1, "accuracy": 0.25,
                                        "accuracy_se": pytest.approx(math.sqrt(0.25 * 0.75 / 4))},
                             "after": {"score": "exact", "prompts": 4, "correct": 4, "accuracy": 1.0,
                                       "accuracy_se": 0.0}}},
    }  # fmt: skip
    assert numbers["export to HF"] == {"safetensors_files": 2, "mib": 1.5}
    # 1 of 3 and 2 of 3 right: SE sqrt((1/3)(2/3) / 3) = sqrt(2/27) for both
    math_task = {"score": "math", "prompts": 3, "accuracy_se": pytest.approx(math.sqrt(2 / 27))}
    assert numbers["evaluation"] == {"tasks": {"math": {
        "hf": {**math_task, "correct": 1, "accuracy": 1 / 3},
        "checkpoint": {**math_task, "correct": 2, "accuracy": 2 / 3}, "identical_predictions": 2,
    }}}  # fmt: skip
    assert numbers["total"] == {}


def sampled_result(task, score, counts, n, predictions, step=None, pass_k=None):
    """An eval result of ``dotsllm eval --samples n``: greedy ``predictions`` (text, correct), and each
    prompt's count of correct samples (its samples: "right" c times, then "wrong")."""
    from dotsllm.evaluation.generation import SampledEval, sampled_summary
    from dotsllm.evaluation.stats import proportion_se

    result = eval_result(task, score, predictions, step)
    body = result["tasks"][task]
    body["accuracy"] = body["correct"] / body["samples"]
    body["accuracy_se"] = proportion_se(body["correct"], body["samples"])
    for prediction, c in zip(body["predictions"], counts):
        prediction["sampled_correct"] = c
        prediction["sampled_predictions"] = ["right"] * c + ["wrong"] * (n - c)
    body["sampled"] = sampled_summary(counts, SampledEval(n, temperature=0.7, pass_k=pass_k or (1, n)))
    return result


def test_report_shows_standard_errors_and_pass_at_k_of_sampled_evals(job):
    """Eval JSONs of ``dotsllm eval --samples 4``: value ± SE in the sentences, the numbers as fields."""
    evals = job / "evals"
    before = sampled_result("copy", "exact", [0, 1, 0, 0], 4, [("1", False), ("2", False), ("3", False), ("4", False)])
    after = sampled_result("copy", "exact", [4, 2, 3, 0], 4, [("1", True), ("2", True), ("3", True), ("x", False)], 393)
    (evals / "before.json").write_text(json.dumps(before))
    (evals / "after.json").write_text(json.dumps(after))
    ckpt = sampled_result("math", "math", [1, 0], 2, [("\\boxed{2}", True), ("3", False)], pass_k=(2,))
    hf = sampled_result("math", "math", [1, 1], 2, [("\\boxed{2}", True), ("4", False)], pass_k=(2,))
    hf["tasks"]["math"]["predictions"][1]["sampled_predictions"] = ["right", "other"]
    (evals / "ckpt.json").write_text(json.dumps(ckpt))
    (evals / "hf.json").write_text(json.dumps(hf))
    assert main(report_args(job)) == 0
    rows = {row["stage"]: row for row in json.loads((job / "rows.json").read_text())}

    # before: greedy 0/4, sampled shares 0, 1/4, 0, 0 → 1/16, SE sqrt(((1/16)²·3 + (3/16)²) / 4 / 4) =
    # sqrt(12/256 / 16) = sqrt(3) / 32 ≈ 0.054; pass@4 (any right) 1/4, SE sqrt(1/4 · 3/4 / 4) ≈ 0.217.
    # after: greedy 3/4 (SE sqrt(3/64) ≈ 0.217); shares 1, 1/2, 3/4, 0 → 9/16, SE sqrt(35) / 32 ≈ 0.185
    # (deviations 7, -1, 3, -9 sixteenths: (49 + 1 + 9 + 81) / 256 / 4 / 4); pass@4 3/4, SE ≈ 0.217
    assert rows["SFT"]["achieved"] == (
        "held-out exact match: copy 0/4 (0.000 ± 0.000) → 3/4 (0.750 ± 0.217), "
        "sampled accuracy 0.062 ± 0.054 → 0.562 ± 0.185, pass@1 0.062 ± 0.054 → 0.562 ± 0.185, "
        "pass@4 0.250 ± 0.217 → 0.750 ± 0.217 (4 samples/prompt, T=0.7); 393 steps, "
        "valid loss 1.143 → 0.003 (steps 100 → 300)"
    )
    sft = rows["SFT"]["numbers"]["tasks"]["copy"]
    assert sft["after"]["accuracy"] == 0.75 and sft["after"]["accuracy_se"] == pytest.approx(math.sqrt(3 / 64))
    assert sft["after"]["sampled"]["accuracy"] == 9 / 16
    assert sft["after"]["sampled"]["accuracy_se"] == pytest.approx(math.sqrt(35) / 32)
    assert sft["after"]["sampled"]["pass_at_k"]["4"] == {"value": 0.75, "se": pytest.approx(math.sqrt(3 / 64))}
    assert sft["before"]["sampled"]["pass_at_k"]["1"] == {"value": 1 / 16, "se": pytest.approx(math.sqrt(3) / 32)}
    assert sft["before"]["sampled"]["samples"] == 4 and sft["before"]["sampled"]["temperature"] == 0.7

    # checkpoint: shares 1/2, 0 → 1/4, SE sqrt((1/16 + 1/16) / 2 / 2) = sqrt(2) / 8 ≈ 0.177; pass@2 1, 0
    # → 1/2, SE sqrt(1/4 / 2) ≈ 0.354. HF: shares 1/2, 1/2 → 1/2, SE 0; pass@2 1, SE 0. Samples: prompt 1's
    # right/wrong alike, prompt 2's wrong/wrong against right/other: 2 of 4 identical.
    assert rows["evaluation"]["achieved"] == (
        "math math accuracy: transformers on the HF folder 1/2 (0.500 ± 0.354), dotsllm on the checkpoint "
        "1/2 (0.500 ± 0.354); 1/2 predictions identical; sampled: HF folder accuracy 0.500 ± 0.000, "
        "pass@2 1.000 ± 0.000 (2 samples/prompt, T=0.7), checkpoint accuracy 0.250 ± 0.177, "
        "pass@2 0.500 ± 0.354 (2 samples/prompt, T=0.7); 2/4 samples identical"
    )
    evaluation = rows["evaluation"]["numbers"]["tasks"]["math"]
    assert evaluation["identical_predictions"] == 1 and evaluation["identical_sampled_predictions"] == 2
    pass_at_2 = evaluation["checkpoint"]["sampled"]["pass_at_k"]
    assert pass_at_2 == {"2": {"value": 0.5, "se": pytest.approx(math.sqrt(1 / 8))}}
    assert evaluation["checkpoint"]["sampled"]["accuracy_se"] == pytest.approx(math.sqrt(2) / 8)
    assert evaluation["hf"]["sampled"]["accuracy"] == 0.5 and evaluation["hf"]["sampled"]["accuracy_se"] == 0.0


def test_report_names_the_bad_line_of_the_times_file(job):
    (job / "stages.tsv").write_text("data pipeline\t11\npretraining 95\n")
    with pytest.raises(SystemExit, match=r"stages.tsv:2: expected stage<TAB>seconds"):
        main(report_args(job))


def test_report_needs_every_input_named(job):
    with pytest.raises(SystemExit, match=r"missing --times, --data, .*--grpo-eval, --hf, --export-eval"):
        main(["report", "--output", str(job / "rows.json")])  # no demo paths to fall back on


def test_reports_of_several_runs_combine_into_mean_spread_and_gains(job, tmp_path):
    paths = []
    for name, before, after in (("a", 1, 4), ("b", 2, 3)):
        digits = [(str(i), i < before) for i in range(4)]
        (job / "evals/before_grpo.json").write_text(json.dumps(eval_result("heldout", "exact", digits)))
        done = [(str(i), i < after) for i in range(4)]
        (job / "evals/after_grpo.json").write_text(json.dumps(eval_result("heldout", "exact", done)))
        args = report_args(job)
        args[args.index("--output") + 1] = str(tmp_path / f"{name}.json")
        assert main(args) == 0
        paths.append(str(tmp_path / f"{name}.json"))
    assert main(["report", "--combine", *paths, "--output", str(tmp_path / "combined.json")]) == 0
    combined = json.loads((tmp_path / "combined.json").read_text())
    after = combined["numbers"]["GRPO: held-out greedy accuracy, after"]
    assert after["per_run"] == dict(zip(paths, [1.0, 0.75])) and after["mean"] == 0.875
    assert after["std"] == pytest.approx(math.sqrt(2 * 0.125**2)) and (after["min"], after["max"]) == (0.75, 1.0)
    assert combined["grpo_gain"] == {paths[0]: {"ratio": 4.0, "difference": 0.75},
                                     paths[1]: {"ratio": 1.5, "difference": 0.25}}  # fmt: skip
    assert combined["numbers"]["wall time, seconds"]["mean"] == 616.0


def test_report_rows_are_a_library_function_and_name_a_bad_eval_json(job):
    from dotsllm.evaluation.report import JobOutputs, ReportError, report_rows

    evals = job / "evals"
    outputs = JobOutputs(
        times=job / "stages.tsv", data=job / "data", pretrain=job / "pretrain", sft=job / "sft",
        sft_eval=(evals / "before.json", evals / "after.json"), grpo=job / "grpo",
        grpo_eval=(evals / "before_grpo.json", evals / "after_grpo.json"), hf=job / "hf",
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
