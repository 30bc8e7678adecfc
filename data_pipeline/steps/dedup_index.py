"""Global decisions of the exact and line-level dedups, identical whatever the number of tasks.

Three steps over sorted files (`data_pipeline.sorted_runs`), each task holding at most `buffer_bytes`:
- `DedupHasher` (ingest, per task) writes one record per document, partitioned by the MD5 of its
  normalized text: `(md5, fails, key, edge lines, id)`, sorted by `(md5, fails, key)`; `fails` is 1
  when the document fails one of the rule filters the filter stage will run (checked here on a copy).
- `ExactIndex` (dedup_index, one task per MD5 partition) keeps, of each MD5, the smallest key among the
  documents that pass the rule filters (the smallest key of all when none does), so a clean copy is
  not dropped for a copy the filters then drop; it lists every other document for its filter task with
  the kept id, and passes the edge lines of the kept documents on to the line index, partitioned by
  line hash, as `(line hash, key, position)`.
- `LineIndex` (dedup_index, one task per line-hash partition) counts each line's occurrences in key
  order and lists `(key, position)` past the first `max_count` for its filter task.
Line counts run over the documents exact dedup keeps, hence the two passes. The filter stage's
`DuplicateFilter` and `LineDedup` read their task's lists as its documents stream by. The rule filters
are checked on the ingested text; the filter stage runs them after line dedup, which can only remove
boilerplate lines, so a kept copy that passed here can still fail there when those lines carried it.
"""

import struct

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.base import PipelineStep

from data_pipeline.records import task_of_key
from data_pipeline.sorted_runs import RunWriter, key_bytes, key_of, merge_sorted, partition_files
from data_pipeline.steps.exact_dedup import exact_hash
from data_pipeline.steps.line_dedup import MARK_SIZE, edge_lines

_DOCUMENT = struct.Struct(">16sB8sH")  # md5, fails a rule filter, key, number of edge lines; the lines; the id
_EDGE_LINE = struct.Struct(">IQ")  # position, hash
_LINE = struct.Struct(">Q8sI")  # line hash, key, position: sorted, a line's occurrences in key order


def _check_tasks(step: PipelineStep, world_size: int, partitions: int) -> None:
    if world_size != partitions:
        raise ValueError(f"{step.name}: run with {partitions} tasks (steps.dedup_index.tasks), not {world_size}")


class DedupHasher(PipelineStep):
    """Passes documents through, writing each one's dedup record to `<folder>/documents/<md5 partition>/`."""

    name = "#️⃣ Dedup hashes"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, partitions: int, buffer_bytes: int, edge_lines: int | None = 5,
                 rule_filters: list[BaseFilter] = ()):
        """`edge_lines` None: no line dedup, the records carry no lines. `rule_filters`: the filter stage's
        rule filters (other instances, without exclusion writers), in its order."""
        super().__init__()
        self.folder = folder
        self.partitions = partitions
        self.buffer_bytes = buffer_bytes
        self.edge_lines = edge_lines
        self.rule_filters = list(rule_filters)

    def fails_a_rule_filter(self, doc: Document) -> bool:
        """Whether the rule filters, run in order on a copy of `doc` (the C4 filter edits text), drop it."""
        probe = Document(text=doc.text, id=doc.id, metadata=dict(doc.metadata))
        return any(rule.filter(probe) is not True for rule in self.rule_filters)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        runs = RunWriter(f"{self.folder}/documents", f"{rank:05d}", self.buffer_bytes)
        failing = 0
        for doc in data:
            with self.track_time():
                digest = exact_hash(doc.text)
                lines = edge_lines(doc.text, self.edge_lines) if self.edge_lines is not None else []
                fails = self.fails_a_rule_filter(doc)
                failing += fails
                record = (_DOCUMENT.pack(digest, fails, key_bytes(doc.metadata["key"]), len(lines))
                          + b"".join(_EDGE_LINE.pack(*line) for line in lines) + doc.id.encode())
                runs.add(int.from_bytes(digest[:8], "big") % self.partitions, record)
            yield doc
        runs.close()
        self.stat_update("sorted_runs", value=runs.runs)
        self.stat_update("failing_rule_filters", value=failing)


class ExactIndex(PipelineStep):
    """For its MD5 partition: `<folder>/exact/<filter task>/` lists `(key, kept id)` of exact duplicates,
    `<folder>/lines/<line partition>/` receives the kept documents' edge lines."""

    name = "🗂️ Exact index"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, tasks: int, partitions: int, buffer_bytes: int, exact: bool = True,
                 lines: bool = True):
        """`tasks`: of the filter stage; `exact=False` passes every document's lines on; `lines=False` none."""
        super().__init__()
        self.folder = folder
        self.tasks = tasks
        self.partitions = partitions
        self.buffer_bytes = buffer_bytes
        self.exact = exact
        self.lines = lines

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        _check_tasks(self, world_size, self.partitions)
        buffer = self.buffer_bytes // 2  # each writer's share
        duplicates = RunWriter(f"{self.folder}/exact", f"{rank:05d}", buffer)
        lines = RunWriter(f"{self.folder}/lines", f"{rank:05d}", buffer, record_size=_LINE.size)
        kept_md5 = kept_id = None
        documents = no_copy_passes = 0
        with self.track_time():
            for documents, record in enumerate(
                    merge_sorted(partition_files(f"{self.folder}/documents", rank), None, self.buffer_bytes), 1):
                md5, fails, key, n_lines = _DOCUMENT.unpack_from(record)
                lines_end = _DOCUMENT.size + n_lines * _EDGE_LINE.size
                if md5 != kept_md5:  # the first of its MD5: the smallest key of those that pass, if any does
                    kept_md5, kept_id, kept_fails = md5, record[lines_end:], fails
                elif self.exact:
                    duplicates.add(task_of_key(key_of(key), self.tasks), key + kept_id)
                    no_copy_passes += kept_fails
                    continue
                if self.lines:
                    for position, line_hash in _EDGE_LINE.iter_unpack(record[_DOCUMENT.size : lines_end]):
                        lines.add(line_hash % self.partitions, _LINE.pack(line_hash, key, position))
            duplicates.close()
            lines.close()
        self.stat_update("documents", value=documents)
        self.stat_update("exact_duplicates", value=duplicates.records)
        self.stat_update("exact_duplicates_no_copy_passes", value=no_copy_passes)  # of groups all failing
        self.stat_update("sorted_runs", value=duplicates.runs + lines.runs)


class LineIndex(PipelineStep):
    """For its line-hash partition: `<folder>/marks/<filter task>/` lists `(key, position)` of the edge lines
    past their first `max_count` occurrences (in key order, over the documents exact dedup kept)."""

    name = "🗂️ Line index"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, tasks: int, partitions: int, buffer_bytes: int, max_count: int = 200):
        super().__init__()
        self.folder = folder
        self.tasks = tasks
        self.partitions = partitions
        self.buffer_bytes = buffer_bytes
        self.max_count = max_count

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        _check_tasks(self, world_size, self.partitions)
        marks = RunWriter(f"{self.folder}/marks", f"{rank:05d}", self.buffer_bytes // 2, record_size=MARK_SIZE)
        line, count = None, 0
        occurrences = 0
        with self.track_time():
            for occurrences, record in enumerate(
                    merge_sorted(partition_files(f"{self.folder}/lines", rank), _LINE.size, self.buffer_bytes), 1):
                if record[:8] != line:
                    line, count = record[:8], 0
                count += 1
                if count > self.max_count:
                    marks.add(task_of_key(key_of(record[8:]), self.tasks), record[8:])
            marks.close()
        self.stat_update("edge_lines", value=occurrences)
        self.stat_update("lines_marked", value=marks.records)
        self.stat_update("sorted_runs", value=marks.runs)
