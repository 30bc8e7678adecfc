"""Global decisions of the exact and line-level dedups, identical whatever the number of tasks.

`DedupHasher` (in the ingest stage) records each document's key, id, normalized MD5 and edge-line
hashes; `DedupIndex` (a one-task stage) replays all documents in key order, keeps the first of each
MD5 and counts edge lines over the kept ones, and writes the decisions to one JSON file. It holds
one entry per document in memory: fine up to tens of millions of documents per run.
"""

import glob
from collections import Counter

import orjson
from datatrove.data import DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep

from data_pipeline.steps.exact_dedup import exact_hash
from data_pipeline.steps.line_dedup import edge_lines


class DedupHasher(PipelineStep):
    """Passes documents through, writing `{key, id, md5, lines}` per document to `<folder>/<rank>.jsonl`."""

    name = "#️⃣ Dedup hashes"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, edge_lines: int = 5):
        super().__init__()
        self.folder = folder
        self.edge_lines = edge_lines

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with get_datafolder(self.folder).open(f"{rank:05d}.jsonl", "wb") as f:
            for doc in data:
                with self.track_time():
                    record = {
                        "key": doc.metadata["key"],
                        "id": doc.id,
                        "md5": exact_hash(doc.text),
                        "lines": edge_lines(doc.text, self.edge_lines),
                    }
                    f.write(orjson.dumps(record) + b"\n")
                yield doc


class DedupIndex(PipelineStep):
    """Reads every task's hashes and writes `{"exact": {key: kept id}, "lines": {key: [line numbers]}}`."""

    name = "🗂️ Dedup index"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, index_file: str, exact: bool = True, max_line_count: int | None = 200):
        """`exact=False` counts lines over all documents; `max_line_count=None` marks no line."""
        super().__init__()
        self.folder = folder
        self.index_file = index_file
        self.exact = exact
        self.max_line_count = max_line_count

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        if world_size != 1:
            raise ValueError("DedupIndex is a global step: run it with tasks=1")
        with self.track_time():
            self._index()

    def _index(self) -> None:
        records = []
        for path in sorted(glob.glob(f"{self.folder}/*.jsonl")):
            with open(path, "rb") as f:
                records.extend(orjson.loads(line) for line in f)
        records.sort(key=lambda r: r["key"])
        first_of_md5, exact, lines, counts = {}, {}, {}, Counter()
        for r in records:
            kept_key, kept_id = first_of_md5.setdefault(r["md5"], (r["key"], r["id"]))
            if self.exact and kept_key != r["key"]:
                exact[str(r["key"])] = kept_id
                continue
            if self.max_line_count is None:
                continue
            for position, line_hash in r["lines"]:
                counts[line_hash] += 1
                if counts[line_hash] > self.max_line_count:
                    lines.setdefault(str(r["key"]), []).append(position)
        self.stat_update("documents", value=len(records))
        self.stat_update("exact_duplicates", value=len(exact))
        self.stat_update("lines_marked", value=sum(map(len, lines.values())))
        with open(self.index_file, "wb") as f:
            f.write(orjson.dumps({"exact": exact, "lines": lines}))
