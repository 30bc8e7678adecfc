"""Exact-match generation tasks, answered greedily by :mod:`dotsllm.inference`.

A task is a JSONL file of ``{"prompt": ..., "answer": ...}`` lines. Each prompt is continued greedily
for as many tokens as its answer has (or ``max_new_tokens``), stopping at end-of-document; the sample
is correct when the decoded continuation equals the answer, surrounding whitespace aside. With a chat
template, the prompt is a user turn rendered by the dots template (a sample's ``"system"`` field, else
the template's default system message) followed by the generation prompt, and generation stops at
``<|endofresponse|>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from dotsllm.inference import GenerationRequest, SamplingParams, generate_data_parallel
from dotsllm.posttrain.chat import ChatTemplate, Message


class TextTokenizer(Protocol):
    """What tasks need of a tokenizer (``dotsllm.tokenizer.Tokenizer`` has it)."""

    eod: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...


def read_tasks(path: str | Path) -> list[dict[str, str]]:
    """The samples of a JSONL task file; a bad line is named by number."""
    samples = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON: {e}") from e
        if not (
            isinstance(sample, dict) and isinstance(sample.get("prompt"), str) and isinstance(sample.get("answer"), str)
        ):
            raise ValueError(f'{path}:{number}: expected {{"prompt": str, "answer": str}}')
        samples.append(sample)
    if not samples:
        raise ValueError(f"{path}: no samples")
    return samples


def exact_match(
    model: torch.nn.Module | Sequence[torch.nn.Module],
    tokenizer: TextTokenizer,
    samples: list[dict[str, str]],
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    chat: ChatTemplate | None = None,
) -> dict[str, Any]:
    """Greedy exact-match accuracy on ``samples`` (see the module doc), with each sample's prediction.

    ``model`` is this rank's part in the layout of ``parallel_state``; every rank passes the same
    samples, each data-parallel rank generates ``batch_size`` of them at a time, and every rank gets
    the whole result.
    """
    from megatron.core import parallel_state

    if chat is None:
        prompts, stop = tokenizer.encode_batch([s["prompt"] for s in samples]), [tokenizer.eod]
    else:
        prompts, stop = [chat.generation_prompt(_chat_messages(s)) for s in samples], [chat.stop_id]
    budgets = [max_new_tokens or len(ids) for ids in tokenizer.encode_batch([s["answer"] for s in samples])]
    for i, ids in enumerate(prompts):
        if not ids:
            raise ValueError(f"sample {i}: the prompt encodes to no tokens")
    requests = {
        i: GenerationRequest(ids, SamplingParams(temperature=0, max_new_tokens=budget, stop_token_ids=stop))
        for i, (ids, budget) in enumerate(zip(prompts, budgets))
        if budget  # an empty answer needs no generation: its prediction is empty
    }
    # prompts of similar length batched together: fewer steps spent feeding the longer prompts
    order = sorted(requests, key=lambda i: len(prompts[i]))
    step = batch_size * parallel_state.get_data_parallel_world_size()
    predictions: list[str] = [""] * len(samples)
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        for i, result in zip(chunk, generate_data_parallel(model, [requests[i] for i in chunk])):
            ids = result.tokens[:-1] if result.finish_reason == "stop" else result.tokens
            predictions[i] = tokenizer.decode(ids)
    details = [
        {**s, "prediction": p, "correct": p.strip() == s["answer"].strip()} for s, p in zip(samples, predictions)
    ]
    correct = sum(d["correct"] for d in details)
    return {"samples": len(samples), "correct": correct, "exact_match": correct / len(samples), "predictions": details}


def _chat_messages(sample: dict[str, str]) -> list[Message]:
    system = [Message("system", sample["system"])] if isinstance(sample.get("system"), str) else []
    return [*system, Message("user", sample["prompt"])]
