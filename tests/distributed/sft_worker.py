"""Worker for the SFT packing test, started by torchrun: ``sft_worker.py packing WORKDIR LAYOUT...``.

For each layout (``dp``: plain data parallelism over the processes; ``tp2-etp2``, ``ep2``, ``pp2``): build
dots1-tiny with the trainer's ``build_model_and_optimizer``, take the trainer's step (``train_step``
with the SFT forward step) on a set of conversations packed first-fit-decreasing into rows, then on
the same conversations one per row, and write both steps' loss, token count and every gradient's
largest difference (relative to the gradient's scale) for the test to assert.

The learning rate and weight decay are 0, so the weights are the same for both steps; the expert
biases the first step moves are put back. The sequence-wise balance loss is off: it is defined per
row (a packed row is one sequence to it, as it is to megatron's THD packing), the one term packing
changes by definition.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

from dotsllm.model.config import Dots1ModelConfig
from dotsllm.chat_template import EncodedConversation
from dotsllm.posttrain.sft.packing import build_row, collate, first_fit_decreasing
from dotsllm.posttrain.sft.forward import sft_forward_step
from worker import compare, modules, parse_layout

SEQ_LENGTH, MICRO_BATCH = 64, 2


def conversations(vocab_size: int) -> list[EncodedConversation]:
    """14 conversations of 6-40 tokens, each with an answer span of its own length."""
    rng = random.Random(0)
    found = []
    for _ in range(14):
        n = rng.randint(6, 40)
        answer_start = rng.randint(2, n - 2)
        found.append(EncodedConversation([rng.randrange(vocab_size) for _ in range(n)],
                                         [i >= answer_start for i in range(n)]))  # fmt: skip
    return found


def micro_batches(rows: list[list[EncodedConversation]], dp_rank: int, dp_size: int) -> list[dict]:
    """This DP rank's micro-batches, the row list padded with empty rows to whole global batches."""
    rows = rows + [[]] * (-len(rows) % (MICRO_BATCH * dp_size))
    built = [build_row(row, SEQ_LENGTH) for row in rows]
    per_rank = len(built) // dp_size
    mine = built[dp_rank * per_rank : (dp_rank + 1) * per_rank]
    return [collate(mine[i : i + MICRO_BATCH]) for i in range(0, len(mine), MICRO_BATCH)]


def build(layout_name: str):
    from megatron.core import parallel_state

    from dotsllm.parallel.setup import init_distributed
    from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer

    layout, distributed_optimizer = parse_layout(layout_name)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    init_distributed(layout, seed=1234)
    cfg = Dots1ModelConfig.from_preset("dots1-tiny", moe_aux_loss_coeff=0.0)
    settings = OptimizerSettings(weight_decay=0.0, clip_grad=0.0, use_distributed_optimizer=distributed_optimizer)
    return cfg, *build_model_and_optimizer(cfg, layout, "fp32", settings, lr=0.0)


def step(chunks, optimizer, batches) -> tuple[dict, list[torch.Tensor]]:
    """The trainer's step; returns its result and a copy of every gradient (main_grad)."""
    from dotsllm.training.step import _expert_biases, train_step

    biases = [b.clone() for b in _expert_biases(chunks)]
    result = train_step(chunks, optimizer, [iter(batches) for _ in chunks], len(batches), MICRO_BATCH, SEQ_LENGTH,
                        sft_forward_step)  # fmt: skip
    with torch.no_grad():
        for bias, saved in zip(_expert_biases(chunks), biases):
            bias.copy_(saved)
    grads = [p.main_grad.clone() for m in modules(chunks) for p in m.parameters()]
    return result, grads


def packing(workdir: str, *layout_names: str) -> None:
    from megatron.core import parallel_state

    for name in layout_names:
        cfg, chunks, optimizer = build(name)
        convs = conversations(cfg.vocab_size)
        packed_rows = [[convs[i] for i in b] for b in first_fit_decreasing([len(c) - 1 for c in convs], SEQ_LENGTH)]
        dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
        packed, packed_grads = step(chunks, optimizer, micro_batches(packed_rows, dp_rank, dp_size))
        alone, alone_grads = step(chunks, optimizer, micro_batches([[c] for c in convs], dp_rank, dp_size))
        names = [n for m in modules(chunks) for n, _ in m.named_parameters()]
        found = {
            "packed_rows": len(packed_rows),
            "packed": {k: packed[k] for k in ("loss", "tokens")},
            "alone": {k: alone[k] for k in ("loss", "tokens")},
            "grads": {n: compare(p, a) for n, p, a in zip(names, packed_grads, alone_grads)},
            "grads_nonzero": sum(bool(g.abs().max() > 0) for g in alone_grads),
            "expected_tokens": sum(sum(c.targets[1:]) for c in convs),
        }
        Path(workdir, f"{name}.rank{torch.distributed.get_rank()}.json").write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    {"packing": packing}[sys.argv[1]](*sys.argv[2:])
