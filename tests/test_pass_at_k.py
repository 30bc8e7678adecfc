"""Evaluation that states its uncertainty: the unbiased pass@k estimator against brute-force enumeration,
the standard errors against hand computations, and ``dotsllm eval --samples`` end to end on a tiny
imported model (the same numbers at any batch size, greedy untouched, the HF folder sampled alike)."""

import itertools
import json
import math
from fractions import Fraction

import pytest

# Before megatron: the CPU layer for megatron-core breaks importing transformers.generation afterwards.
from transformers import Dots1Config, Dots1ForCausalLM

from dotsllm import cli
from dotsllm.evaluation.generation import SampledEval, sampled_summary
from dotsllm.evaluation.stats import mean_and_se, pass_at_k, proportion_se

VOCAB, EOD = 8192, 0
TEMPERATURE = "0.02"  # the random model's logits differ by ~0.05 at the top: a few likely tokens each


def brute_force_pass_at_k(n, c, k):
    """The share of k-subsets of n samples (the first c correct) holding a correct one, exactly."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in subset) for subset in subsets), len(subsets))


def test_pass_at_k_equals_the_share_of_k_subsets_with_a_correct_sample():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == float(brute_force_pass_at_k(n, c, k)), (n, c, k)
    assert pass_at_k(5, 2, 1) == 2 / 5  # pass@1 is c/n
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 1, 5) == 1.0  # pass@n: any correct
    for bad in ((4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)):
        with pytest.raises(ValueError, match="pass_at_k"):
            pass_at_k(*bad)


def test_pass_at_k_is_accurate_where_the_binomials_overflow_a_float():
    """C(2000, 1000) ≈ 2e600 is no float; the product form stays within rounding of the exact ratio."""
    for n, c, k in ((2000, 3, 1000), (2000, 1500, 400), (5000, 1, 1), (5000, 10, 4990)):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == float(exact), (n, c, k)


def test_standard_errors_by_hand():
    # 3 of 4 right: sqrt(0.75 * 0.25 / 4)
    assert proportion_se(3, 4) == pytest.approx(math.sqrt(0.046875), rel=1e-15)
    assert proportion_se(0, 7) == 0.0 and proportion_se(7, 7) == 0.0
    # values 0, 1/4, 1, 3/4: mean 1/2; squared deviations 1/4 + 1/16 + 1/4 + 1/16 = 5/8, over 4: 5/32;
    # SE = sqrt(5/32 / 4) = sqrt(5/128)
    assert mean_and_se([0, 0.25, 1, 0.75]) == (0.5, pytest.approx(math.sqrt(5 / 128), rel=1e-15))
    # on 0/1 values it is the greedy formula
    assert mean_and_se([1, 1, 1, 0])[1] == pytest.approx(proportion_se(3, 4), rel=1e-15)
    assert mean_and_se([0.5]) == (0.5, 0.0)


def test_sampled_summary_by_hand():
    """4 prompts, 4 samples each, 0, 1, 4 and 2 of them correct."""
    summary = sampled_summary([0, 1, 4, 2], SampledEval(4, temperature=0.7, pass_k=(4, 1, 2)))
    assert summary["samples"] == 4 and summary["temperature"] == 0.7 and summary["correct"] == 7
    assert list(summary["pass_at_k"]) == ["1", "2", "4"]
    # accuracy: shares 0, 1/4, 1, 1/2 → mean 7/16; deviations -7/16, -3/16, 9/16, 1/16 → squares
    # (49 + 9 + 81 + 1) / 256 = 140/256, variance 35/256, SE sqrt(35/256 / 4) = sqrt(35) / 32
    assert summary["accuracy"] == 7 / 16 and summary["accuracy_se"] == pytest.approx(math.sqrt(35) / 32, rel=1e-14)
    assert summary["pass_at_k"]["1"] == {"value": summary["accuracy"], "se": summary["accuracy_se"]}
    # pass@2 per prompt: 0; 1 - C(3,2)/C(4,2) = 1/2; 1; 1 - C(2,2)/C(4,2) = 5/6 → mean 7/12;
    # deviations -7/12, -1/12, 5/12, 3/12 → squares (49 + 1 + 25 + 9) / 144 = 84/144, variance 21/144,
    # SE sqrt(21/144 / 4) = sqrt(21) / 24
    assert summary["pass_at_k"]["2"]["value"] == pytest.approx(7 / 12, rel=1e-14)
    assert summary["pass_at_k"]["2"]["se"] == pytest.approx(math.sqrt(21) / 24, rel=1e-14)
    # pass@4: any correct, 3 of 4 prompts
    assert summary["pass_at_k"]["4"] == {"value": 0.75, "se": pytest.approx(proportion_se(3, 4), rel=1e-14)}


def test_sampled_eval_settings_are_checked():
    assert SampledEval(8).pass_k == (1, 8)  # default: pass@1 and pass@N
    for bad, message in (
        ({"samples": 0}, "samples must be >= 1"), ({"samples": 4, "temperature": 0}, "temperature must be > 0"),
        ({"samples": 4, "pass_k": (1, 5)}, r"1 <= k <= samples \(4\), not \[5\]"),
        ({"samples": 4, "top_p": 0}, "top_p must be in"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            SampledEval(**bad)


def as_words(ids):
    return " ".join(f"w{t}" for t in ids)


@pytest.fixture(scope="module")
def tiny(megatron_world, tmp_path_factory):
    """A random dots1-tiny saved as a HF folder and imported as a dotsllm checkpoint, a word-level
    tokenizer (token i is "wi"), and a task of 8 prompts whose answers the model's greedy continuation
    gets right (2 tokens), half right (its first token, then the second likeliest), or whose answer is
    the second likeliest first token (1 token), or an unlikely one: (checkpoint, HF folder, task, tokenizer)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    from dotsllm.model import Dots1ModelConfig

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(5)
    hf = Dots1ForCausalLM(Dots1Config(**Dots1ModelConfig.from_preset("dots1-tiny").hf_config_dict())).eval()
    hf.save_pretrained(root / "hf")
    assert cli.main(["import-hf", str(root / "hf"), str(root / "ckpt")]) == 0
    words = {"<|endoftext|>": EOD, **{f"w{i}": i for i in range(1, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(root / "tokenizer.json"))

    def ranked(ids):  # tokens by the model's likelihood after ids, EOD left out
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1]
        return [t for t in logits.argsort(descending=True).tolist() if t != EOD]

    lines = []
    for i in range(8):
        prompt = torch.randint(1, VOCAB, (3 + i % 3,), generator=torch.Generator().manual_seed(i)).tolist()
        first = ranked(prompt)
        answer = {0: [first[0], ranked([*prompt, first[0]])[0]], 1: [first[0], ranked([*prompt, first[0]])[1]],
                  2: [first[1]], 3: [first[-1]]}[i % 4]  # fmt: skip
        lines.append(json.dumps({"prompt": as_words(prompt), "answer": as_words(answer)}))
    (root / "tiny.jsonl").write_text("\n".join(lines) + "\n")
    return root / "ckpt", root / "hf", root / "tiny.jsonl", root / "tokenizer.json"


def evaluate(model, task, tokenizer, out, *extra):
    args = ["eval", str(model), "--tasks", str(task), "--tokenizer", str(tokenizer), "--output", str(out)]
    assert cli.main([*args, *extra]) == 0
    return json.loads(out.read_text())["tasks"][task.stem]


SAMPLED = ["--samples", "4", "--temperature", TEMPERATURE, "--pass-k", "1", "4", "--seed", "11"]


def test_sampled_eval_end_to_end(tiny, tmp_path, capsys):
    ckpt, _, task, tokenizer = tiny
    greedy = evaluate(ckpt, task, tokenizer, tmp_path / "greedy.json", "--batch-size", "8")
    one = evaluate(ckpt, task, tokenizer, tmp_path / "one.json", *SAMPLED, "--batch-size", "1")
    capsys.readouterr()
    eight = evaluate(ckpt, task, tokenizer, tmp_path / "eight.json", *SAMPLED, "--batch-size", "8")
    table = capsys.readouterr().out

    # greedy: the fields and numbers of a run without --samples
    assert "sampled" not in greedy and all("sampled_correct" not in p for p in greedy["predictions"])
    assert {k: v for k, v in eight.items() if k not in ("sampled", "predictions")} == {
        k: v for k, v in greedy.items() if k != "predictions"
    }
    for plain, with_samples in zip(greedy["predictions"], eight["predictions"]):
        assert {k: with_samples[k] for k in plain} == plain
    assert (greedy["correct"], greedy["samples"]) == (2, 8)  # the greedy-right answers: prompts 0 and 4
    assert greedy["accuracy_se"] == pytest.approx(math.sqrt(0.25 * 0.75 / 8))

    # the same samples at batch size 1 and 8
    assert one == eight
    sampled = eight["sampled"]
    assert set(sampled) == {
        "samples", "temperature", "top_p", "seed", "correct", "accuracy", "accuracy_se", "pass_at_k"
    }  # fmt: skip
    assert (sampled["samples"], sampled["temperature"], sampled["top_p"], sampled["seed"]) == (4, 0.02, 1.0, 11)
    counts = [p["sampled_correct"] for p in eight["predictions"]]
    assert all(len(p["sampled_predictions"]) == 4 for p in eight["predictions"])
    assert sum(counts) == sampled["correct"] and any(0 < c < 4 for c in counts) and 0 in counts, counts
    assert [c for i, c in enumerate(counts) if i % 4 == 3] == [0, 0]  # the unlikely answers
    assert sampled["accuracy"] < sampled["pass_at_k"]["4"]["value"] < 1  # not a degenerate task

    # pass@1 is the sampled accuracy, pass@N the share of prompts with a correct sample
    assert list(sampled["pass_at_k"]) == ["1", "4"]
    assert sampled["pass_at_k"]["1"]["value"] == pytest.approx(sampled["accuracy"], abs=1e-15)
    assert sampled["pass_at_k"]["1"]["se"] == pytest.approx(sampled["accuracy_se"], abs=1e-15)
    assert sampled["accuracy"] == pytest.approx(sum(counts) / 32)
    any_right = sum(c > 0 for c in counts)
    assert sampled["pass_at_k"]["4"]["value"] == any_right / 8
    assert sampled["pass_at_k"]["4"]["se"] == pytest.approx(proportion_se(any_right, 8))

    # the table: value ± SE
    assert f"{greedy['accuracy']:.4f} ± {greedy['accuracy_se']:.4f}" in table
    assert f"{sampled['accuracy']:.4f} ± {sampled['accuracy_se']:.4f}" in table
    assert "pass@4" in table and f"{sampled['correct']}/32" in table


def test_sampled_eval_of_the_hf_folder_matches_the_checkpoint(tiny, tmp_path):
    """transformers' forward with the same per-request generators and sampler draws the checkpoint's
    samples (their logits agree to ~1e-5; a draw on a boundary could differ, none here)."""
    ckpt, hf, task, tokenizer = tiny
    ours = evaluate(ckpt, task, tokenizer, tmp_path / "ckpt.json", *SAMPLED, "--batch-size", "3")
    theirs = evaluate(hf, task, tokenizer, tmp_path / "hf.json", *SAMPLED)
    assert theirs == ours


def test_sampling_flags_need_samples(tiny, tmp_path):
    ckpt, _, task, tokenizer = tiny
    args = ["eval", str(ckpt), "--tasks", str(task), "--tokenizer", str(tokenizer)]
    with pytest.raises(SystemExit, match=r"dotsllm eval: --temperature, --pass-k without --samples N"):
        cli.main([*args, "--temperature", "0.5", "--pass-k", "2"])
    with pytest.raises(SystemExit, match=r"dotsllm eval: --samples: each pass@k needs 1 <= k <= samples \(4\)"):
        cli.main([*args, "--samples", "4", "--pass-k", "8"])
    with pytest.raises(SystemExit, match="--samples needs a generation task"):
        cli.main(["eval", str(ckpt), "--tasks", "perplexity", "--data", "x", "--samples", "2"])
