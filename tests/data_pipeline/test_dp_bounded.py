"""Dedup in bounded memory: sorted runs spilled and merged, the cluster join, and whole runs whose index
exceeds its buffer giving the outputs of an unbounded run byte for byte."""

import random

import numpy as np
import pytest
from conftest import run_planted
from dp_planted import outputs
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from data_pipeline.records import task_of_key
from data_pipeline.sorted_runs import RunWriter, TaskRecords, framed, key_bytes, merge_sorted, partition_files
from data_pipeline.steps.minhash import MinhashCluster

OUTPUTS = ("docs/*.jsonl", "tokens/*", "errors/*.jsonl", "rejected/*/*.jsonl", "tokenizer.vocab")


def _files(out, pattern):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob(pattern))}


@pytest.mark.parametrize("record_size", [None, 12])
def test_runs_spilled_by_several_writers_merge_into_one_sorted_stream(tmp_path, record_size):
    rng = random.Random(0)
    records = [rng.randbytes(record_size or rng.randrange(0, 40)) for _ in range(3000)]
    records += records[:300]  # equal records, also across writers
    for unique in (False, True):
        folder = tmp_path / f"runs-{unique}"
        writers = [RunWriter(str(folder), f"{w:05d}", 1024, record_size, unique) for w in range(3)]
        for i, record in enumerate(records):
            writers[i % 3].add(i % 2, record)
        for writer in writers:
            writer.close()
            assert writer.runs > 10  # 1 kB of records held at most
        assert sum(w.records for w in writers) == len(records)
        for partition in (0, 1):
            files = partition_files(str(folder), partition)
            assert [f.rsplit("/", 1)[1] for f in files] == ["00000.bin", "00001.bin", "00002.bin"]
            expected = sorted(records[partition::2])
            if unique:
                expected = sorted(set(expected))
            assert list(merge_sorted(files, record_size, unique=unique)) == expected


def test_a_writer_run_again_replaces_the_files_of_its_earlier_attempt(tmp_path):
    first = RunWriter(str(tmp_path), "00003", 64)
    for partition in range(3):
        first.add(partition, b"old")
    first.close()
    again = RunWriter(str(tmp_path), "00003", 64)
    again.add(1, b"new")
    again.close()
    assert [list(merge_sorted(partition_files(str(tmp_path), p))) for p in range(3)] == [[], [b"new"], []]


def test_task_records_come_out_with_their_documents_and_stray_records_are_named(tmp_path):
    writer = RunWriter(str(tmp_path), "00000", 1 << 20)
    for key, payload in ((9, b"i"), (3, b"c"), (5, b"e2"), (5, b"e1")):
        writer.add(0, key_bytes(key) + payload)
    writer.close()
    records = TaskRecords(str(tmp_path), 0)
    assert [records.pop(k) for k in (1, 3, 5, 7)] == [[], [b"c"], [b"e1", b"e2"], []]
    with pytest.raises(ValueError, match="document key 9, which is not among this task's documents"):
        records.finish()
    with pytest.raises(ValueError, match="document key 3, which is not among"):
        TaskRecords(str(tmp_path), 0).pop(4)
    records = TaskRecords(str(tmp_path), 0)
    records.pop(3)
    with pytest.raises(ValueError, match="document key 2 came after key 3"):
        records.pop(2)


def test_cluster_removes_every_member_but_each_components_smallest_key(tmp_path):
    rng = random.Random(1)
    keys = sorted(rng.sample(range(1, 1 << 36), 600))
    pairs = {tuple(sorted(rng.sample(keys[:300], 2))) for _ in range(250)}  # the rest have no near-duplicate
    tasks = 3
    results = {}
    for buffer_bytes in (64, 1 << 30):
        folder = tmp_path / str(buffer_bytes)
        for bucket in range(2):  # two bucket tasks, most pairs found by both
            writer = RunWriter(f"{folder}/pairs", f"{bucket:05d}", 1 << 20, 16, unique=True)
            for a, b in pairs:
                if bucket == 0 or rng.random() < 0.7:
                    writer.add(0, key_bytes(a) + key_bytes(b))
            writer.close()
        (folder / "ids").mkdir()
        for rank in range(tasks):
            ids = b"".join(framed(key_bytes(k) + f"doc-{k}".encode()) for k in keys if task_of_key(k, tasks) == rank)
            (folder / "ids" / f"{rank:05d}.bin").write_bytes(ids)
        cluster = MinhashCluster(str(folder), tasks, buffer_bytes)
        cluster.run()
        results[buffer_bytes] = [_files(folder / "removals", f"{rank:05d}/*") for rank in range(tasks)]

    nodes = np.unique(np.array(sorted(pairs)))
    edges = np.searchsorted(nodes, np.array(sorted(pairs)))
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    root = {label: nodes[labels == label].min() for label in np.unique(labels)}
    expected = {int(k): f"doc-{root[label]}" for k, label in zip(nodes, labels) if k != root[label]}
    found = {}
    for rank in range(tasks):
        records = list(merge_sorted(partition_files(str(tmp_path / "64" / "removals"), rank)))
        assert records == sorted(records)
        for record in records:
            key = int.from_bytes(record[:8], "big")
            assert task_of_key(key, tasks) == rank
            found[key] = record[8:].decode()
    assert found == expected and len(expected) > 100
    assert results[64] == results[1 << 30]


def test_small_buffers_and_other_task_counts_give_the_unbounded_outputs(planted, planted_run):
    buffers = {"dedup_index": 512, "minhash": 16384}
    out = run_planted(planted[0], "bounded", [
        "steps.dedup_index.tasks=3", f"steps.dedup_index.buffer_bytes={buffers['dedup_index']}",
        "steps.minhash.bucket_tasks=3", f"steps.minhash.buffer_bytes={buffers['minhash']}"])
    work = out / "work"
    for folder, buffer in (("dedup/documents", buffers["dedup_index"]), ("dedup/lines", buffers["dedup_index"]),
                           ("minhash/bands", buffers["minhash"])):
        files = list((work / folder).glob("*/*.bin"))
        assert sum(f.stat().st_size for f in files) > 4 * buffer, folder  # the index would not fit the buffer
    runs = {step["step"]: step["sorted_runs"] for steps in outputs(out)["manifest"]["stages"].values()
            for step in steps if "sorted_runs" in step}
    # each writer spilled several runs per partition, then merged them into one file
    assert runs["🫂 - DEDUP: #️⃣ Dedup hashes"] > len(list((work / "dedup/documents").glob("*/*.bin")))
    assert runs["🫂 - DEDUP: 🗂️ Exact index"] > len(list((work / "dedup/lines").glob("*/*.bin")))
    assert runs["🫂 - DEDUP: 🎯 MinHash signatures"] > len(list((work / "minhash/bands").glob("*/*.bin")))

    assert all(_files(planted_run, pattern) for pattern in OUTPUTS)
    for pattern in OUTPUTS:
        assert _files(out, pattern) == _files(planted_run, pattern), pattern
    assert outputs(out)["manifest"]["totals"] == outputs(planted_run)["manifest"]["totals"]
