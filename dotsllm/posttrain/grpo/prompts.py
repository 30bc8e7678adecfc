"""GRPO's prompts: records read from JSONL or a ``datasets`` dataset, rendered with the chat template,
and drawn in an order that is a function of how many were drawn before (an exact resume).

A record holds the prompt (``prompt_field``: a string, one user turn, or a list of chat messages) and
the fields its reward functions need (e.g. ``answer``), passed to them by name. A malformed record
(not JSON, not an object, no prompt, bad messages, a prompt longer than ``max_prompt_tokens``) is left
out, counted by reason and written to an errors file with its place; it never stops the run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dotsllm.chat_template import DEFAULT_SYSTEM, ChatTemplate, messages_from_dicts


@dataclass(frozen=True)
class PromptSettings:
    path: str | None = None  # a JSONL file, a `datasets` folder (save_to_disk) or a dataset name
    split: str = "train"  # the split of a `datasets` dataset
    prompt_field: str = "prompt"  # a string (one user turn) or chat messages [{role, content}, ...]
    system: str | None = DEFAULT_SYSTEM  # the system message of prompts without one (null: none)


@dataclass(frozen=True)
class Prompt:
    """One usable record: the rendered prompt ids, its text, and the record's other fields."""

    ids: tuple[int, ...]
    text: str
    fields: dict[str, Any]
    source: str  # file:line or dataset[index]


class PromptSet:
    """The usable prompts of a source, the count of those left out by reason, and the draw order."""

    def __init__(self, settings: PromptSettings, tokenizer, max_prompt_tokens: int, seed: int):
        if not settings.path:
            raise ValueError("prompts.path: name a JSONL file or a datasets dataset of prompt records")
        self.settings = settings
        self.seed = seed
        self.prompts: list[Prompt] = []
        self.errors: list[dict[str, str]] = []
        template = ChatTemplate(tokenizer, settings.system)
        for source, record in _read_records(settings):
            try:
                self.prompts.append(_prompt(record, source, settings.prompt_field, template, max_prompt_tokens))
            except ValueError as err:
                self.errors.append({"source": source, "reason": str(err)})
        if not self.prompts:
            raise ValueError(f"{settings.path}: no usable prompt records ({len(self.errors)} malformed)")
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def error_counts(self) -> dict[str, int]:
        """Malformed records by reason (the reason's text before its first colon)."""
        return dict(Counter(e["reason"].split(":")[0] for e in self.errors))

    def write_errors(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(e) + "\n" for e in self.errors))

    def draw(self, index: int) -> Prompt:
        """The prompt drawn ``index``-th: epochs of seeded permutations, one after the other."""
        epoch, position = divmod(index, len(self.prompts))
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))}
        return self.prompts[int(self._permutations[epoch][position])]



def _read_records(settings: PromptSettings) -> Iterable[tuple[str, Any]]:
    """``(source, record)`` pairs; a JSONL line that is not JSON comes as a ``ValueError`` record."""
    from dotsllm.jsonl import read_jsonl

    path = Path(settings.path)
    if path.suffix == ".jsonl" or (path.is_file() and path.suffix == ".json"):
        if not path.is_file():
            raise FileNotFoundError(f"prompts.path: {path} does not exist")
        for number, record in read_jsonl(path):
            bad = isinstance(record, json.JSONDecodeError)
            yield f"{path}:{number}", ValueError(f"not JSON: {record.msg}") if bad else record
        return
    import datasets

    saved = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
    if path.is_dir() and any((path / name).is_file() for name in saved):
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[settings.split]
    else:
        dataset = datasets.load_dataset(str(path), split=settings.split)
    for index, record in enumerate(dataset):
        yield f"{settings.path}[{index}]", record


def _prompt(record: Any, source: str, field: str, template: ChatTemplate, max_prompt_tokens: int) -> Prompt:
    if isinstance(record, ValueError):
        raise record
    if not isinstance(record, dict):
        raise ValueError(f"not an object: a record must be a JSON object, got {type(record).__name__}")
    if field not in record:
        raise ValueError(f"no prompt: the record lacks {field!r}")
    prompt = record[field]
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        messages = prompt
    else:
        raise ValueError(f"bad prompt: {field!r} must be a string or a list of messages, got {type(prompt).__name__}")
    if isinstance(prompt, str) and not prompt.strip():
        raise ValueError(f"bad prompt: {field!r} is empty")
    try:
        ids = template.generation_prompt(messages_from_dicts(messages))
    except ValueError as err:
        raise ValueError(f"bad messages: {err}") from None
    if len(ids) > max_prompt_tokens:
        raise ValueError(f"too long: {len(ids)} prompt tokens, at most {max_prompt_tokens}")
    text = prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in messages)
    return Prompt(tuple(ids), text, {k: v for k, v in record.items() if k != field}, source)
