"""Drop the documents a dedup stage listed as duplicates (exact dedup, MinHash)."""

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter

from data_pipeline.sorted_runs import TaskRecords


class DuplicateFilter(BaseFilter):
    """Drops each document listed for this task in `<folder>/<rank>/` (records: key, kept document's id),
    with `duplicate_of` the kept id."""

    def __init__(self, folder: str, reason: str, name: str, exclusion_writer=None):
        self.name = name
        super().__init__(exclusion_writer)
        self.folder = folder
        self.reason = reason
        self._duplicates = None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._duplicates = TaskRecords(self.folder, rank)
        yield from super().run(data, rank, world_size)
        self._duplicates.finish()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        kept_id = self._duplicates.pop(doc.metadata["key"])
        if not kept_id:
            return True
        doc.metadata["duplicate_of"] = kept_id[0].decode()
        return False, self.reason
