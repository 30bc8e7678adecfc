"""Training data: megatron-core ``GPTDataset`` blends over token shards, read in a resumable order.

The order of samples is a pure function of ``consumed_samples``: step k reads the global batch
that starts where step k-1 ended, each data-parallel rank its contiguous slice of it. Resuming
from a checkpoint's ``consumed_samples`` therefore reads exactly the samples an uninterrupted run
would have read, whatever the batch ramp did in between.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from dotsllm.tokenizer import check_vocabulary
from dotsllm.training.schedules import BatchRamp
from dotsllm.training.step import current_device


@dataclass
class DataConfig:
    """Where the token shards are and how they are split and cached."""

    # Shard prefixes (``path/name`` for ``name.bin``/``name.idx``) or folders of shards (e.g. the
    # data pipeline's ``tokens/``), optionally weighted: ``[prefix, ...]`` or ``[[weight, prefix], ...]``.
    blend: list = field(default_factory=list)
    split: str = "99,1,0"  # train, valid, test (megatron-core's split string)
    cache_dir: str | None = None  # megatron-core's index cache (defaults to the run directory)
    tokenizer: str | None = None  # SentencePiece ``.model`` or HF ``tokenizer.json`` the shards were made with
    eod_token: str | None = None  # its end-of-document token, if not the default (dotsllm.tokenizer)
    vocab_size: int | None = None  # without a tokenizer file: the vocabulary of the shards
    eod_id: int | None = None  # without a tokenizer file: their end-of-document id
    num_workers: int = 2
    check_tokens_per_shard: int = 1_000_000  # tokens read per shard to validate ids (0 = all)


@dataclass(frozen=True)
class TokenizerInfo:
    """What megatron-core's ``GPTDataset`` needs of a tokenizer."""

    vocab_size: int
    eod: int
    pad: int = -1  # never a real token: GPTDataset masks the loss where labels == pad

    @property
    def unique_identifiers(self) -> OrderedDict:
        return OrderedDict(vocab_size=self.vocab_size, eod=self.eod)

    @classmethod
    def from_config(cls, config: DataConfig) -> "TokenizerInfo":
        """From ``data.tokenizer`` (its vocabulary and end-of-document token, by the rule of
        :class:`dotsllm.tokenizer.Tokenizer`, as the data pipeline wrote the shards), or from
        ``data.vocab_size`` and ``data.eod_id`` for shards without a tokenizer file."""
        if config.tokenizer:
            from dotsllm.tokenizer import Tokenizer

            tokenizer = Tokenizer(config.tokenizer, config.eod_token)
            for field_name, given, found in (("vocab_size", config.vocab_size, tokenizer.vocab_size),
                                             ("eod_id", config.eod_id, tokenizer.eod)):  # fmt: skip
                if given is not None and given != found:
                    raise ValueError(f"data.{field_name} is {given}, but tokenizer {config.tokenizer} has {found}")
            return cls(vocab_size=tokenizer.vocab_size, eod=tokenizer.eod)
        if config.vocab_size is None or config.eod_id is None:
            raise ValueError("data: set data.tokenizer, or both data.vocab_size and data.eod_id")
        return cls(vocab_size=config.vocab_size, eod=config.eod_id)


def parse_blend(blend: list) -> tuple[list[str], list[float] | None]:
    """``[path, ...]`` or ``[[weight, path], ...]`` → megatron-core's (prefixes, weights).

    A folder stands for every shard in it; its weight is split over them by size.
    """
    if not blend:
        raise ValueError("data.blend is empty: give at least one shard prefix or folder")
    if all(isinstance(item, str) for item in blend):
        weighted, explicit = [(1.0, item) for item in blend], False
    else:
        try:
            weighted, explicit = [(float(w), str(p)) for w, p in blend], True
        except (TypeError, ValueError):
            raise ValueError(f"data.blend must be a list of paths or of [weight, path] pairs, got {blend!r}")
    prefixes, weights = [], []
    for weight, path in weighted:
        if Path(path).is_dir():
            shards = sorted(str(p.with_suffix("")) for p in Path(path).glob("*.bin"))
            if not shards:
                raise FileNotFoundError(f"data.blend: folder {path} holds no .bin shards")
            sizes = [Path(f"{p}.bin").stat().st_size for p in shards]
            prefixes += shards
            weights += [weight * size / sum(sizes) for size in sizes]
            explicit = True
        else:
            prefixes.append(path)
            weights.append(weight)
    return prefixes, weights if explicit else None


def validate_shards(prefixes: list[str], tokenizer: TokenizerInfo, model_vocab_size: int, check_tokens: int) -> None:
    """Clear errors for missing shards and token ids the tokenizer or the model cannot have."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    check_vocabulary(tokenizer.vocab_size, model_vocab_size, "the shards' tokenizer")
    for prefix in prefixes:
        missing = [p for p in (f"{prefix}.bin", f"{prefix}.idx") if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"token shard {prefix!r}: missing {', '.join(missing)}")
        dataset = IndexedDataset(prefix, mmap=True)
        tokens = np.memmap(f"{prefix}.bin", dtype=dataset.index.dtype, mode="r")
        sample = tokens if check_tokens == 0 else tokens[:check_tokens]
        if sample.size and int(sample.max()) >= tokenizer.vocab_size:
            raise ValueError(
                f"token shard {prefix}.bin holds token id {int(sample.max())}, outside the tokenizer's "
                f"vocabulary of {tokenizer.vocab_size}: the shards were made with another tokenizer"
            )


def build_datasets(
    config: DataConfig,
    tokenizer: TokenizerInfo,
    seq_length: int,
    train_samples: int,
    valid_samples: int,
    seed: int,
    cache_dir: str,
):
    """(train, valid) GPTDatasets; valid is None when the split gives it nothing."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    dataset_config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=parse_blend(config.blend),
        split=config.split,
        path_to_cache=config.cache_dir or cache_dir,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, 0], lambda: True, dataset_config
    ).build()
    return train, valid


class StepBatchSampler(torch.utils.data.Sampler):
    """Micro-batches of sample indices for this DP rank, step after step, from ``consumed_samples``.

    The global batch of each step (in samples) comes from the batch ramp at the tokens seen so far.
    """

    def __init__(
        self,
        num_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        seq_length: int,
        batch_ramp: BatchRamp,
    ):
        self.num_samples = num_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seq_length = seq_length
        self.batch_ramp = batch_ramp

    def global_batch_samples(self, consumed_samples: int) -> int:
        return self.batch_ramp.global_batch_samples(
            consumed_samples * self.seq_length, self.seq_length, self.micro_batch_size * self.dp_size
        )

    def __iter__(self) -> Iterator[list[int]]:
        consumed = self.consumed_samples
        while True:
            global_batch = self.global_batch_samples(consumed)
            if consumed + global_batch > self.num_samples:
                return
            per_rank = global_batch // self.dp_size
            start = consumed + self.dp_rank * per_rank
            for mb_start in range(start, start + per_rank, self.micro_batch_size):
                yield list(range(mb_start, mb_start + self.micro_batch_size))
            consumed += global_batch


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([s[key] for s in samples]) for key in ("tokens", "labels", "loss_mask", "position_ids")}


class PretrainData:
    """Pretraining's data part: GPTDataset blends sized for the run, read step by step.

    The train dataset holds exactly the samples the batch ramp consumes until the token budget is
    reached (:meth:`BatchRamp.samples_to_reach`), so the last step is never cut short.
    """

    def __init__(
        self,
        config: DataConfig,
        model_vocab_size: int,
        seq_length: int,
        micro_batch_size: int,
        batch_ramp: BatchRamp,
        train_tokens: float,
        eval_samples: int,
        seed: int,
        cache_dir: str,
    ):
        from megatron.core import parallel_state

        self.config = config
        self.seq_length = seq_length
        self.micro_batch_size = micro_batch_size
        self.batch_ramp = batch_ramp
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.tokenizer = TokenizerInfo.from_config(config)
        prefixes, _ = parse_blend(config.blend)
        validate_shards(prefixes, self.tokenizer, model_vocab_size, config.check_tokens_per_shard)
        self.steps, self.train_samples = batch_ramp.samples_to_reach(
            train_tokens, seq_length, micro_batch_size * self.dp_size
        )
        self.train, self.valid = build_datasets(
            config, self.tokenizer, seq_length, self.train_samples, eval_samples, seed, cache_dir
        )

    def _sampler(self, consumed_samples: int) -> StepBatchSampler:
        return StepBatchSampler(
            len(self.train), consumed_samples, self.micro_batch_size, self.dp_rank, self.dp_size,
            self.seq_length, self.batch_ramp,
        )  # fmt: skip

    def global_batch_samples(self, consumed_samples: int) -> int:
        return self._sampler(consumed_samples).global_batch_samples(consumed_samples)

    def microbatches(self, consumed_samples: int) -> Iterator[dict[str, torch.Tensor]]:
        """This DP rank's micro-batches from ``consumed_samples`` on, on the training device
        (DataLoader workers prefetch)."""
        loader = torch.utils.data.DataLoader(
            self.train,
            batch_sampler=self._sampler(consumed_samples),
            num_workers=self.config.num_workers,
            collate_fn=collate,
            persistent_workers=False,
        )
        device = current_device()
        return ({k: v.to(device, non_blocking=True) for k, v in batch.items()} for batch in loader)

    def valid_batches(self, max_samples: int | None = None) -> list[dict[str, torch.Tensor]]:
        """This DP rank's share of the validation samples (the first ``max_samples``), as micro-batches."""
        if self.valid is None:
            return []
        mbs = self.micro_batch_size
        available = len(self.valid) if max_samples is None else min(max_samples, len(self.valid))
        per_rank = available // self.dp_size // mbs * mbs
        start = self.dp_rank * per_rank
        return [collate([self.valid[i] for i in range(s, s + mbs)]) for s in range(start, start + per_rank, mbs)]

