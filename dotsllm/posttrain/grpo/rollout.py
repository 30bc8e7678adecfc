"""Rollouts: G sampled responses per prompt from the policy, with behaviour log-probs (and routing).

The backend is a seam: :class:`BuiltinRollout` samples with :mod:`dotsllm.inference` on the training
layout itself (colocated: the policy's own weights, nothing copied; each prompt prefilled once for its
G samples). An engine such as vLLM or SGLang (both serve Dots1) would implement :class:`RolloutBackend`
and be registered in :data:`BACKENDS`.

Each sample's seed is a function of the run's seed, the prompt's draw index and its number in the
group: a rollout depends on the weights and the prompts drawn, not on the layout, batch or rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from dotsllm.inference import GenerationRequest, GenerationResult, SamplingParams, generate_data_parallel
from dotsllm.posttrain.grpo.prompts import Prompt


@dataclass(frozen=True)
class RolloutSettings:
    backend: str = "builtin"
    group_size: int = 8  # G: responses per prompt
    prompts_per_step: int = 8  # groups trained on per step (dynamic sampling draws more to fill it)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256  # responses are cut there (and count as truncated)
    share_prompt_prefill: bool = True  # each prompt prefilled once for its G samples

    def __post_init__(self) -> None:
        if self.group_size < 1 or self.prompts_per_step < 1:
            raise ValueError("rollout: group_size and prompts_per_step must be >= 1")
        if self.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0 (GRPO samples; greedy has no group variance)")
        if self.backend not in BACKENDS:
            raise ValueError(f"rollout.backend {self.backend!r} is not one of {sorted(BACKENDS)}")


@dataclass
class Sample:
    """One response of a rollout."""

    draw: int  # the prompt's draw index
    prompt: Prompt
    response: list[int]  # generated ids, the stop token included when it stopped
    log_probs: list[float]  # behaviour log-probs at the rollout temperature
    truncated: bool  # hit max_new_tokens
    routing: torch.Tensor | None  # [len(prompt) + len(response) - 1, local MoE layers, k]


class RolloutBackend(Protocol):
    def generate(self, requests: Sequence[GenerationRequest], record_routing: bool) -> list[GenerationResult]:
        """Results of all ``requests`` (the same list on every rank), in order, on every rank."""


class BuiltinRollout:
    """:func:`dotsllm.inference.generate_data_parallel` on the live training chunks."""

    def __init__(self, model_chunks: Sequence[torch.nn.Module], settings: RolloutSettings):
        self.chunks = list(model_chunks)
        self.share_prompt_prefill = settings.share_prompt_prefill

    def generate(self, requests: Sequence[GenerationRequest], record_routing: bool) -> list[GenerationResult]:
        return generate_data_parallel(
            self.chunks, requests, share_prompt_prefill=self.share_prompt_prefill, record_routing=record_routing
        )


BACKENDS = {"builtin": BuiltinRollout}


def sample_seed(seed: int, draw: int, member: int) -> int:
    """The sampling seed of response ``member`` of the prompt drawn ``draw``-th."""
    return int(np.random.SeedSequence([seed, draw, member]).generate_state(1, np.uint64)[0] >> 1)


def rollout(
    backend: RolloutBackend,
    prompts: Sequence[tuple[int, Prompt]],
    settings: RolloutSettings,
    stop_token_id: int,
    seed: int,
    record_routing: bool = False,
) -> list[Sample]:
    """G samples of each ``(draw index, prompt)``, the group's samples side by side."""
    params = SamplingParams(
        temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens, stop_token_ids=(stop_token_id,),
    )  # fmt: skip
    requests = [
        GenerationRequest(prompt.ids, params, sample_seed(seed, draw, member))
        for draw, prompt in prompts
        for member in range(settings.group_size)
    ]
    results = backend.generate(requests, record_routing)
    groups = [p for p in prompts for _ in range(settings.group_size)]
    return [
        Sample(draw, prompt, list(r.tokens), list(r.log_probs), r.finish_reason == "length", r.routing)
        for (draw, prompt), r in zip(groups, results, strict=True)
    ]
