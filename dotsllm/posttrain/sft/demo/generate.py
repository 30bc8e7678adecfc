"""Deterministic generator of the embedded SFT demo set: short word tasks a tiny pretrained model can learn.

`python -m dotsllm.posttrain.sft.demo.generate [DIR]` (default: this folder) writes
- ``train.jsonl``: OpenAI ``messages`` conversations (some with a system message, some two-turn);
- ``heldout.jsonl``: conversations over noun phrases never seen in training (validation loss);
- ``heldout_eval.jsonl``: the held-out questions as ``{"prompt", "answer"}`` for ``dotsllm eval --chat``.

The words are the sample corpus's (``data_pipeline.sample.generate``), so the pretrained model knows
them; the tasks ask to repeat a phrase, or to give its first or last word.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from data_pipeline.sample.generate import ADJECTIVES, NOUNS

TASKS = {
    "repeat": lambda words: " ".join(words),
    "first word": lambda words: words[0],
    "last word": lambda words: words[-1],
}
SYSTEMS = ["You answer in a few words.", "Be brief."]
TRAIN, HELD_OUT = 3000, 200


def phrases(rng: random.Random) -> list[tuple[str, ...]]:
    """Distinct phrases of an adjective or two and a noun, shuffled."""
    found = {(a, n) for a in ADJECTIVES for n in NOUNS}
    found |= {tuple(rng.sample(ADJECTIVES, 2)) + (rng.choice(NOUNS),) for _ in range(4000)}
    ordered = sorted(found)
    rng.shuffle(ordered)
    return ordered


def question(rng: random.Random, words: tuple[str, ...]) -> tuple[str, str]:
    task = rng.choice(sorted(TASKS))
    return f"{task}: {' '.join(words)}", TASKS[task](words)


def conversation(rng: random.Random, pool: list[tuple[str, ...]], turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.3 else []
    for _ in range(turns):
        prompt, answer = question(rng, rng.choice(pool))
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return messages


def main(out_dir: str | Path = Path(__file__).parent) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2026)
    pool = phrases(rng)
    held_out, train = pool[:HELD_OUT], pool[HELD_OUT:]
    with (out / "train.jsonl").open("w") as f:
        for _ in range(TRAIN):
            f.write(json.dumps({"messages": conversation(rng, train, 2 if rng.random() < 0.2 else 1)}) + "\n")
    with (out / "heldout.jsonl").open("w") as f, (out / "heldout_eval.jsonl").open("w") as tasks:
        for words in held_out:
            prompt, answer = question(rng, words)
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}) + "\n")
            tasks.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
