"""Stage 4: exact dedup on the MD5 of the normalized text; the decisions come from `DedupIndex`."""

import hashlib

import orjson
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from data_pipeline.text import normalize_for_exact_dedup


def exact_hash(text: str) -> str:
    return hashlib.md5(normalize_for_exact_dedup(text).encode()).hexdigest()


class ExactDedupFilter(BaseFilter):
    """Drops every document whose normalized MD5 was first seen at a smaller key (`duplicate_of` that one)."""

    name = "🎯 Exact dedup"

    def __init__(self, index_file: str, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.index_file = index_file
        self._duplicates = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._duplicates is None:
            with open(self.index_file, "rb") as f:
                self._duplicates = orjson.loads(f.read())["exact"]
        kept_id = self._duplicates.get(str(doc.metadata["key"]))
        if kept_id is None:
            return True
        doc.metadata["duplicate_of"] = kept_id
        return False, "exact_duplicate"
