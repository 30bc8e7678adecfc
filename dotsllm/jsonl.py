"""The one JSONL reader: ``(line number, record)`` pairs of a file, read lazily, blank lines skipped.

A line that is not JSON (or not UTF-8) comes as ``(line number, json.JSONDecodeError)`` instead of
raising: what a bad line means is the caller's policy (eval tasks and metrics files stop with an error
naming ``file:line``; SFT and GRPO records count it and go on). A JSON value is never a
``JSONDecodeError``, so ``isinstance(record, json.JSONDecodeError)`` tells the two apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["read_jsonl"]


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(number, record)`` of each non-blank line of ``path`` (1-based, counting ``\\n``-ended lines),
    one line in memory at a time; ``record`` is the decoded JSON value or the line's
    ``json.JSONDecodeError`` (whose ``msg`` says why). A UTF-8 byte-order mark is allowed on line 1.
    The file is opened when the iteration starts (a missing file: ``FileNotFoundError`` there)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield number, json.JSONDecodeError(
                    f"not UTF-8 ({e.reason} at byte {e.start})", raw.decode("utf-8", "replace"), e.start
                )
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                record = e
            yield number, record
