"""Greedy generation with megatron-core's static KV cache, and exact-match generation tasks.

A task is a JSONL file of ``{"prompt": ..., "answer": ...}`` lines. Each prompt is continued greedily
for as many tokens as its answer has (or ``max_new_tokens``), stopping at end-of-document; the sample
is correct when the decoded continuation equals the answer, surrounding whitespace aside.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol

import torch


class TextTokenizer(Protocol):
    """What tasks need of a tokenizer (``dotsllm.tokenizer.Tokenizer`` has it)."""

    eod: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module, prompts: torch.Tensor, max_new_tokens: int, use_cache: bool = True
) -> torch.Tensor:
    """The ``[batch, max_new_tokens]`` greedy continuations of equal-length ``prompts`` (``[batch, len]``).

    With ``use_cache`` the prompt is encoded once into a ``StaticInferenceContext`` and each new token
    costs one position; without it every step recomputes the whole sequence (the reference). ``model``
    is a single-process megatron ``GPTModel`` in eval mode.
    """
    from megatron.core.inference.contexts import StaticInferenceContext

    device = next(model.parameters()).device
    tokens = prompts.to(device)
    batch, length = tokens.shape
    context = StaticInferenceContext(batch, length + max_new_tokens) if use_cache else None
    step_input, start = tokens, 0
    for _ in range(max_new_tokens):
        positions = torch.arange(start, start + step_input.shape[1], device=device).expand(batch, -1)
        logits = model(step_input, positions, None, inference_context=context, runtime_gather_output=True)
        next_token = logits[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
        if context is not None:
            context.sequence_len_offset += step_input.shape[1]
            step_input, start = next_token, tokens.shape[1] - 1
        else:
            step_input = tokens
    return tokens[:, length:].cpu()


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
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    samples: list[dict[str, str]],
    max_new_tokens: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Greedy exact-match accuracy on ``samples`` (see the module doc), with each sample's prediction."""
    prompts = tokenizer.encode_batch([s["prompt"] for s in samples])
    budgets = [max_new_tokens or len(ids) for ids in tokenizer.encode_batch([s["answer"] for s in samples])]
    batches = defaultdict(list)  # equal prompt lengths and budgets decode together
    for i, (ids, budget) in enumerate(zip(prompts, budgets)):
        if not ids:
            raise ValueError(f"sample {i}: the prompt encodes to no tokens")
        batches[len(ids), budget].append(i)
    predictions: list[str] = [""] * len(samples)
    for (_, budget), members in batches.items():
        for chunk in (members[i : i + batch_size] for i in range(0, len(members), batch_size)):
            generated = greedy_generate(model, torch.tensor([prompts[i] for i in chunk]), budget)
            for i, ids in zip(chunk, generated.tolist()):
                predictions[i] = tokenizer.decode(ids[: ids.index(tokenizer.eod)] if tokenizer.eod in ids else ids)
    details = [
        {**s, "prediction": p, "correct": p.strip() == s["answer"].strip()} for s, p in zip(samples, predictions)
    ]
    correct = sum(d["correct"] for d in details)
    return {"samples": len(samples), "correct": correct, "exact_match": correct / len(samples), "predictions": details}
