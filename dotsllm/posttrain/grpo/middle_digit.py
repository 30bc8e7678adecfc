"""The embedded verifiable task of the post-training demo: the middle digit of a three-digit number.

    python -m dotsllm.posttrain.grpo.middle_digit OUT_DIR [--demonstrations 30] [--train 2000] [--seed 0]

writes ``OUT_DIR/train.jsonl`` and ``OUT_DIR/heldout.jsonl`` (GRPO prompt records ``{"prompt": "middle
digit: 905", "answer": "0"}``) and ``OUT_DIR/sft.jsonl`` (``--demonstrations`` of the train prompts as
chat ``messages`` with their answer, for SFT). A new instruction next to the SFT demo's copy tasks
(repeat a number, its first or last digit): 30 demonstrations among those 3,000 leave the tiny
model answering it right only now and then (greedy accuracy well below pass@8), the regime where a
verifier's reward sharpens a policy. The held-out prompts are the 200 numbers the SFT demo holds out
(:func:`~dotsllm.posttrain.sft.demo.generate.number_split`): no training data holds them at all.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from dotsllm.posttrain.sft.demo.generate import number_split

INSTRUCTION = "middle digit"


def record(number: str) -> dict[str, str]:
    return {"prompt": f"{INSTRUCTION}: {number}", "answer": number[1]}


def write_task(out_dir: str | Path, demonstrations: int = 30, train: int = 2000, seed: int = 0) -> Path:
    """The three files (see the module doc); the train prompts are drawn from the SFT demo's train numbers."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    held_out, pool = number_split()
    rng = random.Random(seed)
    prompts = [record(rng.choice(pool)) for _ in range(train)]
    with open(out / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in prompts)
    with open(out / "heldout.jsonl", "w") as f:
        f.writelines(json.dumps(record(n)) + "\n" for n in held_out)
    with open(out / "sft.jsonl", "w") as f:
        for r in prompts[:demonstrations]:
            messages = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["answer"]}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--demonstrations", type=int, default=30, help="train prompts written as SFT conversations")
    parser.add_argument("--train", type=int, default=2000, help="GRPO train prompts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_task(args.out_dir, args.demonstrations, args.train, args.seed)
    print(f"wrote {out}/train.jsonl ({args.train}), heldout.jsonl (200), sft.jsonl ({args.demonstrations})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
