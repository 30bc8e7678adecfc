"""Batched generation with megatron-core's static KV cache on the live model, in any TP/PP/EP/DP layout.

The batch is megatron's static one: prompts right-padded into ``[rows, slots]``, all rows prefilled
up to the shortest prompt, then one slot per step for every row. A row whose prompt is longer is fed
its own prompt token at that slot (its sampler is not consulted), a row that has finished is carried
along and ignored. Every row sees only its own real tokens, so no attention mask is needed (Transformer
Engine's decode path takes none), and positions are slot indices.

Rows with the same prompt (GRPO's G samples of a prompt) can share one prefill: the distinct prompts
are prefilled and the cache rows copied to their samples (``StaticInferenceContext.swap_key_value_dict``).

Data parallelism: every rank generates its own requests, but MoE's all-to-all needs every rank of an
expert group to run the same number of forwards. Before each forward the data-parallel ranks agree
(all-reduce MAX) whether any still has work; one with none left runs a one-token forward without cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch

from dotsllm.inference.sampling import SamplingParams, TokenSampler
from dotsllm.inference.stages import ModelStages, inference_setting, model_chunks
from dotsllm.model.routing_replay import RoutingRecorder, moe_routers, routing_action


@dataclass(frozen=True)
class GenerationRequest:
    """A prompt (token ids) to continue, how, and the seed of its draws (unused when greedy)."""

    prompt: tuple[int, ...]
    params: SamplingParams = SamplingParams()
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", tuple(int(t) for t in self.prompt))
        if not self.prompt:
            raise ValueError("GenerationRequest: the prompt is empty")


@dataclass(frozen=True)
class GenerationResult:
    """The generated tokens (a stop token included), their log-probs, and why generation ended.

    ``routing`` (with ``record_routing``): the experts this rank's MoE layers chose for every token fed
    to the model, prompt and generated tokens but the last, ``[len(prompt) + len(tokens) - 1, layers, k]``
    (see :mod:`dotsllm.model.routing_replay`).
    """

    tokens: list[int]
    log_probs: list[float]
    finish_reason: Literal["stop", "length"]
    routing: torch.Tensor | None = field(default=None, compare=False)

    @property
    def completion(self) -> list[int]:
        """The generated ids without the stop token that ended generation (the text to decode)."""
        return completion_ids(self.tokens, self.finish_reason == "stop")


def completion_ids(tokens: Sequence[int], stopped: bool) -> list[int]:
    """A completion's ids without its stop token: ``tokens`` but the last when generation ``stopped``
    on a stop token (which then ends ``tokens``), else all of them."""
    if stopped and not tokens:
        raise ValueError("completion_ids: stopped on a stop token, but there are no tokens")
    return list(tokens[:-1] if stopped else tokens)


@torch.no_grad()
def generate(
    model: torch.nn.Module | Sequence[torch.nn.Module],
    requests: Sequence[GenerationRequest],
    *,
    share_prompt_prefill: bool = True,
    record_routing: bool = False,
) -> list[GenerationResult]:
    """Continue each of this data-parallel rank's ``requests``; every rank of its model-parallel group
    gets the results, in order.

    ``model`` is this rank's megatron ``GPTModel`` (or its chunks, one per virtual pipeline stage;
    DDP-wrapped is fine) in the layout ``parallel_state`` describes; it is run in eval mode without
    sequence parallelism and left as it was. Sampling: see :class:`SamplingParams`; each result's
    ``log_probs`` are ``log_softmax(logits / T)`` of its tokens before top-k/top-p filtering (T = 1 when
    greedy), to compare with a training forward. With ``share_prompt_prefill`` equal prompts are
    prefilled once. ``record_routing`` returns each result's MoE routing (the model must be built with
    ``moe_enable_routing_replay``). Every data-parallel rank must call this, with requests or without.
    """
    chunks = model_chunks(model)
    routers = moe_routers(chunks) if record_routing else None
    with inference_setting(chunks), routing_action(routers, "record") if record_routing else nullcontext():
        return _StaticBatch(ModelStages(chunks), list(requests), share_prompt_prefill, routers).run()


class _StaticBatch:
    """One call of :func:`generate`: the token slots, the KV cache and the rows' progress."""

    def __init__(
        self,
        stages: ModelStages,
        requests: list[GenerationRequest],
        share_prompt_prefill: bool,
        routers: list[torch.nn.Module] | None = None,
    ):
        from megatron.core.inference.contexts import StaticInferenceContext

        self.stages = stages
        self.requests = requests
        device = stages.device
        self.lengths = [len(r.prompt) for r in requests]
        self.slots = max((n + r.params.max_new_tokens for n, r in zip(self.lengths, requests)), default=0)
        self.tokens = torch.zeros(len(requests), self.slots, dtype=torch.long, device=device)
        for row, request in enumerate(requests):
            self.tokens[row, : len(request.prompt)] = torch.tensor(request.prompt)
        self.prompt_lengths = torch.tensor(self.lengths, device=device)
        self.context = StaticInferenceContext(len(requests), self.slots)
        self.sampler = TokenSampler([r.params for r in requests], [r.seed for r in requests], device)
        self.generated: list[list[int]] = [[] for _ in requests]
        self.log_probs: list[list[float]] = [[] for _ in requests]
        self.finished: list[str | None] = [None] * len(requests)
        self.prefill_rows = list(range(len(requests)))  # rows the prefill runs on
        self.copy_rows = None  # for each row, the prefill row whose cache it takes
        if share_prompt_prefill:
            first_row = {r.prompt: row for row, r in reversed(list(enumerate(requests)))}
            self.prefill_rows = sorted(first_row.values())
            index = {row: i for i, row in enumerate(self.prefill_rows)}
            self.copy_rows = torch.tensor([index[first_row[r.prompt]] for r in requests], device=device)
        self.recorder = RoutingRecorder(routers, len(requests), self.slots, device) if routers is not None else None

    def run(self) -> list[GenerationResult]:
        slot = min(self.lengths, default=0)  # the slot whose token the next forward predicts
        while self._any_rank_busy():
            if self._done():
                self._idle_forward()
                continue
            logits = self._prefill(slot) if self.context.sequence_len_offset == 0 else self._step(slot - 1)
            self._choose(slot, logits)
            slot += 1
        return [
            GenerationResult(tokens, log_probs, reason, self._routing(row))
            for row, (tokens, log_probs, reason) in enumerate(zip(self.generated, self.log_probs, self.finished))
        ]

    def _routing(self, row: int) -> torch.Tensor | None:
        """The recorded routing of ``row``'s tokens fed to the model (all but its last)."""
        if self.recorder is None:
            return None
        return self.recorder.row(row, self.lengths[row] + len(self.generated[row]) - 1)

    def _positions(self, start: int, end: int, rows: int) -> torch.Tensor:
        return torch.arange(start, end, device=self.stages.device).expand(rows, -1)

    def _prefill(self, length: int) -> torch.Tensor | None:
        """Forward of the prompts' first ``length`` tokens (each distinct prompt once when shared)."""
        rows = self.prefill_rows
        logits = self.stages.forward(self.tokens[rows, :length], self._positions(0, length, len(rows)), self.context)
        copied = self.copy_rows is not None and len(rows) < len(self.requests)
        if copied:
            self.context.swap_key_value_dict(self.copy_rows)  # each row's cache from its prompt's prefill
            logits = logits[self.copy_rows] if logits is not None else None
        if self.recorder is not None:
            self.recorder.prefill(length, self.copy_rows if copied else None)
        self.context.increment_sequence_len_offset(length)
        return logits

    def _step(self, slot: int) -> torch.Tensor | None:
        """Forward of every row's token at ``slot`` through the cache."""
        rows = len(self.requests)
        tokens = self.tokens[:, slot : slot + 1]
        logits = self.stages.forward(tokens, self._positions(slot, slot + 1, rows), self.context)
        if self.recorder is not None:
            self.recorder.step(slot)
        self.context.increment_sequence_len_offset(1)
        return logits

    def _choose(self, slot: int, logits: torch.Tensor | None) -> None:
        """The token at ``slot`` of every row: sampled where the row is generating, its prompt's otherwise."""
        rows = len(self.requests)
        generating = (self.prompt_lengths <= slot) & ~torch.tensor(
            [reason is not None for reason in self.finished], device=self.stages.device
        )
        choice = None
        if self.stages.is_last:
            choice = torch.zeros(2, rows, dtype=torch.float64, device=self.stages.device)
            choice[0] = self.tokens[:, slot]
            sampling_rows = generating.nonzero()[:, 0]
            if len(sampling_rows):
                tokens, log_probs = self.sampler(logits[sampling_rows], sampling_rows)
                choice[0, sampling_rows] = tokens.double()
                choice[1, sampling_rows] = log_probs.double()
        # token ids and float32 log-probs are exact in float64: one broadcast for both
        choice = self.stages.broadcast_from_last(choice, (2, rows), torch.float64)
        self.tokens[:, slot] = choice[0].long()
        for row in generating.nonzero()[:, 0].tolist():
            token = int(choice[0, row])
            self.generated[row].append(token)
            self.log_probs[row].append(float(choice[1, row]))
            params = self.requests[row].params
            if token in params.stop_token_ids:
                self.finished[row] = "stop"
            elif len(self.generated[row]) == params.max_new_tokens:
                self.finished[row] = "length"

    def _done(self) -> bool:
        return all(reason is not None for reason in self.finished)

    def _any_rank_busy(self) -> bool:
        """Whether any data-parallel rank still generates (so every rank runs one more forward)."""
        from megatron.core import parallel_state

        busy = not self._done()
        if parallel_state.get_data_parallel_world_size() == 1:
            return busy
        flag = torch.tensor([float(busy)], device=self.stages.device)
        torch.distributed.all_reduce(
            flag, op=torch.distributed.ReduceOp.MAX, group=parallel_state.get_data_parallel_group()
        )
        return bool(flag.item())

    def _idle_forward(self) -> None:
        """A one-token forward without cache, matching a busy rank's forward in MoE collectives."""
        token = torch.zeros(1, 1, dtype=torch.long, device=self.stages.device)
        self.stages.forward(token, self._positions(0, 1, 1))
