"""External sort for the dedup stages: byte records written in any order, read back sorted, in bounded memory.

The file protocol of datatrove's MinHash stages: every writing task holds at most `buffer_bytes` of
records, sorts them and spills them as a run, and at its end merges its runs into one sorted file
per partition (`<folder>/<partition>/<writer>.bin`); the task that owns a partition merges the files
of all writers with a heap. Records compare as bytes, so each starts with its sort key in big-endian.

Written here because datatrove sorts each signature file whole in memory and offers no external
sort to reuse, and no well-kept library sorts byte records on disk.
"""

import glob
import heapq
import itertools
import os
import resource
import struct
from collections.abc import Iterator

import numpy as np

_FRAME = struct.Struct("<I")  # length prefix of a variable-size record
_OBJECT_BYTES = 41  # a Python bytes object's header and its list slot, beside the record itself
_MIN_BLOCK, _MAX_BLOCK = 16 << 10, 1 << 20  # read block per merged file


def framed(record: bytes) -> bytes:
    """A variable-size record as stored: its length, then its bytes."""
    return _FRAME.pack(len(record)) + record


def key_bytes(key: int) -> bytes:
    return key.to_bytes(8, "big")


def key_of(record: bytes) -> int:
    """The document key that starts `record` (8 bytes, big-endian)."""
    return int.from_bytes(record[:8], "big")


class RunWriter:
    """Sorted files `<folder>/<partition:05d>/<name>.bin`, one per partition this writer fed.

    `record_size` None: records of any size, stored length-prefixed; an int: fixed-size records, and
    `add` takes any number of them concatenated. `unique`: equal records are written once.
    Stale files of an interrupted earlier attempt of the same writer are removed first.
    """

    def __init__(self, folder: str, name: str, buffer_bytes: int, record_size: int | None = None,
                 unique: bool = False):
        self.folder, self.name = folder, name
        self.buffer_bytes = buffer_bytes
        self.record_size = record_size
        self.unique = unique
        self.records = 0  # added, equal ones counted each time
        self.runs = 0  # spilled runs, all partitions together
        self._held = 0
        self._buffers: dict[int, bytearray | list[bytes]] = {}
        self._run_counts: dict[int, int] = {}
        for stale in glob.glob(f"{folder}/*/{name}.*"):
            os.remove(stale)

    def add(self, partition: int, record: bytes) -> None:
        if self.record_size:
            self._buffers.setdefault(partition, bytearray()).extend(record)
            self._held += len(record)
            self.records += len(record) // self.record_size
        else:
            self.records += 1
            self._buffers.setdefault(partition, []).append(record)
            self._held += len(record) + _OBJECT_BYTES
        if self._held >= self.buffer_bytes:
            self._spill()

    def close(self) -> None:
        """Spills what is held, then leaves one sorted file per partition."""
        self._spill()
        for partition, count in self._run_counts.items():
            runs = [self._path(partition, f"run{i}") for i in range(count)]
            final = self._path(partition, "bin")
            if count == 1:
                os.replace(runs[0], final)
                continue
            with open(final + ".tmp", "wb") as f:
                for record in merge_sorted(runs, self.record_size, self.buffer_bytes, self.unique):
                    f.write(record if self.record_size else framed(record))
            os.replace(final + ".tmp", final)
            for run in runs:
                os.remove(run)

    def _path(self, partition: int, suffix: str) -> str:
        return f"{self.folder}/{partition:05d}/{self.name}.{suffix}"

    def _spill(self) -> None:
        for partition, held in self._buffers.items():
            run = self._run_counts.get(partition, 0)
            os.makedirs(f"{self.folder}/{partition:05d}", exist_ok=True)
            with open(self._path(partition, f"run{run}"), "wb") as f:
                if self.record_size:
                    records = np.frombuffer(held, dtype=f"S{self.record_size}")  # sorts as memcmp
                    records.sort()
                    f.write((np.unique(records) if self.unique else records).tobytes())
                else:
                    held.sort()
                    for record in (r for r, _ in itertools.groupby(held)) if self.unique else held:
                        f.write(framed(record))
            self._run_counts[partition] = run + 1
            self.runs += 1
        self._buffers.clear()
        self._held = 0


def partition_files(folder: str, partition: int) -> list[str]:
    """The sorted files every writer left for `partition`."""
    return sorted(glob.glob(f"{folder}/{partition:05d}/*.bin"))


def read_records(path: str, record_size: int | None = None, block: int = _MAX_BLOCK) -> Iterator[bytes]:
    """The records of one file, in file order."""
    with open(path, "rb", buffering=block) as f:
        if record_size:
            chunk_size = max(1, block // record_size) * record_size
            while chunk := f.read(chunk_size):
                yield from [chunk[i : i + record_size] for i in range(0, len(chunk), record_size)]
        else:
            while header := f.read(_FRAME.size):
                yield f.read(_FRAME.unpack(header)[0])


def merge_sorted(paths: list[str], record_size: int | None = None, buffer_bytes: int = 64 << 20,
                 unique: bool = False) -> Iterator[bytes]:
    """The records of sorted files `paths` in one sorted stream (a heap merge), each file read in blocks
    that together take about a quarter of `buffer_bytes`."""
    _allow_open_files(len(paths))
    block = min(_MAX_BLOCK, max(_MIN_BLOCK, buffer_bytes // (4 * max(1, len(paths)))))
    merged = heapq.merge(*(read_records(path, record_size, block) for path in paths))
    return (record for record, _ in itertools.groupby(merged)) if unique else merged


def merge_sorted_blocks(paths: list[str], record_size: int, buffer_bytes: int = 64 << 20,
                        unique: bool = False) -> Iterator[np.ndarray]:
    """The fixed-size records of sorted files `paths` as consecutive sorted arrays (dtype `S<record_size>`,
    which compares as memcmp): a k-way merge a block at a time, for callers that work on numpy arrays.
    Each round takes, from every file's block, the records up to the smallest of the blocks' last records
    (all that can come before the rest of every file) and sorts them together; the blocks take about a
    quarter of `buffer_bytes`, a round's output at most as much again."""
    _allow_open_files(len(paths))
    block = min(_MAX_BLOCK, max(_MIN_BLOCK, buffer_bytes // (4 * max(1, len(paths))))) // record_size * record_size
    dtype = np.dtype(f"S{record_size}")
    files = [open(path, "rb") for path in paths]  # noqa: SIM115 (closed below, however the caller stops)
    try:
        heads = [np.frombuffer(f.read(block), dtype=dtype) for f in files]
        last = None
        while live := [i for i, head in enumerate(heads) if len(head)]:
            cutoff = min(heads[i][-1] for i in live)
            taken = []
            for i in live:
                n = int(np.searchsorted(heads[i], cutoff, side="right"))
                taken.append(heads[i][:n])
                heads[i] = heads[i][n:]
                if not len(heads[i]):
                    heads[i] = np.frombuffer(files[i].read(block), dtype=dtype)
            merged = np.concatenate(taken) if len(taken) > 1 else taken[0]
            if unique:
                merged = np.unique(merged)
            elif len(taken) > 1:
                merged = np.sort(merged)
            if unique and last is not None and len(merged) and merged[0] == last:
                merged = merged[1:]
            if len(merged):
                last = merged[-1]
                yield merged
    finally:
        for f in files:
            f.close()


def _allow_open_files(count: int) -> None:
    """Raises the soft limit of open files to the hard one when a merge needs more than the soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = count + 64  # the process's other files
    if needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise OSError(f"merging {count} files needs {needed} open files, over this machine's limit of {hard}: "
                      "use fewer tasks in the stage that wrote them or a larger buffer_bytes")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class TaskRecords:
    """The records a dedup stage listed for one task of a later stage, read alongside its documents.

    The files `<folder>/<rank:05d>/*.bin` merged; each record starts with the 8-byte key of one of the
    task's documents, which arrive in increasing key order (see `records.task_of_key`).
    """

    def __init__(self, folder: str, rank: int, record_size: int | None = None, buffer_bytes: int = 16 << 20):
        self.where = f"{folder}/{rank:05d}"
        self._records = merge_sorted(partition_files(folder, rank), record_size, buffer_bytes)
        self._head = next(self._records, None)
        self._last_key = -1

    def pop(self, key: int) -> list[bytes]:
        """The rest (after the key) of every record for document `key`."""
        if key <= self._last_key:
            raise ValueError(f"{self.where}: document key {key} came after key {self._last_key}; "
                             "the task's documents must come in increasing key order")
        self._last_key = key
        found = []
        while self._head is not None and (head_key := key_of(self._head)) <= key:
            if head_key < key:
                self._missing(head_key)
            found.append(self._head[8:])
            self._head = next(self._records, None)
        return found

    def finish(self) -> None:
        """Raises if a record names a document the task did not see."""
        if self._head is not None:
            self._missing(key_of(self._head))

    def _missing(self, key: int) -> None:
        raise ValueError(f"{self.where}: a record names document key {key}, which is not among this task's "
                         "documents: the stage's input changed after the dedup stage ran")
