"""Perplexity of a model on Megatron token shards: exp of the mean next-token loss over every token."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
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
def perplexity(model: torch.nn.Module, windows: Iterable[np.ndarray], batch_size: int = 4) -> PerplexityResult:
    """Mean next-token loss of a single-process megatron ``GPTModel`` over ``windows`` (see :func:`token_windows`)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    windows = iter(windows)
    while batch := list(islice(windows, batch_size)):
        width = max(len(w) for w in batch) - 1
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.zeros_like(tokens)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        for i, w in enumerate(batch):  # right padding: causal attention keeps it out of real positions
            tokens[i, : len(w) - 1] = torch.from_numpy(w[:-1])
            labels[i, : len(w) - 1] = torch.from_numpy(w[1:])
            mask[i, : len(w) - 1] = True
        positions = torch.arange(width).expand(len(batch), -1)
        loss = model(tokens.to(device), positions.to(device), None, labels=labels.to(device))
        total += loss.double()[mask.to(device)].sum().item()
        count += int(mask.sum())
    if not count:
        raise ValueError("no tokens to evaluate: the shards are empty")
    return PerplexityResult(tokens=count, mean_loss=total / count)
