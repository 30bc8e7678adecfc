"""Stage 7: MinHash-LSH near-duplicate removal (5-gram word shingles, 128 bands × 16 rows).

Four steps, like datatrove's minhash module but vectorized:
`MinhashSignature` (per task) hashes each document's word 5-grams once, applies all
bands × rows hash functions in one numpy matrix operation, and writes one hash per band;
`MinhashBuckets` (tasks split the bands) links documents that share a band hash;
`MinhashCluster` (one task) takes connected components and keeps each component's smallest key;
`DuplicateFilter` (per task) drops the others with `duplicate_of` the kept document.
datatrove's own `MinhashDedupSignature` calls Python per shingle and per hash function and splits
words with spaCy, which is why this is written here (see bench/bench_data_pipeline.py).
"""

import glob
import os
from dataclasses import dataclass

import numpy as np
import orjson
import xxhash
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_pipeline.text import split_words

_U32_MAX = np.uint32(0xFFFFFFFF)
_BLOCK = 64  # shingles per matrix block: keeps the (block, bands*rows) temporary in L2 cache


@dataclass(frozen=True)
class MinhashConfig:
    n_grams: int = 5
    bands: int = 128
    rows: int = 16
    seed: int = 1


class MinhashHasher:
    """Shingle hashes, signatures and band hashes for one `MinhashConfig`."""

    def __init__(self, config: MinhashConfig):
        self.config = config
        rng = np.random.default_rng(config.seed)
        n = config.bands * config.rows
        # h_i(x) = a_i * x + b_i mod 2^32, a_i odd: one universal hash per signature row
        self.a = rng.integers(0, 1 << 31, n, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self.b = rng.integers(0, 1 << 32, n, dtype=np.uint32)
        self.gram_mult = rng.integers(0, 1 << 63, config.n_grams, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.band_mult = rng.integers(0, 1 << 63, config.rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._buffer = np.empty((_BLOCK, n), dtype=np.uint32)

    def shingles(self, text: str) -> np.ndarray:
        """Distinct 32-bit hashes of the word n-grams of `text` (all words as one n-gram if fewer)."""
        words = split_words(text.lower())
        if not words:
            return np.empty(0, dtype=np.uint32)
        h = np.fromiter((xxhash.xxh3_64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))
        n = min(self.config.n_grams, len(h))
        grams = np.zeros(len(h) - n + 1, dtype=np.uint64)
        for k in range(n):  # position-weighted sum of the n word hashes, then a 64-bit mix
            grams += h[k : len(h) - n + 1 + k] * self.gram_mult[k]
        return np.unique((_mix64(grams) >> np.uint64(32)).astype(np.uint32))

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """min over shingles of every row's hash function: (bands * rows,) uint32."""
        sig = np.full(self.a.shape, _U32_MAX, dtype=np.uint32)
        for start in range(0, len(shingles), _BLOCK):
            block = shingles[start : start + _BLOCK]
            tmp = self._buffer[: len(block)]
            np.multiply(block[:, None], self.a, out=tmp)
            tmp += self.b
            np.minimum(sig, tmp.min(axis=0), out=sig)
        return sig

    def band_hashes(self, signature: np.ndarray) -> np.ndarray:
        """One 64-bit hash per band of `signature`: (bands,) uint64."""
        rows = signature.reshape(self.config.bands, self.config.rows).astype(np.uint64)
        return _mix64((rows * self.band_mult).sum(axis=1, dtype=np.uint64))


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads every input bit over the whole 64-bit word."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _sig_dtype(bands: int) -> np.dtype:
    return np.dtype([("key", "<i8"), ("bands", "<u8", (bands,))])


class MinhashSignature(PipelineStep):
    """Passes documents through, writing `(key, band hashes)` to `<folder>/sigs/<rank>.bin`."""

    name = "🎯 MinHash signatures"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, config: MinhashConfig = MinhashConfig(), batch: int = 1024):
        super().__init__()
        self.folder = folder
        self.config = config
        self.batch = batch

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        hasher = MinhashHasher(self.config)
        os.makedirs(f"{self.folder}/sigs", exist_ok=True)
        os.makedirs(f"{self.folder}/ids", exist_ok=True)
        records = np.zeros(self.batch, dtype=_sig_dtype(self.config.bands))
        sigs_path, ids_path = f"{self.folder}/sigs/{rank:05d}.bin", f"{self.folder}/ids/{rank:05d}.jsonl"
        with open(sigs_path, "wb") as sigs, open(ids_path, "wb") as ids:
            n = 0
            for doc in data:
                with self.track_time():
                    shingles = hasher.shingles(doc.text)
                    if len(shingles):
                        records[n] = (doc.metadata["key"], hasher.band_hashes(hasher.signature(shingles)))
                        ids.write(orjson.dumps([doc.metadata["key"], doc.id]) + b"\n")
                        n += 1
                    else:
                        self.stat_update("no_shingles")
                    if n == self.batch:
                        records.tofile(sigs)
                        n = 0
                yield doc
            records[:n].tofile(sigs)


def load_signatures(folder: str, bands: int) -> np.ndarray:
    files = sorted(glob.glob(f"{folder}/sigs/*.bin"))
    arrays = [np.fromfile(f, dtype=_sig_dtype(bands)) for f in files]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=_sig_dtype(bands))


class MinhashBuckets(PipelineStep):
    """For the bands `rank, rank + world_size, ...`: an edge (first key, key) per document sharing a band hash."""

    name = "🎯 MinHash buckets"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, config: MinhashConfig = MinhashConfig()):
        super().__init__()
        self.folder = folder
        self.config = config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        sigs = load_signatures(self.folder, self.config.bands)
        edges = [np.zeros((0, 2), dtype=np.int64)]
        bands = range(rank, self.config.bands, world_size) if len(sigs) else ()  # no document, no edge
        for band in bands:
            with self.track_time():
                order = np.lexsort((sigs["key"], sigs["bands"][:, band]))
                values, keys = sigs["bands"][order, band], sigs["key"][order]
                starts = np.r_[True, values[1:] != values[:-1]]
                first_key = keys[starts][np.cumsum(starts) - 1]
                edges.append(np.stack([first_key[~starts], keys[~starts]], axis=1))
        edges = np.unique(np.concatenate(edges), axis=0)
        self.stat_update("edges", value=len(edges))
        os.makedirs(f"{self.folder}/edges", exist_ok=True)
        np.save(f"{self.folder}/edges/{rank:05d}.npy", edges)


class MinhashCluster(PipelineStep):
    """Connected components of all edges; writes `{key: kept id}` for every non-smallest member."""

    name = "🎯 MinHash clusters"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        if world_size != 1:
            raise ValueError("MinhashCluster is a global step: run it with tasks=1")
        with self.track_time():
            self._cluster()

    def _cluster(self) -> None:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        edges = np.concatenate([np.load(f) for f in sorted(glob.glob(f"{self.folder}/edges/*.npy"))]).reshape(-1, 2)
        nodes = np.unique(edges)
        i, j = np.searchsorted(nodes, edges[:, 0]), np.searchsorted(nodes, edges[:, 1])
        graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (i, j)), shape=(len(nodes), len(nodes)))
        n_clusters, labels = connected_components(graph, directed=False)
        root = np.full(n_clusters, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(root, labels, nodes)
        duplicate_of = dict(zip(nodes.tolist(), root[labels].tolist()))
        duplicate_of = {k: r for k, r in duplicate_of.items() if k != r}
        roots = set(duplicate_of.values())
        ids = {}
        for path in sorted(glob.glob(f"{self.folder}/ids/*.jsonl")):
            with open(path, "rb") as f:
                ids.update((k, i) for k, i in map(orjson.loads, f) if k in roots)
        self.stat_update("clusters", value=n_clusters)
        self.stat_update("near_duplicates", value=len(duplicate_of))
        with open(f"{self.folder}/duplicates.json", "wb") as f:
            f.write(orjson.dumps({str(k): ids[r] for k, r in duplicate_of.items()}))

