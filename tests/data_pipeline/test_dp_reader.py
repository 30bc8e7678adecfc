"""Input reading: every malformed-line kind reported with file, line and reason; all input formats."""

import gzip

import orjson
import pytest
import zstandard

from data_pipeline.sample import generate as g
from data_pipeline.steps.reader import InputReader, list_input_files

EXPECTED_REASONS = {  # MALFORMED_LINES key → start of the reported reason
    "invalid JSON": "invalid JSON: ",
    "invalid UTF-8": "invalid UTF-8 at byte 31",
    "missing text": "field 'text' is missing",
    "empty text": "field 'text' is empty",
    "non-string text": "field 'text' is a int",
    "NUL byte": "NUL byte at byte 26",
    "escaped NUL": "NUL character in field 'text'",
    "not an object": "JSON value is list, not an object",
    "oversized": "line is 30026 bytes, over the limit of 20000",
}


def read_all(paths, out, max_doc_bytes=20000):
    reader = InputReader([str(p) for p in paths], str(out), max_doc_bytes=max_doc_bytes)
    docs = list(reader.run(rank=0, world_size=1))
    errors = [orjson.loads(line) for line in (out / "errors" / "00000.jsonl").read_bytes().splitlines()]
    return docs, errors


def test_every_malformed_kind_is_reported_with_file_line_and_reason(tmp_path):
    good = {"id": "ok", "text": "A fine document."}
    lines = [orjson.dumps(good)] + list(g.MALFORMED_LINES.values()) + [b"", orjson.dumps({"id": 5, "text": "x"})]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    docs, errors = read_all([path], tmp_path / "out")
    assert [d.id for d in docs] == ["ok"]
    assert docs[0].metadata["source"] == f"{path}:1"
    assert [e["line"] for e in errors] == list(range(2, len(lines) + 1))
    assert all(e["file"] == str(path) for e in errors)
    for (kind, prefix), error in zip(EXPECTED_REASONS.items(), errors):
        assert error["reason"].startswith(prefix), (kind, error)
    assert errors[-2]["reason"] == "empty line"
    assert errors[-1]["reason"] == "field 'id' is a int, expected a non-empty string"


def test_plain_gzip_and_zstd_jsonl_give_the_same_documents(tmp_path):
    records = [{"id": f"d{i}", "text": f"text {i}", "url": f"https://x.com/{i}"} for i in range(5)]
    records.append({"id": "h", "html": "<p>hi</p>"})
    data = g.jsonl(records)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(data)
    (tmp_path / "in" / "b.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "in" / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    docs, errors = read_all([tmp_path / "in"], tmp_path / "out")
    assert errors == []
    per_file = [[(d.id, d.text, d.metadata.get("url"), d.metadata["is_html"]) for d in docs[i * 6:(i + 1) * 6]]
                for i in range(3)]
    assert per_file[0] == per_file[1] == per_file[2]
    assert per_file[0][-1] == ("h", "<p>hi</p>", None, True)
    assert len({d.metadata["key"] for d in docs}) == 18  # keys are unique across files


def test_warc_response_records_are_numbered_like_lines(tmp_path):
    path = tmp_path / "c.warc.gz"
    g.write_warc(path, [("https://a.com/1", "text/html", "<p>one</p>"), ("https://a.com/logo", "image/png", "PNG")])
    docs, errors = read_all([path], tmp_path / "out")
    assert errors == []
    assert [(d.metadata["source"], d.metadata["url"], d.text) for d in docs] == [
        (f"{path}:1", "https://a.com/1", "<p>one</p>"), (f"{path}:2", "https://a.com/logo", "PNG")]
    assert [d.metadata["content_type"] for d in docs] == ["text/html", "image/png"]


def test_input_paths_that_match_nothing_fail_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        list_input_files([str(tmp_path / "nothing-here")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt"):
        list_input_files([str(tmp_path / "notes.txt")])


def test_a_truncated_compressed_file_is_reported_where_it_breaks(tmp_path):
    records = [{"id": f"d{i}", "text": f"document number {i} " * 50} for i in range(200)]
    data = gzip.compress(g.jsonl(records))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    docs, errors = read_all([path], tmp_path / "out")
    assert [d.id for d in docs] == [f"d{i}" for i in range(len(docs))] and 0 < len(docs) < 200
    assert len(errors) == 1 and errors[0]["line"] == len(docs) + 1
    assert errors[0]["reason"].startswith("unreadable from here on: EOFError")
