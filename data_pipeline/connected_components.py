"""Connected components of an edge list on disk, in memory bounded by a buffer whatever the number of nodes.

Alternating Large-Star and Small-Star (Kiveris et al., "Connected Components in MapReduce and Beyond",
SoCC 2014), each a pass over sorted edge files (`data_pipeline.sorted_runs`), until the edge set stops
changing; it then is one star per component, every node joined to the component's smallest node,
which is the root union-find with union by the smaller key gives. An edge is a 16-byte record of two
big-endian keys, so byte order is key order; the canonical edge set stores each edge once as
`(larger, smaller)`.
- Large-Star: for every node `u`, `m` the smallest of `u` and its neighbours; each neighbour `v > u`
  is joined to `m` instead.
- Small-Star: for every node `u`, `m` the smallest of `u` and its smaller neighbours; those neighbours
  and `u` are joined to `m` instead.
Each pass streams one sorted file a numpy block at a time and writes the next through a `RunWriter`.
Written here because no well-kept library computes components out of core (scipy's and networkx's
hold the graph in memory; datatrove's `MinhashDedupCluster` holds a union-find of every node).
"""

import filecmp
import os
from collections.abc import Iterator

import numpy as np

from data_pipeline.sorted_runs import RunWriter, merge_sorted_blocks, partition_files

EDGE_SIZE = 16
MAX_ROUNDS = 256  # O(log² n) rounds in the worst case; a few for near-duplicate clusters


def _edges(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two keys of each 16-byte record, as native uint64 columns."""
    keys = np.frombuffer(block.tobytes(), dtype=">u8").astype(np.uint64).reshape(-1, 2)
    return keys[:, 0], keys[:, 1]


def _records(first: np.ndarray, second: np.ndarray) -> bytes:
    return np.stack([first, second], axis=1).astype(">u8").tobytes()


class _Groups:
    """Consecutive records sharing their first key (`u`), across blocks: for each record, the smallest
    second key (`v`) of its group and whether it starts the group (records sorted by `(u, v)`)."""

    def __init__(self):
        self.u = self.m = None

    def __call__(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts = np.empty(len(u), dtype=bool)
        starts[0] = self.u is None or u[0] != self.u
        starts[1:] = u[1:] != u[:-1]
        group = np.cumsum(starts)  # 0 for records that continue the previous block's last group
        first_v = np.empty(group[-1] + 1, dtype=np.uint64)
        first_v[0] = self.m if self.m is not None else 0
        first_v[1:] = v[starts]
        smallest = first_v[group]
        self.u, self.m = u[-1], smallest[-1]
        return smallest, starts


class _Pass:
    """One pass's sorted input and output files under `<work>/00000/`."""

    def __init__(self, work: str, buffer_bytes: int):
        self.work, self.buffer_bytes = work, buffer_bytes

    def writer(self, name: str) -> RunWriter:
        return RunWriter(self.work, name, self.buffer_bytes // 2, EDGE_SIZE, unique=True)

    def read(self, name: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block in merge_sorted_blocks(self.path(name), EDGE_SIZE, self.buffer_bytes // 2):
            yield _edges(block)

    def path(self, name: str) -> list[str]:
        return [p for p in partition_files(self.work, 0) if os.path.basename(p) == f"{name}.bin"]

    def remove(self, name: str) -> None:
        for path in self.path(name):
            os.remove(path)


def _both_directions(files: _Pass, canonical: str, out: str) -> None:
    writer = files.writer(out)
    for hi, lo in files.read(canonical):
        writer.add(0, _records(hi, lo))
        writer.add(0, _records(lo, hi))
    writer.close()


def _large_star(files: _Pass, adjacency: str, out: str) -> None:
    """`adjacency`: every edge both ways, sorted by `(u, v)`: a group's first `v` is `u`'s smallest neighbour."""
    writer, groups = files.writer(out), _Groups()
    for u, v in files.read(adjacency):
        smallest, _ = groups(u, v)
        m = np.minimum(u, smallest)
        larger = v > u
        writer.add(0, _records(v[larger], m[larger]))  # v > u >= m: already (larger, smaller)
    writer.close()


def _small_star(files: _Pass, canonical: str, out: str) -> None:
    """`canonical`: `(u, v)` with `v < u`, sorted: a group's first `v` is the smallest of `u`'s smaller neighbours."""
    writer, groups = files.writer(out), _Groups()
    for u, v in files.read(canonical):
        m, starts = groups(u, v)
        moved = v != m
        writer.add(0, _records(v[moved], m[moved]))  # v > m
        writer.add(0, _records(u[starts], m[starts]))  # u > v >= m
    writer.close()


def star_components(pairs: Iterator[bytes], work: str, buffer_bytes: int) -> tuple[str | None, int]:
    """The components of the edges in `pairs` (blocks of 16-byte records `(a, b)`, a ≠ b, any order).

    Returns the path of a sorted file of `(member, root)` records, one per node but its component's
    smallest (None when there are no edges), and the number of rounds; works in `<work>/00000/`."""
    files = _Pass(work, buffer_bytes)
    writer = files.writer("round0")
    for block in pairs:
        a, b = _edges(np.frombuffer(block, dtype=f"S{EDGE_SIZE}"))
        writer.add(0, _records(np.maximum(a, b), np.minimum(a, b)))
    writer.close()
    if not files.path("round0"):
        return None, 0
    for rounds in range(1, MAX_ROUNDS + 1):
        previous, current = f"round{rounds - 1}", f"round{rounds}"
        _both_directions(files, previous, "adjacency")
        _large_star(files, "adjacency", "large")
        files.remove("adjacency")
        _small_star(files, "large", current)
        files.remove("large")
        converged = filecmp.cmp(files.path(previous)[0], files.path(current)[0], shallow=False)
        files.remove(previous)
        if converged:
            return files.path(current)[0], rounds
    raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds ({work})")
