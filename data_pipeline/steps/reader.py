"""Input step: JSON Lines (plain, .gz, .zst) and WARC files → documents; malformed lines → `errors/`."""

import glob
import io
import os
from collections.abc import Iterator

import fsspec
import orjson
import zstandard
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_pipeline.records import ErrorWriter, make_key, task_of_file

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst")
WARC_SUFFIXES = (".warc", ".warc.gz")


def list_input_files(paths: list[str]) -> list[str]:
    """Input files named by `paths` (files, directories searched recursively, or globs), sorted."""
    files = set()
    for path in paths:
        matches = glob.glob(path, recursive=True) if glob.has_magic(path) else [path] * os.path.exists(path)
        if not matches:
            raise FileNotFoundError(f"input path {path!r} matches no file")
        for match in matches:
            if os.path.isdir(match):
                candidates = glob.glob(os.path.join(match, "**", "*"), recursive=True)
                files.update(c for c in candidates if c.endswith(JSONL_SUFFIXES + WARC_SUFFIXES))
            elif match.endswith(JSONL_SUFFIXES + WARC_SUFFIXES):
                files.add(match)
            else:
                raise ValueError(f"input file {match!r} is neither JSON Lines ({JSONL_SUFFIXES}) nor WARC")
    if not files:
        raise FileNotFoundError(f"no JSON Lines or WARC file under {paths}")
    return sorted(files)


def parse_jsonl_line(line: bytes, max_doc_bytes: int) -> tuple[dict | None, str | None]:
    """(fields, None) for a valid document line, (None, reason) for a malformed one."""
    line = line.rstrip(b"\r\n")
    if not line.strip():
        return None, "empty line"
    if len(line) > max_doc_bytes:
        return None, f"line is {len(line)} bytes, over the limit of {max_doc_bytes} (input.max_doc_bytes)"
    if (nul := line.find(b"\x00")) >= 0:
        return None, f"NUL byte at byte {nul}"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 at byte {e.start}"
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        return None, f"invalid JSON: {e}"
    if not isinstance(obj, dict):
        return None, f"JSON value is {type(obj).__name__}, not an object"
    if not isinstance(obj.get("id"), str) or not obj["id"]:
        return None, f"field 'id' is {_describe(obj.get('id'))}, expected a non-empty string"
    field = "text" if "text" in obj or "html" not in obj else "html"
    body = obj.get(field)
    if not isinstance(body, str) or not body.strip():
        return None, f"field '{field}' is {_describe(body)}, expected a non-empty string"
    if "\x00" in body:
        return None, f"NUL character in field '{field}'"
    if "url" in obj and not isinstance(obj["url"], str):
        return None, f"field 'url' is {_describe(obj['url'])}, expected a string"
    return {"id": obj["id"], "url": obj.get("url"), "body": body, "is_html": field == "html"}, None


def _describe(value) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        return "empty" if not value.strip() else "a string"
    return f"a {type(value).__name__}"


class InputReader(PipelineStep):
    """Reads this task's share of the input files; every line becomes a document or an error record.

    datatrove's JsonlReader/WarcReader skip bad lines with a log message, and its WARC reader drops
    non-HTML responses silently; the accounting invariant needs every line reported, hence this reader.
    """

    name = "📖 Input"
    type = "📖 - READER"

    def __init__(self, paths: list[str], output_dir: str, max_doc_bytes: int = 1 << 20):
        super().__init__()
        self.paths = paths
        self.output_dir = output_dir
        self.max_doc_bytes = max_doc_bytes

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        files = list_input_files(self.paths)
        errors = ErrorWriter(self.output_dir, rank)
        try:
            for index, path in enumerate(files):
                if task_of_file(index, world_size) == rank:
                    read = self._read_warc if path.endswith(WARC_SUFFIXES) else self._read_jsonl
                    yield from read(path, index, errors)
        finally:
            errors.close()

    def _read_jsonl(self, path: str, index: int, errors: ErrorWriter) -> Iterator[Document]:
        number = 0
        try:
            with fsspec.open(path, "rb", compression="infer") as f:
                for number, line in enumerate(io.BufferedReader(f), start=1):  # zstd readers don't iterate lines
                    self.stat_update("input_lines")
                    self.stat_update("input_bytes", value=len(line), unit="line")
                    fields, reason = parse_jsonl_line(line, self.max_doc_bytes)
                    if reason:
                        self._error(errors, path, number, reason)
                        continue
                    yield self._document(fields, path, index, number)
        except (OSError, EOFError, zstandard.ZstdError) as e:  # truncated or corrupt compressed file
            self.stat_update("input_lines")
            self._error(errors, path, number + 1, f"unreadable from here on: {type(e).__name__}: {e}")

    def _error(self, errors: ErrorWriter, path: str, number: int, reason: str) -> None:
        self.stat_update("errors")
        errors.write(path, number, reason)

    def _read_warc(self, path: str, index: int, errors: ErrorWriter) -> Iterator[Document]:
        """WARC response records, numbered from 1 in file order, stand in for lines."""
        from warcio.archiveiterator import ArchiveIterator
        from warcio.exceptions import ArchiveLoadFailed

        number = 0
        try:
            with open(path, "rb") as f:
                for record in ArchiveIterator(f):
                    if record.rec_type != "response":
                        continue
                    number += 1
                    self.stat_update("input_lines")
                    doc = self._warc_document(record, path, index, number, errors)
                    if doc is not None:
                        yield doc
        except (OSError, EOFError, ArchiveLoadFailed) as e:  # truncated or corrupt file
            self.stat_update("input_lines")
            self._error(errors, path, number + 1, f"unreadable from here on: {type(e).__name__}: {e}")

    def _warc_document(self, record, path: str, index: int, number: int, errors: ErrorWriter) -> Document | None:
        content_type = record.http_headers.get_header("Content-Type", "") if record.http_headers else ""
        payload = record.content_stream().read()
        self.stat_update("input_bytes", value=len(payload), unit="line")
        if len(payload) > self.max_doc_bytes:
            self._error(errors, path, number, f"record is {len(payload)} bytes, over the limit of {self.max_doc_bytes}")
            return None
        if b"\x00" in payload:
            self._error(errors, path, number, "NUL byte in the record's payload")
            return None
        charset = content_type.partition("charset=")[2].split(";")[0].strip() or "utf-8"
        try:
            html = payload.decode(charset, errors="replace")
        except LookupError:  # an unknown charset name
            html = payload.decode("utf-8", errors="replace")
        record_id = record.rec_headers.get_header("WARC-Record-ID") or f"{path}:{number}"
        url = record.rec_headers.get_header("WARC-Target-URI")
        fields = {"id": record_id, "url": url, "body": html, "is_html": True, "content_type": content_type}
        return self._document(fields, path, index, number)

    def _document(self, fields: dict, path: str, index: int, number: int) -> Document:
        self.stat_update("documents")
        metadata = {"key": make_key(index, number), "source": f"{path}:{number}", "is_html": fields["is_html"]}
        if fields.get("url"):
            metadata["url"] = fields["url"]
        if "content_type" in fields:
            metadata["content_type"] = fields["content_type"]
        return Document(text=fields["body"], id=fields["id"], metadata=metadata)


def iter_texts(paths: list[str], max_doc_bytes: int = 1 << 20) -> Iterator[str]:
    """The `text` of every valid JSON Lines document under `paths` (for tokenizer training)."""
    for path in list_input_files(paths):
        if path.endswith(WARC_SUFFIXES):
            continue
        with fsspec.open(path, "rb", compression="infer") as f:
            for line in io.BufferedReader(f):
                fields, _ = parse_jsonl_line(line, max_doc_bytes)
                if fields and not fields["is_html"]:
                    yield fields["body"]
