"""Small Megatron token shards for training tests, written with megatron-core's own builder."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_shard(prefix: Path, num_docs: int, vocab_size: int, eod: int, seed: int = 0) -> str:
    """Documents from a random sparse Markov chain (learnable), each ended by ``eod``."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    successors = rng.integers(1, vocab_size, size=(vocab_size, 4))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16 if vocab_size < 65500 else np.int32)
    for _ in range(num_docs):
        length = int(rng.integers(20, 400))
        doc = [int(rng.integers(1, vocab_size))]
        for _ in range(length - 1):
            doc.append(int(successors[doc[-1], rng.integers(0, 4)]))
        builder.add_document(torch.tensor(doc + [eod]), [length + 1])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)
