"""The embedded verifiable task of the post-training demo: small arithmetic word problems, boxed answers.

    python -m dotsllm.posttrain.grpo.arithmetic OUT_DIR [--train 2000] [--heldout 200] [--seed 0]

writes ``OUT_DIR/train.jsonl`` and ``OUT_DIR/heldout.jsonl`` (GRPO prompt records ``{"prompt",
"answer"}``) and ``OUT_DIR/sft.jsonl`` (the train problems as chat ``messages`` with a worked answer
ending in ``\\boxed{N}``, for SFT). A problem adds or subtracts two numbers below ``--max-operand``
in one of a few phrasings; the held-out problems are those whose (phrasing, numbers) the train split
lacks, so held-out accuracy is measured on unseen prompts.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ("Tom", "Ana", "Li", "Sam", "Mia", "Omar", "Ivy", "Ben")
THINGS = ("apples", "books", "coins", "cards", "pens", "shells")
ADD = (
    "{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?",
    "There are {a} {things} in a box and {b} more are put in. How many {things} are in the box?",
    "What is {a} plus {b}?",
)
SUBTRACT = (
    "{name} has {a} {things} and gives away {b}. How many {things} does {name} have left?",
    "There are {a} {things} on a table and {b} are taken. How many {things} are on the table?",
    "What is {a} minus {b}?",
)
INSTRUCTION = " Give the answer as \\boxed{{N}}."


def problem(rng: random.Random, max_operand: int) -> dict[str, str]:
    """One problem: ``prompt``, ``answer`` (the number as text) and ``solution`` (worked, boxed)."""
    a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
    subtract = rng.random() < 0.5
    if subtract and b > a:
        a, b = b, a
    template = rng.choice(SUBTRACT if subtract else ADD)
    answer = a - b if subtract else a + b
    prompt = template.format(name=rng.choice(NAMES), things=rng.choice(THINGS), a=a, b=b) + INSTRUCTION.format()
    solution = f"{a} {'-' if subtract else '+'} {b} = {answer}. \\boxed{{{answer}}}"
    return {"prompt": prompt, "answer": str(answer), "solution": solution}


def make_splits(train: int, heldout: int, seed: int = 0, max_operand: int = 9) -> tuple[list[dict], list[dict]]:
    """``train`` and ``heldout`` problems; no held-out prompt is a train prompt."""
    rng = random.Random(seed)
    held: dict[str, dict] = {}
    while len(held) < heldout:
        p = problem(rng, max_operand)
        held.setdefault(p["prompt"], p)
    train_problems: list[dict] = []
    for _ in range(100 * train):
        if len(train_problems) == train:
            break
        p = problem(rng, max_operand)
        if p["prompt"] not in held:
            train_problems.append(p)
    if len(train_problems) < train:
        raise ValueError(
            f"only {len(train_problems)} train problems differ from the held-out ones; raise --max-operand"
        )
    return train_problems, list(held.values())


def write_task(out_dir: str | Path, train: int, heldout: int, seed: int = 0, max_operand: int = 9) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_problems, held = make_splits(train, heldout, seed, max_operand)
    for name, problems in (("train", train_problems), ("heldout", held)):
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps({"prompt": p["prompt"], "answer": p["answer"]}) + "\n" for p in problems)
    with open(out / "sft.jsonl", "w") as f:
        for p in train_problems:
            messages = [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["solution"]}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-operand", type=int, default=9)
    args = parser.parse_args(argv)
    out = write_task(args.out_dir, args.train, args.heldout, args.seed, args.max_operand)
    print(f"wrote {out}/train.jsonl ({args.train}), heldout.jsonl ({args.heldout}), sft.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
