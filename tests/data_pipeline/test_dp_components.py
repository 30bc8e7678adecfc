"""Out-of-core connected components (`data_pipeline.connected_components`) equal scipy's in-memory ones."""

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from data_pipeline.connected_components import star_components
from data_pipeline.sorted_runs import merge_sorted_blocks


def reference(edges: np.ndarray) -> dict[int, int]:
    """member → its component's smallest key, for every key in an edge but the roots (scipy)."""
    keys, ends = np.unique(edges, return_inverse=True)
    ends = ends.reshape(-1, 2)
    n = len(keys)
    graph = coo_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    root = np.full(labels.max() + 1, n)
    np.minimum.at(root, labels, np.arange(n))
    return {int(keys[i]): int(keys[root[labels[i]]]) for i in range(n) if root[labels[i]] != i}


def computed(edges: np.ndarray, work, buffer_bytes: int) -> tuple[dict[int, int], int]:
    blocks = [edges[i : i + 50].astype(">u8").tobytes() for i in range(0, len(edges), 50)]
    path, rounds = star_components(iter(blocks), str(work), buffer_bytes)
    if path is None:
        return {}, rounds
    out = {}
    for block in merge_sorted_blocks([path], 16):
        pairs = np.frombuffer(block.tobytes(), dtype=">u8").reshape(-1, 2)
        out.update((int(m), int(r)) for m, r in pairs)
    return out, rounds


def graphs():
    rng = np.random.default_rng(0)
    keys = rng.choice(1 << 40, 3000, replace=False).astype(np.uint64)  # keys far apart, not node indices
    chain = np.stack([keys[:400][::-1][:-1], keys[:400][::-1][1:]], axis=1)  # a 400-node path, largest first
    star = np.stack([np.full(300, keys[400]), keys[401:701]], axis=1)
    hub = np.stack([keys[701:1000], np.full(299, keys[1999])], axis=1)  # the centre is the largest key
    random_pairs = keys[1000:1600][rng.integers(0, 600, (900, 2))]
    random_pairs = random_pairs[random_pairs[:, 0] != random_pairs[:, 1]]
    both = np.concatenate([chain, star, hub, random_pairs, random_pairs[::7, ::-1]])  # some edges twice
    return {"chain": chain, "star": star, "hub": hub, "random": random_pairs,
            "all, shuffled": both[rng.permutation(len(both))]}


@pytest.mark.parametrize("name", list(graphs()))
def test_components_equal_scipys_with_a_buffer_far_smaller_than_the_graph(name, tmp_path):
    edges = graphs()[name]
    expected = reference(edges)
    got, rounds = computed(edges, tmp_path / "work", buffer_bytes=4096)  # a few hundred edges a run
    assert got == expected
    assert rounds >= 1
    assert [p.name for p in (tmp_path / "work" / "00000").iterdir()] == [f"round{rounds}.bin"]  # the rest removed


def test_a_large_buffer_gives_the_same_components(tmp_path):
    edges = graphs()["all, shuffled"]
    assert computed(edges, tmp_path / "a", 4096)[0] == computed(edges, tmp_path / "b", 64 << 20)[0]


def test_no_edges_no_components(tmp_path):
    assert star_components(iter([]), str(tmp_path), 4096) == (None, 0)


def test_block_merge_equals_a_sort_of_all_records(tmp_path):
    from data_pipeline.sorted_runs import RunWriter

    rng = np.random.default_rng(1)
    records = rng.integers(0, 50, (5000, 2)).astype(">u8")  # many equal records, across runs and blocks
    writer = RunWriter(str(tmp_path), "w", 2048, record_size=16)
    writer.add(0, records.tobytes())
    writer.close()
    writer2 = RunWriter(str(tmp_path), "x", 1024, record_size=16)
    writer2.add(0, records[::3].tobytes())
    writer2.close()
    paths = sorted(str(p) for p in (tmp_path / "00000").glob("*.bin"))
    every = np.sort(np.frombuffer(records.tobytes() + records[::3].tobytes(), dtype="S16"))
    merged = np.concatenate(list(merge_sorted_blocks(paths, 16, buffer_bytes=1 << 16)))
    assert merged.tobytes() == every.tobytes()
    unique = np.concatenate(list(merge_sorted_blocks(paths, 16, buffer_bytes=1 << 16, unique=True)))
    assert unique.tobytes() == np.unique(every).tobytes()
