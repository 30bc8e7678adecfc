"""The one JSONL reader: line numbers, blank lines, bad lines handed to the caller, lazy reading."""

import json

import pytest

from dotsllm.jsonl import read_jsonl


def test_records_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    # CRLF, a raw U+2028 in a string (a line break to str.splitlines), no final newline
    path.write_bytes(b'{"a": 1}\n\n   \n[2, 3]\r\n"x\xe2\x80\xa8y"\n7')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, [2, 3]), (5, "x\u2028y"), (6, 7)]


def test_a_bad_line_is_yielded_as_its_decode_error_and_reading_goes_on(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n\xff\xfe{}\n{"b": 2}\n')
    records = list(read_jsonl(str(path)))
    assert [n for n, _ in records] == [1, 2, 3, 4]
    assert records[0][1] == {"a": 1} and records[3][1] == {"b": 2}
    bad_json, bad_utf8 = records[1][1], records[2][1]
    assert isinstance(bad_json, json.JSONDecodeError) and bad_json.msg == "Expecting value"
    assert isinstance(bad_utf8, json.JSONDecodeError) and bad_utf8.msg.startswith("not UTF-8 (invalid start byte")


def test_a_byte_order_mark_is_allowed_on_the_first_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\xef\xbb\xbf{"a": 2}\n')
    (first, record), (second, error) = read_jsonl(path)
    assert (first, record) == (1, {"a": 1})
    assert second == 2 and isinstance(error, json.JSONDecodeError)


def test_reading_is_lazy(tmp_path):
    path = tmp_path / "a.jsonl"
    records = read_jsonl(path)  # nothing opened yet
    path.write_text('{"a": 1}\n')
    with path.open("a") as f:
        assert next(records) == (1, {"a": 1})
        f.write('{"a": 2}\n')  # appended after the first line was read: still seen
    assert list(records) == [(2, {"a": 2})]
    with pytest.raises(FileNotFoundError):
        next(read_jsonl(tmp_path / "missing.jsonl"))
