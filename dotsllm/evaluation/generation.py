"""Generation tasks, answered greedily (and sampled) by :mod:`dotsllm.inference` (or transformers, for a HF folder).

A task is a JSONL file of ``{"prompt": ..., "answer": ...}`` lines. Each prompt is continued greedily
for as many tokens as its answer has (or ``max_new_tokens``), stopping at end-of-document; the sample
is correct when the decoded continuation equals the answer, surrounding whitespace aside (``score=
"exact"``), or when math-verify finds the answer in it, ``\\boxed{}`` first (``score="math"``). With a chat
template, the prompt is a user turn rendered by the dots template (a sample's ``"system"`` field, else
the template's default system message) followed by the generation prompt, and generation stops at
``<|endofresponse|>``. The greedy accuracy comes with its standard error over prompts.

Sampled evaluation (:class:`SampledEval`) also draws N continuations of each prompt, each scored like
the greedy one; c_i of prompt i's samples are correct. It reports the sampled accuracy (the mean of
c_i / N over prompts) and, for each K asked, the unbiased pass@K (Chen et al. 2021), each with its
standard error over prompts (:mod:`dotsllm.evaluation.stats`). pass@1 equals the sampled accuracy.

On a HF folder the samples are drawn by this module's own decoding loop over transformers' forward
with the same per-request generators and sampler as :mod:`dotsllm.inference`; greedy predictions
equal the checkpoint's, sampled ones do as long as the two models' logits (equal to ~1e-5) put no
draw on the other side of a boundary of the cumulative distribution: likely, not guaranteed.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from dotsllm.inference import GenerationRequest, GenerationResult, SamplingParams, generate_data_parallel
from dotsllm.jsonl import read_jsonl
from dotsllm.chat_template import ChatTemplate, Message
from dotsllm.evaluation.stats import mean_and_se, pass_at_k, proportion_se
from dotsllm.inference.sampling import TokenSampler
from dotsllm.posttrain.grpo import reward_functions
from dotsllm.posttrain.grpo.rollout import sample_seed

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


@dataclass(frozen=True)
class SampledEval:
    """Sampled evaluation: ``samples`` (N) continuations of each prompt at ``temperature`` (> 0) and
    ``top_p``, and the pass@k of each of ``pass_k`` (each K at most N; default 1 and N).

    Sample j of prompt i (its line in the task file, from 0) draws from the seed
    ``sample_seed(seed, i, j)`` (the GRPO rollouts' seeding): the samples depend on the seed, the
    prompts and the weights, not on the batch size or the data-parallel layout.
    """

    samples: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    pass_k: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        pass_k = tuple(sorted({int(k) for k in self.pass_k or (1, self.samples)}))
        object.__setattr__(self, "pass_k", pass_k)
        wrong_k = [k for k in pass_k if not 1 <= k <= self.samples]
        problems = [
            f"samples must be >= 1, not {self.samples}" if self.samples < 1 else "",
            f"temperature must be > 0, not {self.temperature}" if not self.temperature > 0 else "",
            f"top_p must be in (0, 1], not {self.top_p}" if not 0 < self.top_p <= 1 else "",
            f"each pass@k needs 1 <= k <= samples ({self.samples}), not {wrong_k}" if wrong_k else "",
        ]  # fmt: skip
        if any(problems):
            raise ValueError("; ".join(p for p in problems if p))

    def params(self, max_new_tokens: int, stop: Sequence[int]) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature, top_p=self.top_p, max_new_tokens=max_new_tokens, stop_token_ids=tuple(stop)
        )


def exact_match(
    model: torch.nn.Module | Sequence[torch.nn.Module],
    tokenizer: TextTokenizer,
    samples: list[dict[str, str]],
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    chat: ChatTemplate | None = None,
    score: str = "exact",
    sampling: SampledEval | None = None,
) -> dict[str, Any]:
    """Greedy accuracy on ``samples`` (see the module doc) with its standard error, each sample's
    prediction, and with ``sampling`` the sampled accuracy and pass@k (see the module doc).

    ``model`` is this rank's part in the layout of ``parallel_state``, or a transformers causal LM
    (one process); every rank passes the same samples, each data-parallel rank generates
    ``batch_size`` requests (prompts, or sampled continuations) at a time, and every rank gets the
    whole result.
    """
    if is_transformers_model(model):
        run, data_parallel = generate_transformers, 1
    else:
        from megatron.core import parallel_state

        run, data_parallel = generate_data_parallel, parallel_state.get_data_parallel_world_size()
    if chat is None:
        prompts, stop = tokenizer.encode_batch([s["prompt"] for s in samples]), [tokenizer.eod]
    else:
        # a reply ends at <|endofresponse|>, or at the end of document (as an exported model's generation_config)
        prompts, stop = [chat.generation_prompt(_chat_messages(s)) for s in samples], [chat.stop_id, tokenizer.eod]
    budgets = [max_new_tokens or len(ids) for ids in tokenizer.encode_batch([s["answer"] for s in samples])]
    for i, ids in enumerate(prompts):
        if not ids:
            raise ValueError(f"sample {i}: the prompt encodes to no tokens")
    requests = {
        i: GenerationRequest(ids, SamplingParams(temperature=0, max_new_tokens=budget, stop_token_ids=stop))
        for i, (ids, budget) in enumerate(zip(prompts, budgets))
        if budget  # an empty answer needs no generation: its predictions are empty
    }
    step = batch_size * data_parallel
    texts = _generate_texts(model, run, tokenizer, requests, step)
    predictions = [texts.get(i, "") for i in range(len(samples))]
    answers = [s["answer"] for s in samples]
    verdicts = score_predictions(predictions, answers, score)
    details = [{**s, "prediction": p, "correct": c} for s, p, c in zip(samples, predictions, verdicts)]
    correct = sum(verdicts)
    result = {
        "score": score, "samples": len(samples), "correct": correct, "accuracy": correct / len(samples),
        "accuracy_se": proportion_se(correct, len(samples)), "predictions": details,
    }  # fmt: skip
    if sampling is not None:
        n = sampling.samples
        drawn = {  # a prompt's samples side by side: in one batch they share its prefill
            (i, j): GenerationRequest(prompts[i], sampling.params(budgets[i], stop), sample_seed(sampling.seed, i, j))
            for i in requests
            for j in range(n)
        }
        texts = _generate_texts(model, run, tokenizer, drawn, step)
        sampled = [[texts.get((i, j), "") for j in range(n)] for i in range(len(samples))]
        flat = score_predictions([p for row in sampled for p in row], [a for a in answers for _ in range(n)], score)
        counts = [sum(flat[i * n : (i + 1) * n]) for i in range(len(samples))]
        for detail, row, count in zip(details, sampled, counts):
            detail["sampled_correct"] = count
            detail["sampled_predictions"] = row
        result["sampled"] = sampled_summary(counts, sampling)
    return result


def sampled_summary(counts: Sequence[int], sampling: SampledEval) -> dict[str, Any]:
    """The ``"sampled"`` field of a task's result, from each prompt's count of correct samples."""
    n = sampling.samples
    accuracy, accuracy_se = mean_and_se([c / n for c in counts])
    pass_at = {}
    for k in sampling.pass_k:
        value, se = mean_and_se([pass_at_k(n, c, k) for c in counts])
        pass_at[str(k)] = {"value": value, "se": se}
    return {
        "samples": n, "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed,
        "correct": sum(counts), "accuracy": accuracy, "accuracy_se": accuracy_se, "pass_at_k": pass_at,
    }  # fmt: skip


def _generate_texts(model, run, tokenizer: TextTokenizer, requests: dict, step: int) -> dict:
    """The decoded completion of each of ``requests`` (by key), generated ``step`` requests at a time."""
    # prompts of similar length batched together: fewer steps spent feeding the longer prompts (a
    # stable sort: the samples of a prompt stay side by side)
    order = sorted(requests, key=lambda key: len(requests[key].prompt))
    texts = {}
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        for key, result in zip(chunk, run(model, [requests[key] for key in chunk])):
            texts[key] = tokenizer.decode(result.completion)
    return texts


def score_predictions(predictions: list[str], answers: list[str], score: str) -> list[bool]:
    """Whether each prediction is right (see the module doc); a gold answer math-verify cannot parse: wrong."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {tuple(SCORES)}, got {score!r}")
    return [value == 1.0 for value in SCORES[score](predictions, answers)]


def is_transformers_model(model: Any) -> bool:
    return type(model).__module__.startswith("transformers.")


@torch.no_grad()
def generate_transformers(model: Any, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
    """Continuations of ``requests`` by a transformers causal LM. Prompts of one length and params go
    in one batch, unpadded: no padding, attention mask or position shift to tell a row from the same
    prompt alone. Greedy requests run transformers' ``generate``; sampled ones :func:`_sample_transformers`."""
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault((len(request.prompt), request.params), []).append(i)
    results: list[GenerationResult | None] = [None] * len(requests)
    for (length, params), rows in groups.items():
        budget, stop = params.max_new_tokens, params.stop_token_ids
        prompts = torch.tensor([requests[i].prompt for i in rows], device=model.device)
        if not params.greedy:
            found = _sample_transformers(model, prompts, params, [requests[i].seed for i in rows])
            for i, result in zip(rows, found):
                results[i] = result
            continue
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


def _sample_transformers(
    model: Any, prompts: torch.Tensor, params: SamplingParams, seeds: list[int]
) -> list[GenerationResult]:
    """Sampled continuations of ``prompts`` (``[rows, length]``, one length) with transformers' KV
    cache, each row drawing from its own generator by :class:`~dotsllm.inference.sampling.TokenSampler`,
    as :func:`dotsllm.inference.generate` does; finished rows are carried along and ignored."""
    rows = len(seeds)
    sampler = TokenSampler([params] * rows, seeds, prompts.device)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    log_probs: list[list[float]] = [[] for _ in range(rows)]
    stopped = [False] * rows
    # the KV cache's argument and output: "cache" since transformers 5.x, "past_key_values" before
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    inputs, cache = prompts, None
    for _ in range(params.max_new_tokens):
        out = model(input_ids=inputs, use_cache=True, **{cache_name: cache})
        cache = getattr(out, cache_name)
        active = [row for row in range(rows) if not stopped[row]]
        index = torch.tensor(active, device=prompts.device)
        chosen, chosen_log_probs = sampler(out.logits[index, -1].float(), index)
        following = torch.zeros(rows, dtype=torch.long, device=prompts.device)
        following[index] = chosen
        for row, token, log_prob in zip(active, chosen.tolist(), chosen_log_probs.tolist()):
            tokens[row].append(token)
            log_probs[row].append(log_prob)
            stopped[row] = token in params.stop_token_ids
        if all(stopped):
            break
        inputs = following[:, None]
    return [
        GenerationResult(t, lp, "stop" if s else "length") for t, lp, s in zip(tokens, log_probs, stopped)
    ]


def _chat_messages(sample: dict[str, str]) -> list[Message]:
    system = [Message("system", sample["system"])] if isinstance(sample.get("system"), str) else []
    return [*system, Message("user", sample["prompt"])]
