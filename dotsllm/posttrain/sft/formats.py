"""SFT records in OpenAI ``messages``, ShareGPT ``conversations`` or alpaca form → conversations.

Records come from a JSONL file or any ``datasets`` dataset (a ``save_to_disk`` folder, a local
dataset folder or file that ``load_dataset`` reads, or a hub name). The form is detected per record
from its fields (renamed by a :class:`FieldMap`). A malformed record is not an exception: it is a
:class:`Rejected` with its source, line (1-based; the row number for a dataset) and reason, which the
caller counts and writes to the errors file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotsllm.jsonl import read_jsonl
from dotsllm.chat_template import Message

# ShareGPT's ``from`` values (and OpenAI's roles) → template roles
ROLE_NAMES = {
    "system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
    "model": "assistant", "bot": "assistant",
}  # fmt: skip


@dataclass(frozen=True)
class FieldMap:
    """Where a record keeps each field, when not under the standard name."""

    messages: str = "messages"  # OpenAI: [{role, content}, ...]
    role: str = "role"
    content: str = "content"
    conversations: str = "conversations"  # ShareGPT: [{from, value}, ...]
    sharegpt_role: str = "from"
    sharegpt_content: str = "value"
    instruction: str = "instruction"  # alpaca
    input: str = "input"
    output: str = "output"
    system: str = "system"  # alpaca's and ShareGPT's optional system prompt


@dataclass(frozen=True)
class Rejected:
    source: str
    line: int
    reason: str  # a short kind (bad_json, missing_role, ...) then ": " and the detail

    @property
    def kind(self) -> str:
        return self.reason.split(":", 1)[0]

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "reason": self.reason}


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    source: str
    line: int


def read_records(path: str) -> Iterator[tuple[int, Any]]:
    """(line, record) of a JSONL file, or (row, record) of a ``datasets`` dataset; a line that is not
    JSON comes as ``(line, Rejected)``."""
    local = Path(path)
    if local.is_file() and local.suffix == ".jsonl":
        for number, record in read_jsonl(local):
            bad = isinstance(record, json.JSONDecodeError)
            yield number, Rejected(path, number, f"bad_json: {record}") if bad else record
        return
    yield from enumerate(_load_dataset(path), start=1)


def _load_dataset(path: str):
    import datasets

    if (Path(path) / "dataset_info.json").is_file() or (Path(path) / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(path)
    else:
        loaded = datasets.load_dataset(path)
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ValueError(f"{path}: a dataset with splits {list(loaded)} and no 'train' split")
        loaded = loaded["train"]
    return loaded


def to_conversation(record: Any, source: str, line: int, fields: FieldMap = FieldMap()) -> Conversation | Rejected:
    """The conversation of one record, or why it is rejected."""

    def reject(reason: str) -> Rejected:
        return Rejected(source, line, reason)

    if isinstance(record, Rejected):
        return record
    if not isinstance(record, dict):
        return reject(f"bad_record: expected a JSON object, got {type(record).__name__}")
    if fields.messages in record:
        turns = record[fields.messages]
        messages, error = _turns(turns, fields.role, fields.content, fields.messages)
    elif fields.conversations in record:
        turns = record[fields.conversations]
        messages, error = _turns(turns, fields.sharegpt_role, fields.sharegpt_content, fields.conversations)
        if messages is not None and isinstance(record.get(fields.system), str) and record[fields.system]:
            messages.insert(0, Message("system", record[fields.system]))
    elif fields.instruction in record or fields.output in record:
        messages, error = _alpaca(record, fields)
    else:
        return reject(
            f"unknown_format: none of the fields {fields.messages!r}, {fields.conversations!r}, "
            f"{fields.instruction!r}/{fields.output!r}"
        )
    if error:
        return reject(error)
    if error := check_turns(messages):
        return reject(error)
    return Conversation(tuple(messages), source, line)


def _turns(turns: Any, role_key: str, content_key: str, name: str) -> tuple[list[Message] | None, str | None]:
    if not isinstance(turns, list):
        return None, f"bad_record: {name!r} is not a list"
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn:
            return None, f"missing_role: turn {i} has no {role_key!r}"
        role = ROLE_NAMES.get(str(turn[role_key]).lower())
        if role is None:
            return None, f"unknown_role: turn {i} has role {turn[role_key]!r}"
        content = turn.get(content_key)
        if not isinstance(content, str):
            return None, f"bad_record: turn {i} has no string {content_key!r}"
        messages.append(Message(role, content))
    return messages, None


def _alpaca(record: dict, fields: FieldMap) -> tuple[list[Message] | None, str | None]:
    instruction, extra, output = (record.get(k) for k in (fields.instruction, fields.input, fields.output))
    if not isinstance(instruction, str) or not instruction.strip():
        return None, f"missing_role: no {fields.instruction!r} (the user turn)"
    if not isinstance(output, str):
        return None, f"missing_role: no {fields.output!r} (the assistant turn)"
    user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
    messages = [Message("user", user), Message("assistant", output)]
    if isinstance(record.get(fields.system), str) and record[fields.system]:
        messages.insert(0, Message("system", record[fields.system]))
    return messages, None


def check_turns(messages: list[Message]) -> str | None:
    """Why ``messages`` cannot be trained on, or None: an optional system message first, then user and
    assistant turns alternating, starting with the user and ending with a non-empty assistant turn."""
    turns = messages[1:] if messages and messages[0].role == "system" else messages
    if not any(m.role == "user" for m in turns) or not any(m.role == "assistant" for m in turns):
        return "missing_role: needs a user and an assistant turn"
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.role != expected:
            return f"bad_turn_order: turn {i} is {message.role!r}, expected {expected!r}"
        if message.role == "assistant" and not message.content.strip():
            return f"empty_assistant: turn {i} is empty"
    if turns[-1].role != "assistant":
        return "bad_turn_order: the last turn is not the assistant's"
    return None
