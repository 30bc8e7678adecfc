"""Reward functions named in the config, run in worker processes with a timeout.

A reward is a function ``module:function`` (or a built-in name, see
:mod:`dotsllm.posttrain.grpo.reward_functions`) taking a batch as keyword lists and returning one
float per sample; several are weighted and summed. Each runs in a ``pebble`` process pool (pebble
kills a worker that outlives its timeout, which ``concurrent.futures`` cannot), on chunks of
``chunk_size`` samples. A chunk that raises, hangs, kills its worker or returns a wrong-length answer
is retried one sample at a time, so that only the culprits lose their reward: a sample whose call still
fails, or whose value is NaN/infinite, is counted and marked ``failed``; so is a None, "no reward" (e.g. a
gold answer that cannot be parsed), counted apart. A failed reward is not a wrong answer: by default
(``rewards.on_failure: mask``) GRPO leaves such a sample out of its group's statistics and of the loss;
``zero`` scores it 0 instead. Training never stops for a reward.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Literal

from dotsllm.posttrain.grpo import reward_functions

FAILURE_KINDS = ("errors", "timeouts", "nonfinite")


@dataclass(frozen=True)
class RewardSpec:
    """One weighted reward: ``function`` is a built-in name or ``module:function``."""

    function: str
    weight: float = 1.0
    name: str | None = None  # the metric's name (default: the function's)
    kwargs: dict = field(default_factory=dict)  # extra keyword arguments of every call

    @property
    def label(self) -> str:
        return self.name or self.function.rsplit(":", 1)[-1]

    @property
    def path(self) -> str:
        """``module:function`` of a built-in or imported function."""
        if ":" in self.function:
            return self.function
        if self.function not in reward_functions.BUILTIN:
            builtins = sorted(reward_functions.BUILTIN)
            raise ValueError(f"reward function {self.function!r}: not a built-in ({builtins}) nor module:function")
        return f"{reward_functions.__name__}:{reward_functions.BUILTIN[self.function].__name__}"


@dataclass(frozen=True)
class RewardSettings:
    functions: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("math_accuracy")])
    accuracy: str | None = "math_accuracy"  # the reward logged as `accuracy` (and scored on held-out prompts)
    workers: int = 2  # worker processes per rank
    timeout_s: float = 10.0  # per call (a chunk, or one sample when a chunk is retried)
    chunk_size: int = 16  # samples per call
    # a sample whose reward raised, timed out, or gave NaN or None: left out of the loss (mask), or scored 0
    on_failure: Literal["mask", "zero"] = "mask"

    def __post_init__(self) -> None:
        labels = [spec.label for spec in self.functions]
        if not labels:
            raise ValueError("rewards.functions: name at least one reward function")
        if len(set(labels)) != len(labels):
            raise ValueError(f"rewards.functions: names must differ, got {labels} (set `name:`)")
        if self.accuracy is not None and self.accuracy not in labels:
            raise ValueError(f"rewards.accuracy is {self.accuracy!r}, not one of the rewards {labels}")


def resolve(path: str) -> Callable[..., Sequence[Any]]:
    """The function at ``module:function``; a clear error when it cannot be imported."""
    module_name, _, name = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reward function {path!r} cannot be imported: {err}") from None
    if not callable(function):
        raise ValueError(f"reward function {path!r} is not callable")
    return function


def call_reward(path: str, kwargs: dict, columns: dict[str, list]) -> list:
    """In a worker: the function's answer for one chunk (checked for its length)."""
    values = list(resolve(path)(**columns, **kwargs))
    size = len(next(iter(columns.values())))
    if len(values) != size:
        raise ValueError(f"{path} returned {len(values)} values for {size} samples")
    return values


@dataclass
class RewardOutcome:
    """Scores of a batch: per function (failures and None as 0) and their weighted sum, with counts."""

    values: dict[str, list[float]]
    total: list[float]
    failures: dict[str, dict[str, int]]  # per function: errors, timeouts, nonfinite
    no_reward: dict[str, int]  # per function: samples it gave None
    messages: dict[str, str]  # per function: the first failure's message
    failed: list[bool]  # per sample: some function failed on it or gave no reward (None)

    @property
    def failed_samples(self) -> int:
        """Scores that failed (raised, timed out, not finite), over every function."""
        return sum(counts[kind] for counts in self.failures.values() for kind in FAILURE_KINDS)

    @classmethod
    def merge(cls, parts: Sequence["RewardOutcome"], specs: Sequence[RewardSpec]) -> "RewardOutcome":
        """One outcome of consecutive parts of a batch (the ranks' shares, in order)."""
        labels = [s.label for s in specs]
        return cls(
            values={n: [v for p in parts for v in p.values[n]] for n in labels},
            total=[v for p in parts for v in p.total],
            failures={n: {k: sum(p.failures[n][k] for p in parts) for k in FAILURE_KINDS} for n in labels},
            no_reward={n: sum(p.no_reward[n] for p in parts) for n in labels},
            messages={n: next((p.messages[n] for p in parts if n in p.messages), "") for n in labels
                      if any(n in p.messages for p in parts)},
            failed=[f for p in parts for f in p.failed],
        )  # fmt: skip


class RewardRunner:
    """Scores batches with the configured reward functions in a process pool (see the module doc)."""

    def __init__(self, settings: RewardSettings):
        import pebble

        self.settings = settings
        self.specs = list(settings.functions)
        for spec in self.specs:  # fail at start, in this process, for a name that cannot be imported
            resolve(spec.path)
        # spawn, not fork: the trainer holds threads (gloo, torch) that a fork would copy mid-flight
        self.pool = pebble.ProcessPool(max_workers=settings.workers, context=multiprocessing.get_context("spawn"))

    def score(self, columns: dict[str, list], specs: Sequence[RewardSpec] | None = None) -> RewardOutcome:
        """Scores of the batch given as keyword lists (see :mod:`~dotsllm.posttrain.grpo.reward_functions`),
        by every configured function or by ``specs`` (some of them)."""
        specs = self.specs if specs is None else list(specs)
        size = len(next(iter(columns.values())))
        chunk = self.settings.chunk_size
        starts = list(range(0, size, chunk))
        futures = {
            (spec.label, start): self._schedule(spec, columns, range(start, min(start + chunk, size)))
            for spec in specs
            for start in starts
        }
        values = {spec.label: [0.0] * size for spec in specs}
        failures = {spec.label: dict.fromkeys(FAILURE_KINDS, 0) for spec in specs}
        no_reward = dict.fromkeys(values, 0)
        messages: dict[str, str] = {}
        failed = [False] * size
        for spec in specs:
            raw: list[Any] = [None] * size
            for start in starts:
                rows = range(start, min(start + chunk, size))
                answer, failure = self._result(futures[(spec.label, start)])
                if failure is None:
                    raw[start : rows.stop] = answer
                    continue
                singles = {i: self._schedule(spec, columns, range(i, i + 1)) for i in rows}
                for i, future in singles.items():
                    answer, failure = self._result(future)
                    if failure is None:
                        raw[i] = answer[0]
                    else:
                        kind, message = failure
                        failures[spec.label][kind] += 1
                        messages.setdefault(spec.label, f"sample {i}: {message}")
                        raw[i] = _FAILED
            for i, value in enumerate(raw):
                score = self._value(value)
                if score is not _FAILED and score is not None and math.isfinite(score):
                    values[spec.label][i] = score
                    continue
                failed[i] = True
                if score is None:
                    no_reward[spec.label] += 1
                elif score is not _FAILED:
                    failures[spec.label]["nonfinite"] += 1
                    messages.setdefault(spec.label, f"sample {i}: returned {value!r}")
        total = [sum(spec.weight * values[spec.label][i] for spec in specs) for i in range(size)]
        return RewardOutcome(values, total, failures, no_reward, messages, failed)

    def _schedule(self, spec: RewardSpec, columns: dict[str, list], rows: range):
        part = {name: column[rows.start : rows.stop] for name, column in columns.items()}
        return self.pool.schedule(call_reward, args=(spec.path, spec.kwargs, part), timeout=self.settings.timeout_s)

    @staticmethod
    def _result(future) -> tuple[list | None, tuple[str, str] | None]:
        try:
            return future.result(), None
        except FutureTimeout:
            return None, ("timeouts", "timed out")
        except Exception as err:  # the function raised, or its worker died (pebble.ProcessExpired)
            return None, ("errors", f"{type(err).__name__}: {err}")

    @staticmethod
    def _value(value: Any) -> Any:
        """A sample's answer as a float, None (no reward), or ``_FAILED`` left as is."""
        if value is _FAILED or value is None:
            return value
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan

    def close(self) -> None:
        self.pool.stop()
        self.pool.join()


_FAILED = object()  # a sample whose call failed (already counted)
