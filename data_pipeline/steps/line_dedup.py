"""Stage 5: line-level dedup of the first and last lines; the decisions come from the dedup index."""

import xxhash
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter

from data_pipeline.sorted_runs import TaskRecords

MARK_SIZE = 12  # the records `LineIndex` lists: key (8 bytes), line number (4), big-endian


def edge_lines(text: str, edge: int) -> list[tuple[int, int]]:
    """(line number, hash) of the first and last `edge` non-blank lines of `text`."""
    lines = text.split("\n")
    positions = [i for i, line in enumerate(lines) if line.strip()]
    chosen = sorted(set(positions[:edge] + positions[-edge:]))
    return [(i, xxhash.xxh3_64_intdigest(lines[i].strip().encode())) for i in chosen]


class LineDedup(BaseFilter):
    """Removes the edge lines `LineIndex` listed for this task (`<folder>/<rank>/`: key, line number).

    Documents left without text are rejected (`line_dedup_empty`).
    """

    name = "✂️ Line dedup"

    def __init__(self, folder: str, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.folder = folder
        self._marks = None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._marks = TaskRecords(self.folder, rank, MARK_SIZE)
        yield from super().run(data, rank, world_size)
        self._marks.finish()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        drop = {int.from_bytes(position, "big") for position in self._marks.pop(doc.metadata["key"])}
        if not drop:
            return True
        lines = doc.text.split("\n")
        before = len(doc.text)
        doc.text = "\n".join(line for i, line in enumerate(lines) if i not in drop).strip()
        self.stat_update("lines_removed", value=len(drop))
        if not doc.text:
            return False, "line_dedup_empty"
        self.stat_update("removed_chars_repeated_edge_lines", value=before - len(doc.text))
        return True
