"""Document keys and task assignment; the output records shared by all steps: rejected documents, errors.

Every document carries `metadata["key"]`, a global position (input file index << 32 | line number)
that does not depend on how files are split across tasks; cross-shard dedup keeps the smallest key.
Task `r` of every per-document stage (ingest, filter, final) handles the input files `task_of_file`
assigns to `r`, in key order, so the dedup stages can route a decision to its task by the key alone.
"""

import orjson
from datatrove.data import Document
from datatrove.io import get_datafolder
from datatrove.pipeline.writers import JsonlWriter

LINE_BITS = 32


def make_key(file_index: int, line: int) -> int:
    return (file_index << LINE_BITS) | line


def task_of_file(file_index: int, tasks: int) -> int:
    return file_index % tasks


def task_of_key(key: int, tasks: int) -> int:
    """The task of every per-document stage that holds the document of `key`."""
    return task_of_file(key >> LINE_BITS, tasks)


class RejectedWriter(JsonlWriter):
    """Writes one `{id, stage, reason[, duplicate_of], source}` record per dropped document."""

    def __init__(self, output_dir: str, stage: str):
        super().__init__(f"{output_dir}/rejected", output_filename=f"{stage}/${{rank}}.jsonl", compression=None)
        self.stage = stage

    def _default_adapter(self, document: Document) -> dict:
        record = {"id": document.id, "stage": self.stage, "reason": document.metadata["filter_reason"]}
        if "duplicate_of" in document.metadata:
            record["duplicate_of"] = document.metadata["duplicate_of"]
        record["source"] = document.metadata["source"]
        return record


class ErrorWriter:
    """Writes one `{file, line, reason}` record per malformed input line to `errors/<rank>.jsonl`."""

    def __init__(self, output_dir: str, rank: int):
        self.file = get_datafolder(f"{output_dir}/errors").open(f"{rank:05d}.jsonl", "wb")

    def write(self, file: str, line: int, reason: str) -> None:
        self.file.write(orjson.dumps({"file": file, "line": line, "reason": reason}) + b"\n")

    def close(self) -> None:
        self.file.close()
