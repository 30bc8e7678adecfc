"""The embedded GRPO demo task: right answers, and held-out numbers that no training data holds."""

import json

from dotsllm.posttrain.grpo.middle_digit import write_task
from dotsllm.posttrain.sft.demo.generate import number_split

DEMO = "dotsllm/posttrain/sft/demo"


def numbers_in(path) -> set[str]:
    """Every three-digit number in a JSONL file's prompts and messages."""
    found = set()
    for line in open(path):
        record = json.loads(line)
        texts = [record["prompt"]] if "prompt" in record else [m["content"] for m in record["messages"]]
        found |= {word for text in texts for word in text.split() if word.isdigit() and len(word) == 3}
    return found


def test_the_task_files_hold_right_answers_and_keep_the_held_out_numbers_apart(tmp_path):
    out = write_task(tmp_path, demonstrations=30, train=500)
    train = [json.loads(line) for line in open(out / "train.jsonl")]
    heldout = [json.loads(line) for line in open(out / "heldout.jsonl")]
    demos = [json.loads(line)["messages"] for line in open(out / "sft.jsonl")]
    assert (len(train), len(heldout), len(demos)) == (500, 200, 30)
    for record in train + heldout:
        number = record["prompt"].removeprefix("middle digit: ")
        assert len(number) == 3 and record["answer"] == number[1]
    assert [m[0]["content"] for m in demos] == [r["prompt"] for r in train[:30]]
    assert [m[1]["content"] for m in demos] == [r["answer"] for r in train[:30]]
    held = {r["prompt"].split()[-1] for r in heldout}
    assert held == set(number_split()[0])
    training = numbers_in(out / "train.jsonl") | numbers_in(f"{DEMO}/train.jsonl")
    assert held.isdisjoint(training)  # no training data, GRPO's or SFT's, holds a held-out number
