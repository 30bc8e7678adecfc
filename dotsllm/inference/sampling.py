"""Sampling parameters and the per-row choice of the next token from float32 logits.

Each request draws from its own ``torch.Generator`` (seeded by the request), consumed only at that
request's own sampling steps: a sample depends on its seed, its prompt and the weights, not on the
batch it is in, its row, or the parallel layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens.

    ``temperature`` 0 is greedy (argmax); otherwise the logits are divided by it, then filtered to the
    ``top_k`` most likely tokens (0: all), then to the smallest set whose probability reaches ``top_p``
    (the most likely token is always kept), and one token is drawn. Generation ends after a token of
    ``stop_token_ids`` (which is returned) or after ``max_new_tokens`` tokens.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop_token_ids: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        problems = [
            f"temperature must be >= 0, not {self.temperature}" if not self.temperature >= 0 else "",
            f"top_k must be >= 0, not {self.top_k}" if self.top_k < 0 else "",
            f"top_p must be in (0, 1], not {self.top_p}" if not 0 < self.top_p <= 1 else "",
            f"max_new_tokens must be >= 1, not {self.max_new_tokens}" if self.max_new_tokens < 1 else "",
        ]
        if any(problems):
            raise ValueError("SamplingParams: " + "; ".join(p for p in problems if p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_top_k_top_p(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``scaled`` logits ``[rows, vocab]`` with every token outside each row's top-k, then top-p, set to -inf.

    ``top_k`` (0: no limit) and ``top_p`` are per row. Top-p applies to the distribution left by top-k;
    the most likely token always stays. Ties are broken towards the lower token id.
    """
    vocab = scaled.shape[-1]
    ordered, order = scaled.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(vocab, device=scaled.device)
    limit = torch.where(top_k > 0, top_k, vocab)
    keep = rank < limit[:, None]
    probs = torch.softmax(ordered.masked_fill(~keep, float("-inf")), dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
    keep &= (before < top_p[:, None]) | (top_p[:, None] >= 1)
    keep_by_token = torch.zeros_like(keep).scatter(-1, order, keep)
    return scaled.masked_fill(~keep_by_token, float("-inf"))


class TokenSampler:
    """Chooses tokens for a fixed batch of rows, each with its own :class:`SamplingParams` and seed."""

    def __init__(self, params: Sequence[SamplingParams], seeds: Iterable[int], device: torch.device):
        self.params = list(params)
        self.temperature = torch.tensor([p.temperature or 1.0 for p in self.params], device=device)
        self.top_k = torch.tensor([p.top_k for p in self.params], device=device)
        self.top_p = torch.tensor([p.top_p for p in self.params], device=device)
        self.filtered = [p.top_k > 0 or p.top_p < 1 for p in self.params]
        self.generators = [
            None if p.greedy else torch.Generator(device=device).manual_seed(int(seed))
            for p, seed in zip(self.params, seeds, strict=True)
        ]

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and their log-probs for ``rows`` (batch indices), from their ``logits`` ``[len(rows), vocab]``.

        The log-prob is ``log_softmax(logits / T)`` of the chosen token, before top-k/top-p filtering
        (T = 1 for greedy rows): what a training forward of the same tokens gives at that temperature.
        """
        scaled = logits.float() / self.temperature[rows, None]
        log_probs = torch.log_softmax(scaled, dim=-1)
        tokens = scaled.argmax(dim=-1)
        row_ids = rows.tolist()
        drawn = [i for i, row in enumerate(row_ids) if self.generators[row] is not None]
        if drawn:
            index = torch.tensor(drawn, device=logits.device)
            candidates = scaled[index]
            if any(self.filtered[row_ids[i]] for i in drawn):
                candidates = filter_top_k_top_p(candidates, self.top_k[rows[index]], self.top_p[rows[index]])
            probs = torch.softmax(candidates, dim=-1)
            # One generator per request: torch has no batched draw from several generators.
            for i, row_probs in zip(drawn, probs):
                tokens[i] = torch.multinomial(row_probs, 1, generator=self.generators[row_ids[i]])[0]
        return tokens, log_probs.gather(-1, tokens[:, None])[:, 0]
