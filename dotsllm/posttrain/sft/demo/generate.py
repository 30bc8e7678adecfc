"""Deterministic generator of the embedded SFT demo set: short digit tasks a tiny pretrained model can learn.

`python -m dotsllm.posttrain.sft.demo.generate [DIR]` (default: this folder) writes
- ``train.jsonl``: OpenAI ``messages`` conversations (some with a system message, some two-turn);
- ``heldout.jsonl``: conversations over numbers never seen in training (validation loss);
- ``heldout_eval.jsonl``: the held-out questions as ``{"prompt", "answer"}`` for ``dotsllm eval --chat``.

The tasks ask to repeat a three-digit number, or to give its first or last digit: each answer token
copies a prompt token a fixed distance back, which a 3M-parameter model learns in a few minutes of SFT
(copying words from a vocabulary of a hundred takes it far longer). 200 of the 900 numbers are held out.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TASKS = {
    "repeat": lambda number: number,
    "first digit": lambda number: number[0],
    "last digit": lambda number: number[-1],
}
SYSTEMS = ["You answer in a few words.", "Be brief."]
TRAIN, HELD_OUT = 3000, 200
SEED = 2026


def number_split(seed: int = SEED) -> tuple[list[str], list[str]]:
    """(held-out, train) three-digit numbers: no held-out number is in any training conversation (the
    GRPO demo task, :mod:`dotsllm.posttrain.grpo.middle_digit`, holds out the same ones)."""
    pool = [str(n) for n in range(100, 1000)]
    random.Random(seed).shuffle(pool)
    return pool[:HELD_OUT], pool[HELD_OUT:]


def question(rng: random.Random, number: str) -> tuple[str, str]:
    task = rng.choice(sorted(TASKS))
    return f"{task}: {number}", TASKS[task](number)


def conversation(rng: random.Random, pool: list[str], turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.3 else []
    for _ in range(turns):
        prompt, answer = question(rng, rng.choice(pool))
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return messages


def main(out_dir: str | Path = Path(__file__).parent) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    pool = [str(n) for n in range(100, 1000)]
    rng.shuffle(pool)  # number_split's order; the same rng then draws the conversations
    held_out, train = pool[:HELD_OUT], pool[HELD_OUT:]
    with (out / "train.jsonl").open("w") as f:
        for _ in range(TRAIN):
            f.write(json.dumps({"messages": conversation(rng, train, 2 if rng.random() < 0.2 else 1)}) + "\n")
    with (out / "heldout.jsonl").open("w") as f, (out / "heldout_eval.jsonl").open("w") as tasks:
        for number in held_out:
            prompt, answer = question(rng, number)
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}) + "\n")
            tasks.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
