"""Stage 5: line-level dedup of the first and last lines; the decisions come from `DedupIndex`."""

import orjson
import xxhash
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


def edge_lines(text: str, edge: int) -> list[tuple[int, int]]:
    """(line number, hash) of the first and last `edge` non-blank lines of `text`."""
    lines = text.split("\n")
    positions = [i for i, line in enumerate(lines) if line.strip()]
    chosen = sorted(set(positions[:edge] + positions[-edge:]))
    return [(i, xxhash.xxh3_64_intdigest(lines[i].strip().encode())) for i in chosen]


class LineDedup(BaseFilter):
    """Removes the edge lines `DedupIndex` marked as past their first `max_count` occurrences.

    Documents left without text are rejected (`line_dedup_empty`).
    """

    name = "✂️ Line dedup"

    def __init__(self, index_file: str, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.index_file = index_file
        self._drops = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._drops is None:
            with open(self.index_file, "rb") as f:
                self._drops = orjson.loads(f.read())["lines"]
        drop = set(self._drops.get(str(doc.metadata["key"]), ()))
        if not drop:
            return True
        lines = doc.text.split("\n")
        doc.text = "\n".join(line for i, line in enumerate(lines) if i not in drop).strip()
        self.stat_update("lines_removed", value=len(drop))
        return (False, "line_dedup_empty") if not doc.text else True
