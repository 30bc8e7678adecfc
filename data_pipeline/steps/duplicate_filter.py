"""Drop the documents a dedup stage marked as duplicates (exact dedup, MinHash)."""

import orjson
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


class DuplicateFilter(BaseFilter):
    """Drops each document whose key the marks file maps to a kept document's id (`duplicate_of`).

    The marks are a JSON object `{key: kept_id}` in `marks_file` (under `section` if given), read
    on first use.
    """

    def __init__(self, marks_file: str, reason: str, name: str, section: str | None = None, exclusion_writer=None):
        self.name = name
        super().__init__(exclusion_writer)
        self.marks_file = marks_file
        self.reason = reason
        self.section = section
        self._duplicates = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._duplicates is None:
            with open(self.marks_file, "rb") as f:
                marks = orjson.loads(f.read())
            self._duplicates = marks[self.section] if self.section else marks
        kept_id = self._duplicates.get(str(doc.metadata["key"]))
        if kept_id is None:
            return True
        doc.metadata["duplicate_of"] = kept_id
        return False, self.reason
