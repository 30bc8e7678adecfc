"""Perplexity of a model (in any layout) on Megatron token shards: exp of the mean next-token loss over every token."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
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
    """Mean next-token loss of a megatron ``GPTModel`` (in eval mode) over ``windows`` (see :func:`token_windows`).

    ``model`` is this rank's part (its chunks, one per virtual pipeline stage) in the layout of
    ``parallel_state``; every rank passes the same ``windows`` and gets the result. Forward-only
    through megatron's pipeline schedules: each step, every data-parallel rank takes ``pp`` micro-batches
    of ``batch_size`` windows (rows past the end are fully masked), so all ranks run the same number of
    forwards. Each token's loss is summed in float64.
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from dotsllm.inference.stages import model_chunks

    chunks = model_chunks(model)
    device = next(chunks[0].parameters()).device
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    num_microbatches = parallel_state.get_pipeline_model_parallel_world_size()
    per_rank = num_microbatches * batch_size
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, tokens
    windows = iter(windows)
    while step := list(islice(windows, per_rank * dp_size)):
        # padded to a multiple of TP: sequence parallelism splits the sequence over TP ranks
        width = -(-(max(len(w) for w in step) - 1) // tp) * tp
        mine = step[dp_rank * per_rank : (dp_rank + 1) * per_rank]
        microbatches = [
            _microbatch(mine[i : i + batch_size], batch_size, width, device) for i in range(0, per_rank, batch_size)
        ]
        logs = get_forward_backward_func()(
            forward_step_func=_forward_step,
            data_iterator=[iter(microbatches) for _ in chunks],
            model=chunks,
            num_microbatches=num_microbatches,
            seq_length=width,
            micro_batch_size=batch_size,
            forward_only=True,
        )
        for entry in logs:  # on the last pipeline stage
            totals += entry["loss sum, tokens"]
    if dp_size > 1:
        torch.distributed.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(
            totals,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
        )
    total, count = totals.tolist()
    if not count:
        raise ValueError("no tokens to evaluate: the shards are empty")
    return PerplexityResult(tokens=int(count), mean_loss=total / count)


def _microbatch(windows: list[np.ndarray], rows: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``windows`` right-padded into ``rows`` x ``width`` inputs, labels and a mask of the real labels."""
    tokens = torch.zeros(rows, width, dtype=torch.long)
    labels = torch.zeros_like(tokens)
    mask = torch.zeros(rows, width, dtype=torch.float64)
    for i, w in enumerate(windows):  # right padding: causal attention keeps it out of real positions
        tokens[i, : len(w) - 1] = torch.from_numpy(w[:-1])
        labels[i, : len(w) - 1] = torch.from_numpy(w[1:])
        mask[i, : len(w) - 1] = 1
    batch = {"tokens": tokens, "labels": labels, "positions": torch.arange(width).expand(rows, -1), "mask": mask}
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    per_token_loss = model(batch["tokens"], batch["positions"], None, labels=batch["labels"])
    return per_token_loss, partial(_loss_sum, batch["mask"])


def _loss_sum(mask: torch.Tensor, per_token_loss: torch.Tensor):
    """(loss sum, token count, logs): the schedules' per-token loss convention."""
    total = (per_token_loss.double() * mask).sum()
    count = mask.sum()
    return total, count.int(), {"loss sum, tokens": torch.stack([total, count])}
