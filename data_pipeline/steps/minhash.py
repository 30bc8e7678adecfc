"""Stage 7: MinHash-LSH near-duplicate removal (5-gram word shingles, 128 bands × 16 rows).

Four steps with the file protocol of datatrove's minhash module (`data_pipeline.sorted_runs`), each
task holding at most `buffer_bytes`:
`MinhashSignature` (filter stage, per task) hashes each document's word 5-grams once, applies all
bands × rows hash functions in one compiled loop (numba), and writes `(band, band hash, key)` to
the sorted runs of the bucket task that owns the band, and `(key, id)` to its ids file;
`MinhashBuckets` (one task per band group) merges its bands' records and writes a pair
(first key, key) for each document sharing a band hash with a smaller key;
`MinhashCluster` (one task) finds the clusters of the pairs out of core (`data_pipeline.connected_components`),
each cluster's smallest key its root, and lists every other member with the root's id for the final task
that holds it;
`DuplicateFilter` (final stage, per task) drops those with `duplicate_of` the kept document.
datatrove's own `MinhashDedupSignature` calls Python per shingle and per hash function and splits
words with spaCy, which is why this is written here (see bench/bench_data_pipeline.py).
"""

import glob
import os
from dataclasses import dataclass

import numpy as np
import xxhash
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_pipeline.connected_components import star_components
from data_pipeline.records import task_of_key
from data_pipeline.sorted_runs import (RunWriter, framed, key_bytes, key_of, merge_sorted, merge_sorted_blocks,
                                      partition_files)
from data_pipeline.text import split_words

_U32_MAX = np.uint32(0xFFFFFFFF)


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
        from data_pipeline.steps.minhash_kernel import min_hashes  # numba (~150 MB RSS): only where signatures are made

        self._min_hashes = min_hashes

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
        self._min_hashes(shingles, self.a, self.b, sig)
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


_BAND = np.dtype([("band", ">u2"), ("value", ">u8"), ("key", ">u8")])  # sorted: equal band hashes in key order
_GROUP_BYTES = 10  # band and band hash: the records sharing them are candidates
_PAIR_SIZE = 16  # two keys, the smaller first


class MinhashSignature(PipelineStep):
    """Passes documents through, writing band records to `<folder>/bands/<bucket task>/` and `(key, id)`
    to `<folder>/ids/<rank>.bin` (in key order) for each document with at least one shingle."""

    name = "🎯 MinHash signatures"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, config: MinhashConfig = MinhashConfig(), bucket_tasks: int = 4,
                 buffer_bytes: int = 256 << 20, batch: int = 1024):
        super().__init__()
        self.folder = folder
        self.config = config
        self.bucket_tasks = bucket_tasks
        self.buffer_bytes = buffer_bytes
        self.batch = batch  # documents hashed before their records go to the runs: at most a quarter of the buffer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        hasher = MinhashHasher(self.config)
        bands = RunWriter(f"{self.folder}/bands", f"{rank:05d}", self.buffer_bytes, record_size=_BAND.itemsize)
        batch = max(1, min(self.batch, self.buffer_bytes // (4 * self.config.bands * _BAND.itemsize)))
        records = np.zeros((batch, self.config.bands), dtype=_BAND)
        records["band"] = np.arange(self.config.bands)
        os.makedirs(f"{self.folder}/ids", exist_ok=True)
        n = 0
        with open(f"{self.folder}/ids/{rank:05d}.bin", "wb") as ids:
            for doc in data:
                with self.track_time():
                    shingles = hasher.shingles(doc.text)
                    if len(shingles):
                        records["value"][n] = hasher.band_hashes(hasher.signature(shingles))
                        records["key"][n] = doc.metadata["key"]
                        ids.write(framed(key_bytes(doc.metadata["key"]) + doc.id.encode()))
                        n += 1
                    else:
                        self.stat_update("no_shingles")
                    if n == batch:
                        self._spread(bands, records)
                        n = 0
                yield doc
            self._spread(bands, records[:n])
        bands.close()
        self.stat_update("sorted_runs", value=bands.runs)

    def _spread(self, bands: RunWriter, records: np.ndarray) -> None:
        """Bucket task `t` owns the bands `t, t + bucket_tasks, ...`."""
        for task in range(self.bucket_tasks):
            bands.add(task, records[:, task :: self.bucket_tasks].tobytes())


class MinhashBuckets(PipelineStep):
    """Merges its bands' records; writes `(first key, key)` to `<folder>/pairs/` for every document whose band
    hash a document of smaller key shares (the first key is that band hash's smallest)."""

    name = "🎯 MinHash buckets"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, bucket_tasks: int = 4, buffer_bytes: int = 256 << 20):
        super().__init__()
        self.folder = folder
        self.bucket_tasks = bucket_tasks
        self.buffer_bytes = buffer_bytes

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        if world_size != self.bucket_tasks:
            raise ValueError(f"{self.name}: run with {self.bucket_tasks} tasks (steps.minhash.bucket_tasks)")
        pairs = RunWriter(f"{self.folder}/pairs", f"{rank:05d}", self.buffer_bytes // 2, _PAIR_SIZE, unique=True)
        group = first = None
        records = 0
        with self.track_time():
            for records, record in enumerate(
                    merge_sorted(partition_files(f"{self.folder}/bands", rank), _BAND.itemsize, self.buffer_bytes), 1):
                if record[:_GROUP_BYTES] != group:
                    group, first = record[:_GROUP_BYTES], record[_GROUP_BYTES:]
                else:
                    pairs.add(0, first + record[_GROUP_BYTES:])
            pairs.close()
        self.stat_update("band_records", value=records)
        self.stat_update("sorted_runs", value=pairs.runs)


class MinhashCluster(PipelineStep):
    """Clusters of the pairs; writes `(key, kept id)` to `<folder>/removals/<final task>/` for every member
    but its cluster's smallest key.

    One task, like datatrove's `MinhashDedupCluster`, but out of core: the components come from sorted
    edge files (`data_pipeline.connected_components`), so memory stays within `buffer_bytes` whatever the
    number of near-duplicate documents.
    """

    name = "🎯 MinHash clusters"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, tasks: int, buffer_bytes: int = 256 << 20):
        """`tasks`: of the final stage, which reads the removals."""
        super().__init__()
        self.folder = folder
        self.tasks = tasks
        self.buffer_bytes = buffer_bytes

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        if world_size != 1:
            raise ValueError("MinhashCluster is a global step: run it with tasks=1")
        with self.track_time():
            pairs = merge_sorted_blocks(partition_files(f"{self.folder}/pairs", 0), _PAIR_SIZE, self.buffer_bytes)
            stars, rounds = star_components((block.tobytes() for block in pairs), f"{self.folder}/components",
                                            self.buffer_bytes)
            members = 0
            by_root = RunWriter(f"{self.folder}/members", "00000", self.buffer_bytes // 2, record_size=_PAIR_SIZE)
            for block in merge_sorted_blocks([stars] if stars else [], _PAIR_SIZE, self.buffer_bytes // 2):
                member_root = np.frombuffer(block.tobytes(), dtype=">u8").reshape(-1, 2)
                by_root.add(0, member_root[:, ::-1].tobytes())
                members += len(member_root)
            by_root.close()
            clusters = self._write_removals()
        self.stat_update("clusters", value=clusters)
        self.stat_update("near_duplicates", value=members)
        self.stat_update("component_rounds", value=rounds)

    def _write_removals(self) -> int:
        """Joins `(root, member)` to the roots' ids; returns the number of roots."""
        ids = merge_sorted(sorted(glob.glob(f"{self.folder}/ids/*.bin")), None, self.buffer_bytes // 4)
        removals = RunWriter(f"{self.folder}/removals", "00000", self.buffer_bytes // 4)
        id_record = b"\0" * 8
        roots, last_root = 0, None
        for pair in merge_sorted(partition_files(f"{self.folder}/members", 0), _PAIR_SIZE, self.buffer_bytes // 4):
            root = key_of(pair)
            if root != last_root:
                roots, last_root = roots + 1, root
            while key_of(id_record) < root:
                id_record = next(ids, None)
                if id_record is None:
                    break
            if id_record is None or key_of(id_record) != root:
                raise ValueError(f"{self.folder}/ids: no id for document key {root}")
            removals.add(task_of_key(key_of(pair[8:]), self.tasks), pair[8:] + id_record[8:])
        removals.close()
        return roots
