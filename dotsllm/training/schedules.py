"""dots.llm1's schedules as pure functions: WSD learning rate and a global-batch ramp by tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class LRPhase:
    """A phase after warmup lasting ``tokens``; the LR moves from the previous phase's end to ``end_lr``."""

    name: str
    tokens: float
    end_lr: float
    shape: Literal["linear", "cosine"] = "linear"

    def __post_init__(self) -> None:
        if self.tokens <= 0:
            raise ValueError(f"lr phase {self.name!r}: tokens must be > 0")
        if self.shape not in ("linear", "cosine"):
            raise ValueError(f"lr phase {self.name!r}: shape must be linear or cosine, got {self.shape!r}")


@dataclass(frozen=True)
class WSDSchedule:
    """Warmup (by steps) to ``peak_lr``, then phases by tokens seen: stable, anneal 1, anneal 2, ...

    dots.llm1: warmup 4000 steps; 3e-4 for 10T tokens; 1T tokens to 3e-5; 200B tokens to 1e-5.
    Phase boundaries count tokens from the start of training (warmup tokens are in phase one).
    After the last phase the LR stays at its ``end_lr``.
    """

    peak_lr: float
    warmup_steps: int
    phases: tuple[LRPhase, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(p if isinstance(p, LRPhase) else LRPhase(**p) for p in self.phases))

    @property
    def phase_boundaries(self) -> list[float]:
        """Token counts at which each phase ends."""
        ends, total = [], 0.0
        for phase in self.phases:
            total += phase.tokens
            ends.append(total)
        return ends

    def lr(self, step: int, tokens_seen: float) -> float:
        """LR for the optimizer step numbered ``step`` (0-based), taken after ``tokens_seen`` tokens."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        start_lr, start_tokens = self.peak_lr, 0.0
        for phase, end_tokens in zip(self.phases, self.phase_boundaries):
            if tokens_seen < end_tokens:
                progress = (tokens_seen - start_tokens) / phase.tokens
                if phase.shape == "cosine":
                    progress = (1 - math.cos(math.pi * progress)) / 2
                return start_lr + (phase.end_lr - start_lr) * progress
            start_lr, start_tokens = phase.end_lr, end_tokens
        return start_lr

    def phase_name(self, tokens_seen: float) -> str:
        for phase, end_tokens in zip(self.phases, self.phase_boundaries):
            if tokens_seen < end_tokens:
                return phase.name
        return self.phases[-1].name if self.phases else "constant"


@dataclass(frozen=True)
class BatchRampPoint:
    from_tokens: float
    global_batch_tokens: int


@dataclass(frozen=True)
class BatchRamp:
    """Global batch size in tokens as a step function of tokens seen (64M → 96M at 6T → 128M at 8.3T)."""

    points: tuple[BatchRampPoint, ...]

    def __post_init__(self) -> None:
        points = tuple(p if isinstance(p, BatchRampPoint) else BatchRampPoint(**p) for p in self.points)
        if not points or points[0].from_tokens != 0:
            raise ValueError("batch ramp: the first point must start at from_tokens: 0")
        if any(b.from_tokens <= a.from_tokens for a, b in zip(points, points[1:])):
            raise ValueError("batch ramp: from_tokens must increase")
        object.__setattr__(self, "points", points)

    def global_batch_tokens(self, tokens_seen: float) -> int:
        current = self.points[0].global_batch_tokens
        for point in self.points:
            if tokens_seen >= point.from_tokens:
                current = point.global_batch_tokens
        return current

    def samples_to_reach(self, train_tokens: float, seq_length: int, granularity: int) -> tuple[int, int]:
        """(steps, samples) of a run that steps through this ramp until ``train_tokens`` are seen.

        The last step is whole, so a budget the final global batch does not divide is overshot by
        less than one batch (the 142B run: 133,863 steps, not the ceil(11.2e12 / 8192) samples that
        fall 33.9M tokens short of the budget).
        """
        steps = samples = 0
        while samples * seq_length < train_tokens:
            samples += self.global_batch_samples(samples * seq_length, seq_length, granularity)
            steps += 1
        return steps, samples

    def global_batch_samples(self, tokens_seen: float, seq_length: int, granularity: int) -> int:
        """Samples per step; must be a multiple of ``granularity`` (micro batch x DP)."""
        tokens = self.global_batch_tokens(tokens_seen)
        samples, rest = divmod(tokens, seq_length)
        if rest or samples % granularity:
            raise ValueError(
                f"global batch of {tokens} tokens is not a whole number of micro-batches: it must be a "
                f"multiple of seq_length x micro_batch_size x dp = {seq_length * granularity}"
            )
        return samples


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warmup (by steps) to ``peak_lr``, then a cosine down to ``end_lr`` at ``total_steps``
    (dots.llm1's SFT: 5e-6 → 1e-6 per phase); ``total_steps`` is the run's, set by the trainer."""

    peak_lr: float = 5e-6
    end_lr: float = 1e-6
    warmup_steps: int = 0
    total_steps: int = 0

    def lr(self, step: int, tokens_seen: float = 0) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        decay_steps = max(self.total_steps - self.warmup_steps - 1, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        return self.end_lr + (self.peak_lr - self.end_lr) * (1 + math.cos(math.pi * progress)) / 2
