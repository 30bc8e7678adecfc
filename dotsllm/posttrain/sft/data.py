"""SFT's data part: sources (with weights) → conversations → multi-session samples → packed rows, read
step by step in a resumable order.

Everything is a function of the config and the seed, computed alike on every rank: the sources are
read and encoded, each upsampled by its weight, shuffled and grouped into samples of up to
``sessions_per_sample`` conversations (dots.llm1's multi-session concatenation); every epoch shuffles
the samples again and packs them first-fit-decreasing into rows of ``seq_length`` slots (or one per row
without packing) and shuffles the rows. Step k reads the global batch of rows that starts where step
k-1 ended, each data-parallel rank its contiguous slice: a resumed run reads what an uninterrupted one
would. Rejected records go to the errors file, and every count to the data report (rank 0 writes both).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from dotsllm.chat_template import DEFAULT_SYSTEM, ChatTemplate, EncodedConversation, LossMode, Message
from dotsllm.posttrain.sft.formats import Conversation, FieldMap, Rejected, read_records, to_conversation
from dotsllm.posttrain.sft.packing import build_row, collate, first_fit_decreasing
from dotsllm.training.step import current_device


@dataclass
class SFTSource:
    """A JSONL file or ``datasets`` dataset, and how many copies of it an epoch holds (0.5: half of it,
    drawn by the seed; 2.0: each record twice)."""

    path: str
    weight: float = 1.0
    fields: FieldMap = field(default_factory=FieldMap)


@dataclass
class SFTDataConfig:
    sources: list[SFTSource] = field(default_factory=list)
    valid: list[SFTSource] = field(default_factory=list)  # held-out conversations (validation loss, ZSL)
    tokenizer: str | None = None  # SentencePiece .model or HF tokenizer.json holding the chat tokens
    default_system: str | None = DEFAULT_SYSTEM  # for conversations without a system message; null: none
    loss_mode: LossMode = "assistant"
    packing: bool = True
    overlong: Literal["truncate", "drop"] = "truncate"  # a conversation over seq_length + 1 tokens
    sessions_per_sample: int = 1  # conversations concatenated into one multi-turn sample
    epochs: int = 1
    errors_file: str | None = None  # default RUN_DIR/sft_errors.jsonl

    def __post_init__(self) -> None:
        if self.sessions_per_sample < 1 or self.epochs < 1:
            raise ValueError("data.sessions_per_sample and data.epochs must be >= 1")


@dataclass
class Sample:
    """One training sample: an encoded conversation (or several sessions concatenated)."""

    encoded: EncodedConversation
    source: str
    line: int

    @property
    def slots(self) -> int:
        return len(self.encoded) - 1


class SampleBuilder:
    """Records → encoded samples, counting and keeping every rejection."""

    def __init__(self, template: ChatTemplate, config: SFTDataConfig, seq_length: int):
        self.template, self.config, self.seq_length = template, config, seq_length
        self.rejected: list[Rejected] = []
        self.counts: Counter = Counter()

    def conversations(self, source: SFTSource) -> list[Conversation]:
        found = []
        for line, record in read_records(source.path):
            self.counts["records"] += 1
            result = to_conversation(record, source.path, line, source.fields)
            if isinstance(result, Rejected):
                self.reject(result)
            elif self.fits(result):
                found.append(result)
        return found

    def reject(self, rejected: Rejected) -> None:
        self.rejected.append(rejected)
        self.counts[f"rejected_{rejected.kind}"] += 1

    def fits(self, conversation: Conversation) -> bool:
        """Whether a conversation is kept: an over-long one is dropped, unless the config truncates."""
        if self.config.overlong == "truncate" or (tokens := len(self.encode(conversation.messages))) <= self.seq_length + 1:
            return True
        self.reject(Rejected(conversation.source, conversation.line,
                             f"too_long: {tokens} tokens, more than seq_length + 1 = {self.seq_length + 1}"))  # fmt: skip
        return False

    def encode(self, messages: Sequence[Message]) -> EncodedConversation:
        return self.template.encode(messages, self.config.loss_mode)

    def samples(self, conversations: list[Conversation], rng: random.Random) -> list[Sample]:
        """Shuffled, grouped into multi-session samples that fit a row, encoded (truncated if need be)."""
        order = list(range(len(conversations)))
        rng.shuffle(order)
        samples: list[Sample] = []
        group: list[Conversation] = []
        for index in order:
            candidate = [*group, conversations[index]]
            if group and (len(candidate) > self.config.sessions_per_sample or len(self.merged(candidate)) > self.seq_length + 1):
                samples.append(self.sample(group))
                candidate = [conversations[index]]
            group = candidate
        if group:
            samples.append(self.sample(group))
        return [s for s in samples if s is not None]

    def merged(self, group: list[Conversation]) -> EncodedConversation:
        """One conversation of the group's turns, with the first one's system message."""
        messages = list(group[0].messages)
        for conversation in group[1:]:
            messages += [m for m in conversation.messages if m.role != "system"]
        return self.encode(messages)

    def sample(self, group: list[Conversation]) -> Sample | None:
        encoded = self.merged(group)
        first = group[0]
        if len(encoded) > self.seq_length + 1:
            keep = self.seq_length + 1
            encoded = EncodedConversation(encoded.ids[:keep], encoded.targets[:keep])
            if not any(encoded.targets):
                self.reject(Rejected(first.source, first.line, "too_long: no loss token left after truncation"))
                return None
            self.counts["truncated"] += 1
        return Sample(encoded, first.source, first.line)


def upsample(conversations: list[Conversation], weight: float, rng: random.Random) -> list[Conversation]:
    """``floor(weight)`` copies of each conversation and a random ``weight % 1`` share of them."""
    if weight < 0:
        raise ValueError(f"a source weight must be >= 0, got {weight}")
    whole, part = int(math.floor(weight)), weight - math.floor(weight)
    extra = rng.sample(conversations, round(part * len(conversations)))
    return conversations * whole + extra


def epoch_rows(sample_slots: list[int], seq_length: int, packing: bool, rng: random.Random) -> list[list[int]]:
    """One epoch: rows of sample indices (first-fit-decreasing over a shuffled order, or one per row), shuffled."""
    order = list(range(len(sample_slots)))
    rng.shuffle(order)
    if packing:
        rows = [[order[i] for i in row] for row in first_fit_decreasing([sample_slots[i] for i in order], seq_length)]
    else:
        rows = [[i] for i in order]
    rng.shuffle(rows)
    return rows


class SFTData:
    """The SFT data part of a trainer (the interface of :class:`~dotsllm.training.data.PretrainData`)."""

    def __init__(
        self,
        config: SFTDataConfig,
        template: ChatTemplate,
        seq_length: int,
        micro_batch_size: int,
        global_batch_size: int,
        seed: int,
        errors_file: Path,
    ):
        from megatron.core import parallel_state

        self.config, self.seq_length = config, seq_length
        self.micro_batch_size, self.global_batch_size = micro_batch_size, global_batch_size
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        if global_batch_size % (micro_batch_size * self.dp_size):
            raise ValueError(
                f"training.global_batch_size ({global_batch_size}) must be a multiple of micro_batch_size x DP "
                f"({micro_batch_size} x {self.dp_size})"
            )
        if not config.sources:
            raise ValueError("data.sources is empty: give at least one JSONL file or dataset")
        rng = random.Random(seed)
        self.builder = SampleBuilder(template, config, seq_length)
        conversations: list[Conversation] = []
        for source in config.sources:
            conversations += upsample(self.builder.conversations(source), source.weight, rng)
        self.samples = self.builder.samples(conversations, rng)
        slots = [s.slots for s in self.samples]
        self.rows = [row for epoch in range(config.epochs) for row in epoch_rows(slots, seq_length, config.packing, rng)]
        self.steps = len(self.rows) // global_batch_size
        self.train = self.rows[: self.steps * global_batch_size]  # whole global batches
        valid_builder = SampleBuilder(template, config, seq_length)
        valid_samples = valid_builder.samples([c for s in config.valid for c in valid_builder.conversations(s)], rng)
        self.valid_samples = valid_samples
        self.valid_rows = epoch_rows([s.slots for s in valid_samples], seq_length, config.packing, rng)
        self.report = self._report(valid_builder)
        if parallel_state.get_data_parallel_rank() == 0 and torch.distributed.get_rank() == 0:
            errors_file.parent.mkdir(parents=True, exist_ok=True)
            with errors_file.open("w") as f:
                for rejected in self.builder.rejected + valid_builder.rejected:
                    f.write(json.dumps(rejected.as_dict()) + "\n")

    def _report(self, valid_builder: SampleBuilder) -> dict:
        real = sum(self.samples[i].slots for row in self.train for i in row)
        return {
            **dict(sorted(self.builder.counts.items())),
            "rejected": len(self.builder.rejected),
            "samples": len(self.samples),
            "rows": len(self.rows),
            "steps": self.steps,
            "packing_efficiency": real / (len(self.train) * self.seq_length) if self.train else float("nan"),
            "valid_samples": len(self.valid_samples),
            "valid_rejected": len(valid_builder.rejected),
        }

    def row(self, indices: list[int], samples: list[Sample] | None = None) -> dict[str, torch.Tensor]:
        samples = self.samples if samples is None else samples
        return build_row([samples[i].encoded for i in indices], self.seq_length)

    def global_batch_samples(self, consumed_samples: int) -> int:
        return self.global_batch_size

    def microbatches(self, consumed_samples: int) -> Iterator[dict[str, torch.Tensor]]:
        """This DP rank's micro-batches of rows from ``consumed_samples`` on, on the training device."""
        device = current_device()
        per_rank = self.global_batch_size // self.dp_size
        mbs = self.micro_batch_size
        for step_start in range(consumed_samples, len(self.train), self.global_batch_size):
            start = step_start + self.dp_rank * per_rank
            for mb in range(start, start + per_rank, mbs):
                batch = collate([self.row(self.train[i]) for i in range(mb, mb + mbs)])
                yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def valid_batches(self, max_samples: int | None = None) -> list[dict[str, torch.Tensor]]:
        """This DP rank's share of the held-out rows (the first ``max_samples``), as micro-batches."""
        mbs = self.micro_batch_size
        available = len(self.valid_rows) if max_samples is None else min(max_samples, len(self.valid_rows))
        per_rank = available // self.dp_size // mbs * mbs
        start = self.dp_rank * per_rank
        rows = [self.row(self.valid_rows[i], self.valid_samples) for i in range(start, start + per_rank)]
        return [collate(rows[i : i + mbs]) for i in range(0, len(rows), mbs)]
