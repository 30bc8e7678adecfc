"""Peak memory and throughput of every pipeline stage as the corpus grows: 1×, 4×, 16× a base corpus.

    python bench/bench_dedup_scale.py [--base 20000] [--sizes 1 4 16] [--workdir /tmp/dp-scale-bench]
    python bench/bench_dedup_scale.py --sizes 16 & python bench/bench_dedup_scale.py --sizes 1 4; \
        python bench/bench_dedup_scale.py --report   # the same, two sizes at a time

The base corpus is `--base` generated English documents of ~3 kB with planted duplicates: per 50
documents, one exact copy and one normalized copy of an earlier document, two near-duplicates
(one word in 75 replaced, Jaccard ~0.87) and one document ending with a footer line shared by all
such documents. Every size runs the sample recipe with the same task counts and buffers, so the
dedup index of the larger sizes exceeds its buffer many times over; all English here, so no
language ID, and only the C4 rule filter (it edits text; the per-document rule filters are in
bench_data_pipeline.py), and one tokenizer trained beforehand. Each stage run is its own process:
peak RSS is its high-water mark (VmHWM), throughput is corpus documents per CPU-second of the
stage's tasks (process time, so other load on the machine matters little).
Targets: at 16×, every stage's peak RSS ≤ 1.3× its 1× peak and docs/s/core ≥ 0.9× its 1× rate;
every planted duplicate found at every size.

    python bench/bench_dedup_scale.py --clusters [--cluster-base 65536] [--sizes 1 4 16]

The clustering-heavy case: the MinHash clustering step alone, on the pairs a corpus of `--cluster-base`
× size near-duplicate documents would give (every document in a planted cluster of 2 to 64, each
cluster a random spanning tree plus half as many extra pairs, as LSH bands give), 1,048,576 documents
at 16×; one process per size, a buffer of 4 MiB. Targets: peak RSS at 16× ≤ 1.3× at 1×; the components
equal scipy's in-memory ones and every planted cluster found whole.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "configs/data/sample.yaml"
FOOTER = "Subscribe to the weekly letter of the valley gazette for more stories like this one."
BLOCK = 50  # documents per group of planted duplicates
SETTINGS = [  # the same at every size: task counts and buffers fixed, the data grows
    "tasks=2", "workers=1", "progress=false", "steps.url_filter.enabled=false", "steps.language.enabled=false",
    *(f"steps.quality.{rule}.enabled=false" for rule in ("gopher_quality", "gopher_repetition", "fineweb")),
    "steps.dedup_index.tasks=2", "steps.dedup_index.buffer_bytes=1048576",
    "steps.minhash.bucket_tasks=2", "steps.minhash.buffer_bytes=4194304",
]


def generate(folder: Path, documents: int, seed: int = 0) -> dict:
    """Writes `documents` JSONL records to `folder/input/`; returns the planted duplicates by kind."""
    from collections import deque

    from data_pipeline.sample import generate as g

    rng = random.Random(seed)
    originals = deque(maxlen=1000)  # the recent documents that duplicates copy
    planted = {"exact": {}, "near": {}, "footer": []}
    inputs = folder / "input"
    inputs.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(documents):
        position, doc_id = i % BLOCK, f"d{i:07d}"
        if position < BLOCK - 5 or not originals:
            text = g.english_doc(rng, paragraphs=9)
            originals.append((doc_id, text))
        else:
            original_id, original = rng.choice(originals)
            if position == BLOCK - 5:
                text = original
            elif position == BLOCK - 4:
                text = g.normalized_variant(original)
            elif position < BLOCK - 1:
                text = g.edit_words(original, rng, 75)
            else:
                text = g.english_doc(rng, paragraphs=9) + "\n" + FOOTER
                planted["footer"].append(doc_id)
            if position < BLOCK - 1:
                planted["exact" if position < BLOCK - 3 else "near"][doc_id] = original_id
        records.append({"id": doc_id, "text": text})
        if len(records) == 5000 or i == documents - 1:
            (inputs / f"part-{i // 5000:04d}.jsonl").write_bytes(g.jsonl(records))
            records = []
    return planted


def run_stage(config_path: str, run_name: str) -> None:
    """In the child: runs one stage run's tasks in this process; prints its CPU seconds and peak RSS.

    The peak is this process's VmHWM: a child's rusage maxrss would start from its parent's size.
    """
    from data_pipeline.config import load_config
    from data_pipeline.pipeline import build_stages, make_executor

    config = load_config(config_path)
    stage = next(s for s in build_stages(config) if s.run_name == run_name)
    start = time.process_time()
    make_executor(config, stage).run()
    cpu_s = time.process_time() - start
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    print(json.dumps({"cpu_s": cpu_s, "rss_mb": int(status["VmHWM"].split()[0]) / 1024}))


def measure(config_path: Path) -> dict[str, dict]:
    """Runs every stage in its own process; per stage run: peak RSS (MB) and CPU seconds."""
    from data_pipeline.config import load_config
    from data_pipeline.manifest import write_manifest
    from data_pipeline.pipeline import build_stages

    config = load_config(str(config_path))
    results = {}
    for stage in build_stages(config):
        command = [sys.executable, __file__, "--run-stage", str(config_path), stage.run_name]
        out = subprocess.run(command, stdout=subprocess.PIPE, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        results[stage.run_name] = json.loads(out.stdout)
    results["manifest"] = write_manifest(config, [s.run_name for s in build_stages(config)], 0.0)
    return results


def planted_found(out: Path, planted: dict) -> tuple[int, int]:
    """(found, planted): copies rejected by exact dedup as duplicates of their original; near-duplicates of
    a kept original rejected by MinHash as its duplicates (an original a rule filter dropped has none);
    the footer lines marked past the first `max_count`."""
    rejected = {}
    for path in out.glob("rejected/*/*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            rejected[record["id"]] = record
    kept = {json.loads(line)["id"] for path in out.glob("docs/*.jsonl") for line in path.read_text().splitlines()}
    found = sum(rejected.get(d, {}).get("stage") == "exact_dedup" and rejected[d]["duplicate_of"] == o
                for d, o in planted["exact"].items())
    near = {d: o for d, o in planted["near"].items() if o in kept}
    found += sum(rejected.get(d, {}).get("stage") == "minhash" and rejected[d]["duplicate_of"] == o
                 for d, o in near.items())
    manifest = json.loads((out / "manifest.json").read_text())
    line_index = next(s for s in manifest["stages"]["dedup_index"] if s["step"].endswith("Line index"))
    marks = max(0, len(planted["footer"]) - manifest["config"]["steps"]["line_dedup"]["max_count"])
    found += marks if line_index.get("lines_marked", 0) == marks else 0
    return found, len(planted["exact"]) + len(near) + marks


def generate_pairs(folder: Path, documents: int, seed: int = 0) -> tuple:
    """Writes a pairs folder and an ids file as `MinhashBuckets` and `MinhashSignature` would for planted
    clusters of `documents` keys; returns the keys (sorted) and each one's cluster root (its smallest key)."""
    import numpy as np

    from data_pipeline.sorted_runs import RunWriter, framed, key_bytes

    rng = np.random.default_rng(seed)
    keys = np.sort(rng.choice(1 << 40, documents, replace=False)).astype(np.uint64)
    sizes = rng.integers(2, 65, documents // 2)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), documents)]
    rest = documents - sizes.sum()  # a last cluster, or one more member of the last one
    if rest > 1:
        sizes = np.append(sizes, rest)
    else:
        sizes[-1] += rest
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    members = rng.permutation(documents)  # cluster c: members[starts[c] : starts[c] + sizes[c]] (key indices)
    start, size = np.repeat(starts, sizes), np.repeat(sizes, sizes)
    position = np.arange(documents) - start  # within its cluster
    earlier = start + (rng.random(documents) * position).astype(np.int64)  # a random earlier member
    anyone = start + (rng.random(documents) * size).astype(np.int64)  # a random member
    extra = rng.random(documents) < 0.5
    a = keys[members[np.concatenate([np.flatnonzero(position > 0), np.flatnonzero(extra)])]]
    b = keys[members[np.concatenate([earlier[position > 0], anyone[extra]])]]  # a spanning tree, then extras
    roots = np.empty(documents, dtype=np.uint64)
    roots[members] = keys[np.repeat(np.minimum.reduceat(members, starts), sizes)]
    keep = a != b
    pairs = np.stack([np.minimum(a, b)[keep], np.maximum(a, b)[keep]], axis=1).astype(">u8")
    writer = RunWriter(str(folder / "pairs"), "00000", 64 << 20, record_size=16, unique=True)
    writer.add(0, pairs.tobytes())
    writer.close()
    (folder / "ids").mkdir(parents=True, exist_ok=True)
    (folder / "ids" / "00000.bin").write_bytes(b"".join(framed(key_bytes(int(k)) + f"d{k}".encode()) for k in keys))
    return keys, roots


def run_cluster_step(folder: str) -> None:
    """In the child: the clustering step on `folder`; prints its CPU seconds, peak RSS and stats."""
    from data_pipeline.steps.minhash import MinhashCluster

    step = MinhashCluster(folder, tasks=2, buffer_bytes=4 << 20)
    start = time.process_time()
    step.run(rank=0, world_size=1)
    cpu_s = time.process_time() - start
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    stats = {name: step.stats[name].total for name in ("clusters", "near_duplicates", "component_rounds")}
    print(json.dumps({"cpu_s": cpu_s, "rss_mb": int(status["VmHWM"].split()[0]) / 1024, **stats}))


def clusters_case(workdir: Path, base: int, sizes: list[int]) -> None:
    import glob

    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from data_pipeline.sorted_runs import merge_sorted_blocks, read_records

    rows = {}
    for size in sizes:
        folder = workdir / f"clusters-x{size}"
        subprocess.run(["rm", "-rf", str(folder)], check=True)
        folder.mkdir(parents=True)
        keys, roots = generate_pairs(folder, size * base, seed=size)
        command = [sys.executable, __file__, "--run-cluster-step", str(folder)]
        result = json.loads(subprocess.run(command, stdout=subprocess.PIPE, check=True,
                                           env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout)
        pairs = np.concatenate(list(merge_sorted_blocks(glob.glob(f"{folder}/pairs/*/*.bin"), 16)))
        ends = np.searchsorted(keys, np.frombuffer(pairs.tobytes(), dtype=">u8").astype(np.uint64)).reshape(-1, 2)
        n = len(keys)
        _, labels = connected_components(coo_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(n, n)),
                                         directed=False)
        smallest = np.full(labels.max() + 1, n)
        np.minimum.at(smallest, labels, np.arange(n))
        expected = {int(keys[i]): f"d{keys[smallest[labels[i]]]}" for i in range(n) if smallest[labels[i]] != i}
        got = {}
        for path in glob.glob(f"{folder}/removals/*/*.bin"):
            for record in read_records(path):
                got[int.from_bytes(record[:8], "big")] = record[8:].decode()
        planted = {int(k): f"d{r}" for k, r in zip(keys, roots) if k != r}
        rows[size] = {**result, "nodes": n, "pairs": len(pairs), "equal_to_scipy": got == expected,
                      "planted_found": sum(got.get(k) == r for k, r in planted.items()), "planted": len(planted)}
        print(f"{size}×: {rows[size]}", file=sys.stderr)
    first, last = sizes[0], sizes[-1]
    for size in sizes:
        row = rows[size]
        print(f"{size:>3}×  {row['nodes']:>9,} documents {row['pairs']:>9,} pairs  peak RSS {row['rss_mb']:6.0f} MB  "
              f"{row['nodes'] / row['cpu_s']:9,.0f} docs/s/core  {row['component_rounds']} rounds  "
              f"equal to scipy: {row['equal_to_scipy']}  planted clusters found: "
              f"{row['planted_found']:,}/{row['planted']:,} members")
    print(f"peak RSS {last}×/{first}×: {rows[last]['rss_mb'] / rows[first]['rss_mb']:.2f} (≤ 1.3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=20000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workdir", default="/tmp/dp-scale-bench")
    parser.add_argument("--report", action="store_true", help="only print the table of the sizes measured")
    parser.add_argument("--clusters", action="store_true", help="the clustering-heavy case (see above)")
    parser.add_argument("--cluster-base", type=int, default=65536)
    parser.add_argument("--run-stage", nargs=2, metavar=("CONFIG", "RUN"), help=argparse.SUPPRESS)
    parser.add_argument("--run-cluster-step", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_stage:
        return run_stage(*args.run_stage)
    if args.run_cluster_step:
        return run_cluster_step(args.run_cluster_step)
    workdir = Path(args.workdir)
    if args.clusters:
        return clusters_case(workdir, args.cluster_base, args.sizes)
    if args.report:
        return report({size: json.loads((workdir / f"x{size}" / "results.json").read_text()) for size in args.sizes},
                      args.sizes)

    from omegaconf import OmegaConf

    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = workdir / "tokenizer.model"
    if not tokenizer.exists():  # one tokenizer for every size, so that no size trains its own
        generate(workdir / "tokenizer-sample", 2000, seed=1)
        subprocess.run([sys.executable, "-m", "data_pipeline.cli", "train-tokenizer", str(workdir / "tokenizer-sample"),
                        "--output", str(workdir / "tokenizer"), "--vocab-size", "8192"], check=True)
    rows = {}
    for size in args.sizes:
        folder = workdir / f"x{size}"
        documents = size * args.base
        planted = generate(folder, documents)
        config = folder / "config.yaml"
        overrides = SETTINGS + [f"input.paths=[{folder}/input]", f"output_dir={folder}/out",
                                f"steps.tokenize.tokenizer={tokenizer}"]
        OmegaConf.save(OmegaConf.merge(OmegaConf.load(SAMPLE), OmegaConf.from_dotlist(overrides)), config)
        results = measure(config)
        manifest = results.pop("manifest")
        assert manifest["totals"]["balanced"], manifest["totals"]
        rows[size] = {"documents": documents, "stages": results, "planted": planted_found(folder / "out", planted)}
        (folder / "results.json").write_text(json.dumps(rows[size], indent=1))
        print(f"{size}×: {documents} documents done", file=sys.stderr)
    report(rows, args.sizes)


def report(rows: dict, sizes: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    first, last = sizes[0], sizes[-1]
    table = Table(title=f"peak RSS (MB) and docs/s/core per stage; {rows[first]['documents']:,} documents at {first}×")
    table.add_column("stage")
    for size in sizes:
        table.add_column(f"{size}× RSS", justify="right")
        table.add_column(f"{size}× docs/s/core", justify="right")
    table.add_column(f"RSS {last}×/{first}×", justify="right")
    table.add_column(f"docs/s/core {last}×/{first}×", justify="right")
    for run in rows[first]["stages"]:
        cells, rate = [], {}
        for size in sizes:
            stage = rows[size]["stages"][run]
            rate[size] = rows[size]["documents"] / stage["cpu_s"]
            cells += [f"{stage['rss_mb']:,.0f}", f"{rate[size]:,.0f}"]
        rss = rows[last]["stages"][run]["rss_mb"] / rows[first]["stages"][run]["rss_mb"]
        table.add_row(run, *cells, f"{rss:.2f} (≤ 1.3)", f"{rate[last] / rate[first]:.2f} (≥ 0.9)")
    planted = "  ".join(f"{size}×: {rows[size]['planted'][0]:,}/{rows[size]['planted'][1]:,}" for size in sizes)
    console = Console()
    console.print(table)
    console.print(f"planted duplicates found: {planted}")


if __name__ == "__main__":
    main()
