"""Generation tasks, answered greedily by :mod:`dotsllm.inference` (or transformers, for a HF folder).

A task is a JSONL file of ``{"prompt": ..., "answer": ...}`` lines. Each prompt is continued greedily
for as many tokens as its answer has (or ``max_new_tokens``), stopping at end-of-document; the sample
is correct when the decoded continuation equals the answer, surrounding whitespace aside (``score=
"exact"``), or when math-verify finds the answer in it, ``\\boxed{}`` first (``score="math"``). With a chat
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

from dotsllm.inference import GenerationRequest, GenerationResult, SamplingParams, generate_data_parallel
from dotsllm.jsonl import read_jsonl
from dotsllm.chat_template import ChatTemplate, Message
from dotsllm.posttrain.grpo import reward_functions

SCORES = {"exact": reward_functions.exact_match, "math": reward_functions.math_accuracy}  # GRPO's rewards
SCORE_NAMES = {"exact": "exact match", "math": "math accuracy"}


class TextTokenizer(Protocol):
    """What tasks need of a tokenizer (``dotsllm.tokenizer.Tokenizer`` has it)."""

    eod: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...


def read_tasks(path: str | Path) -> list[dict[str, str]]:
    """The samples of a JSONL task file; a bad line is named by number."""
    samples = []
    for number, sample in read_jsonl(path):
        if isinstance(sample, json.JSONDecodeError):
            raise ValueError(f"{path}:{number}: not JSON: {sample}") from sample
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
    score: str = "exact",
) -> dict[str, Any]:
    """Greedy accuracy on ``samples`` (see the module doc), with each sample's prediction.

    ``model`` is this rank's part in the layout of ``parallel_state``, or a transformers causal LM
    (one process); every rank passes the same samples, each data-parallel rank generates
    ``batch_size`` of them at a time, and every rank gets the whole result.
    """
    if is_transformers_model(model):
        run, data_parallel = generate_transformers, 1
    else:
        from megatron.core import parallel_state

        run, data_parallel = generate_data_parallel, parallel_state.get_data_parallel_world_size()
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
    step = batch_size * data_parallel
    predictions: list[str] = [""] * len(samples)
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        for i, result in zip(chunk, run(model, [requests[i] for i in chunk])):
            predictions[i] = tokenizer.decode(result.completion)
    verdicts = score_predictions(predictions, [s["answer"] for s in samples], score)
    details = [{**s, "prediction": p, "correct": c} for s, p, c in zip(samples, predictions, verdicts)]
    correct = sum(verdicts)
    return {
        "score": score, "samples": len(samples), "correct": correct, "accuracy": correct / len(samples),
        "predictions": details,
    }  # fmt: skip


def score_predictions(predictions: list[str], answers: list[str], score: str) -> list[bool]:
    """Whether each prediction is right (see the module doc); a gold answer math-verify cannot parse: wrong."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {tuple(SCORES)}, got {score!r}")
    return [value == 1.0 for value in SCORES[score](predictions, answers)]


def is_transformers_model(model: Any) -> bool:
    return type(model).__module__.startswith("transformers.")


@torch.no_grad()
def generate_transformers(model: Any, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
    """Greedy continuations of ``requests`` by transformers' ``generate``. Prompts of one length and
    budget go in one batch, unpadded: no padding, attention mask or position shift to tell a row from
    the same prompt alone."""
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        params = request.params
        if not params.greedy:
            raise ValueError("generate_transformers: greedy requests only (temperature 0)")
        groups.setdefault((len(request.prompt), params.max_new_tokens, params.stop_token_ids), []).append(i)
    results: list[GenerationResult | None] = [None] * len(requests)
    for (length, budget, stop), rows in groups.items():
        prompts = torch.tensor([requests[i].prompt for i in rows], device=model.device)
        out = model.generate(
            prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=budget,
            eos_token_id=list(stop) or None, pad_token_id=stop[0] if stop else 0,
            output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
        log_probs = torch.stack(out.scores, 1).float().log_softmax(-1)
        new = out.sequences[:, length:]
        chosen = log_probs.gather(-1, new[..., None])[..., 0]
        for row, i in enumerate(rows):
            tokens = new[row].tolist()
            end = next((k + 1 for k, t in enumerate(tokens) if t in stop), None)
            kept = tokens[:end] if end else tokens[:budget]
            reason = "stop" if end else "length"
            results[i] = GenerationResult(kept, chosen[row, : len(kept)].tolist(), reason)
    return results


def _chat_messages(sample: dict[str, str]) -> list[Message]:
    system = [Message("system", sample["system"])] if isinstance(sample.get("system"), str) else []
    return [*system, Message("user", sample["prompt"])]
