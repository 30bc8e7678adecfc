"""Built-in reward functions. A reward function takes a batch and returns one float (or None) per sample.

Every function is called with keyword lists of equal length: ``prompts`` and ``completions`` (text,
the stop token left out), ``completion_ids`` (the generated token ids), ``truncated`` (whether the
response hit the generation budget), and each field of the prompt records (e.g. ``answer``), plus the
keyword arguments its config entry gives. None means "no reward for this sample" (not a failure).
Functions must accept and ignore keywords they do not use (``**_``).

They run in worker processes (:mod:`dotsllm.posttrain.grpo.rewards`), so math-verify's own SIGALRM
timeouts (main thread only) are switched off: the worker's timeout bounds them instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence


def math_accuracy(completions: Sequence[str], answer: Sequence[str], **_) -> list[float | None]:
    """1.0 when math-verify finds the response's answer equal to the gold ``answer``, else 0.0.

    The response's ``\\boxed{...}`` answer is looked for first (then math-verify's other anchors); a
    gold answer math-verify cannot parse gives None (no reward) rather than a wrong 0.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its note that its own timeouts are off
    extraction = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        gold_parsed = parse(str(gold), extraction_config=extraction, parsing_timeout=None)
        if not gold_parsed:
            rewards.append(None)
            continue
        predicted = parse(completion, extraction_config=extraction, parsing_timeout=None)
        rewards.append(float(verify(gold_parsed, predicted, timeout_seconds=None)))
    return rewards


def exact_match(completions: Sequence[str], answer: Sequence[str], **_) -> list[float]:
    """1.0 when the response equals ``answer``, surrounding whitespace aside."""
    return [float(c.strip() == str(a).strip()) for c, a in zip(completions, answer, strict=True)]


BOXED_AT_END = r"^[^\\]*\\boxed\{[^{}]+\}\s*$"  # some text, then one boxed answer, nothing after it


def format_reward(
    completions: Sequence[str], truncated: Sequence[bool], pattern: str = BOXED_AT_END, **_
) -> list[float]:
    """1.0 when the response matches ``pattern`` (regex, the whole response; by default: ends with one
    ``\\boxed{...}`` answer) and stopped by itself rather than at the budget."""
    compiled = re.compile(pattern, re.DOTALL)
    return [float(bool(compiled.match(c)) and not t) for c, t in zip(completions, truncated, strict=True)]


def overlong_punishment(
    completion_ids: Sequence[Sequence[int]], max_tokens: int, buffer_tokens: int, **_
) -> list[float]:
    """DAPO's soft overlong punishment: 0 up to ``max_tokens − buffer_tokens`` response tokens, then
    falling linearly to −1 at ``max_tokens``, and −1 beyond."""
    if not 0 < buffer_tokens <= max_tokens:
        raise ValueError(f"overlong_punishment: need 0 < buffer_tokens ({buffer_tokens}) <= max_tokens ({max_tokens})")
    start = max_tokens - buffer_tokens
    return [max(min((start - len(ids)) / buffer_tokens, 0.0), -1.0) for ids in completion_ids]


BUILTIN = {
    "math_accuracy": math_accuracy,
    "exact_match": exact_match,
    "format": format_reward,
    "overlong_punishment": overlong_punishment,
}
