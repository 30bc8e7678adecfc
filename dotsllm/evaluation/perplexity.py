"""Perplexity of a model (in any layout) on Megatron token shards: exp of the mean next-token loss over every token."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch


@dataclass
class PerplexityResult:
    tokens: int  # tokens predicted (each counted once)
    mean_loss: float  # mean next-token cross-entropy, nats

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_loss)

    def as_dict(self) -> dict[str, float]:
        return {"tokens": self.tokens, "mean_loss": self.mean_loss, "perplexity": self.perplexity}


def token_windows(prefixes: Iterable[str], seq_len: int, max_samples: int | None = None) -> Iterator[np.ndarray]:
    """Windows of up to ``seq_len + 1`` tokens over each shard's documents read as one stream.

    Consecutive windows share one token, so every token of a shard but its first is predicted exactly
    once; the last window of a shard may be shorter. At most ``max_samples`` windows in all.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    def windows(prefix: str) -> Iterator[np.ndarray]:
        buffer = np.empty(0, dtype=np.int64)
        for doc in IndexedDataset(prefix):
            buffer = np.concatenate([buffer, doc.astype(np.int64)])
            while len(buffer) > seq_len:
                yield buffer[: seq_len + 1]
                buffer = buffer[seq_len:]
        if len(buffer) > 1:
            yield buffer

    all_windows = (w for prefix in prefixes for w in windows(prefix))
    return islice(all_windows, max_samples) if max_samples else all_windows


@torch.no_grad()
def perplexity(
    model: torch.nn.Module | Sequence[torch.nn.Module], windows: Iterable[np.ndarray], batch_size: int = 4
) -> PerplexityResult:
    """Mean next-token loss of a megatron ``GPTModel`` over ``windows`` (see :func:`token_windows`).

    ``model`` is this rank's part (its chunks, one per virtual pipeline stage) in the layout of
    ``parallel_state``; every rank passes the same ``windows`` and gets the result. Forward-only
    through the trainer's evaluation (:func:`dotsllm.training.step.evaluate`): each step, every
    data-parallel rank takes ``pp`` micro-batches of ``batch_size`` windows (rows past the end are
    fully masked), so all ranks run the same number of forwards; sums are float64.
    """
    from megatron.core import parallel_state

    from dotsllm.inference.stages import model_chunks
    from dotsllm.training.step import evaluate

    chunks = model_chunks(model)
    device = next(chunks[0].parameters()).device
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    per_rank = parallel_state.get_pipeline_model_parallel_world_size() * batch_size
    total, count = 0.0, 0
    windows = iter(windows)
    while step := list(islice(windows, per_rank * dp_size)):
        # padded to a multiple of TP: sequence parallelism splits the sequence over TP ranks
        width = -(-(max(len(w) for w in step) - 1) // tp) * tp
        mine = step[dp_rank * per_rank : (dp_rank + 1) * per_rank]
        microbatches = [
            _microbatch(mine[i : i + batch_size], batch_size, width, device) for i in range(0, per_rank, batch_size)
        ]
        logs = evaluate(chunks, microbatches, batch_size, width)
        if logs["tokens"]:
            total += logs["loss"] * logs["tokens"]
            count += logs["tokens"]
    if not count:
        raise ValueError("no tokens to evaluate: the shards are empty")
    return PerplexityResult(tokens=count, mean_loss=total / count)


def _microbatch(windows: list[np.ndarray], rows: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``windows`` right-padded into a ``rows`` x ``width`` next-token batch whose loss mask covers the
    real labels (causal attention keeps the padding out of real positions)."""
    tokens = torch.zeros(rows, width, dtype=torch.long)
    labels = torch.zeros_like(tokens)
    mask = torch.zeros(rows, width)
    for i, w in enumerate(windows):
        tokens[i, : len(w) - 1] = torch.from_numpy(w[:-1])
        labels[i, : len(w) - 1] = torch.from_numpy(w[1:])
        mask[i, : len(w) - 1] = 1
    batch = {"tokens": tokens, "labels": labels, "loss_mask": mask, "position_ids": torch.arange(width).expand(rows, -1)}
    return {name: tensor.to(device) for name, tensor in batch.items()}
