"""SFT step throughput with packing vs without, on the embedded demo set, and packing efficiency.

    OMP_NUM_THREADS=1 python bench/bench_sft.py [--seq-length 256] [--rows 8] [--steps 4]

One process, dots1-tiny in fp32, the trainer's ``train_step`` with the SFT forward step. The demo set
(``dotsllm/posttrain/sft/demo/train.jsonl``) is encoded with a SentencePiece tokenizer trained on it
(with the chat tokens), then laid out three ways, ``--rows`` rows of ``--seq-length`` slots per step:
- packed: first-fit-decreasing, several conversations per row (block-diagonal attention);
- one per row: each conversation alone in a row of ``--seq-length`` slots;
- one per row, trimmed: each micro-batch cut to its longest conversation (dynamic padding).
Throughput counts real (non-padding) tokens per second of process CPU time (the best of the steps,
after one warm-up step), so other load on a shared machine does not swamp it; on CUDA, wall time.
Packing efficiency = real tokens / row capacity over the whole epoch.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dotsllm.model import Dots1ModelConfig

from dotsllm.parallel import ParallelConfig
from dotsllm.parallel.setup import init_distributed
from dotsllm.chat_template import ChatTemplate
from dotsllm.posttrain.sft.data import SampleBuilder, SFTDataConfig, SFTSource, epoch_rows
from dotsllm.posttrain.sft.packing import build_row, collate
from dotsllm.posttrain.sft.forward import sft_forward_step
from dotsllm.tokenizer import Tokenizer, train_sentencepiece
from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer
from dotsllm.training.step import train_step

DEMO = Path(__file__).resolve().parents[1] / "dotsllm" / "posttrain" / "sft" / "demo" / "train.jsonl"
MICRO_BATCH = 4


def demo_tokenizer(workdir: Path) -> Tokenizer:
    texts = [m["content"] for line in DEMO.read_text().splitlines() for m in json.loads(line)["messages"]]
    return Tokenizer(train_sentencepiece(texts + ["You are a helpful assistant."] * 50, str(workdir / "sp"), 1000, 1))


def step_batches(samples, rows: list[list[int]], seq_length: int, trim: bool) -> list[dict[str, torch.Tensor]]:
    batches = []
    for start in range(0, len(rows), MICRO_BATCH):
        batch = collate([build_row([samples[i].encoded for i in row], seq_length) for row in rows[start : start + MICRO_BATCH]])
        if trim:
            longest = int((batch["segment_ids"] >= 0).sum(dim=1).max())
            batch = {k: v[:, :longest] for k, v in batch.items()}
        batches.append(batch)
    return batches


def measure(chunks, optimizer, samples, rows, seq_length, rows_per_step, steps, trim) -> tuple[float, int]:
    """Best real tokens per CPU second over ``steps`` steps (after a warm-up one); real tokens per step."""
    clock = time.perf_counter if torch.cuda.is_available() else time.process_time
    best, real = 0.0, 0
    for k in range(steps + 1):
        step_rows = rows[k * rows_per_step : (k + 1) * rows_per_step]
        batches = step_batches(samples, step_rows, seq_length, trim)
        real = sum(int((b["segment_ids"] >= 0).sum()) for b in batches)
        start = clock()
        train_step(chunks, optimizer, [iter(batches)], len(batches), MICRO_BATCH, seq_length, sft_forward_step)
        if k:
            best = max(best, real / (clock() - start))
    return best, real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=8, help="rows per step (a multiple of 4)")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    init_distributed(ParallelConfig(), seed=1234)
    with tempfile.TemporaryDirectory() as workdir:
        template = ChatTemplate(demo_tokenizer(Path(workdir)))
    config = SFTDataConfig(sources=[SFTSource(str(DEMO))])
    builder = SampleBuilder(template, config, args.seq_length)
    samples = builder.samples(builder.conversations(config.sources[0]), random.Random(0))
    slots = [s.slots for s in samples]
    packed_rows = epoch_rows(slots, args.seq_length, True, random.Random(1))
    single_rows = epoch_rows(slots, args.seq_length, False, random.Random(1))
    efficiency = {
        "packed": sum(slots) / (len(packed_rows) * args.seq_length),
        "one per row": sum(slots) / (len(single_rows) * args.seq_length),
    }
    settings = OptimizerSettings(use_distributed_optimizer=False)
    chunks, optimizer = build_model_and_optimizer(Dots1ModelConfig.from_preset("dots1-tiny"), ParallelConfig(), "fp32", settings, 1e-4)

    table = Table(title=f"SFT on the demo set: {len(samples)} conversations, {sum(slots):,} tokens, "
                        f"rows of {args.seq_length}, {args.rows} rows per step, dots1-tiny fp32")  # fmt: skip
    for column in ("layout", "rows per epoch", "packing efficiency", "real tokens/step", "real tokens/s", "vs packed"):
        table.add_column(column, justify="right" if column != "layout" else "left")
    results = {}
    for name, rows, trim in (("packed", packed_rows, False), ("one per row", single_rows, False),
                             ("one per row, trimmed", single_rows, True)):  # fmt: skip
        results[name] = measure(chunks, optimizer, samples, rows, args.seq_length, args.rows, args.steps, trim)
    for name, (rate, real) in results.items():
        rows = packed_rows if name == "packed" else single_rows
        eff = efficiency["packed" if name == "packed" else "one per row"]
        table.add_row(name, f"{len(rows):,}", f"{eff:.3f}", f"{real:,}", f"{rate:,.0f}", f"{rate / results['packed'][0]:.2f}×")
    Console(width=130).print(table)
    print(f"packing: {results['packed'][0] / results['one per row'][0]:.2f}× the tokens/s of one conversation per row, "
          f"{results['packed'][0] / results['one per row, trimmed'][0]:.2f}× of trimmed rows; "
          f"packing efficiency {efficiency['packed']:.3f} (target >= 0.9)")  # fmt: skip
    if efficiency["packed"] < 0.9:
        raise SystemExit(f"packing efficiency {efficiency['packed']:.3f} < 0.9")


if __name__ == "__main__":
    main()
