"""What a dotsllm checkpoint holds, for every trainer and for imports: one schema.

A checkpoint directory (written by :class:`~dotsllm.training.checkpoint.Checkpointer` or
:func:`~dotsllm.training.checkpoint.write_checkpoint`) holds, through megatron-core
``dist_checkpointing``:

- ``model`` (``model0``, ``model1``, ... with virtual pipeline stages): the sharded model state;
- ``optimizer``: the optimizer state in a layout-free form (:mod:`dotsllm.training.optimizer_state`);
- ``rng``: each rank's RNG streams (restored only into the same layout);

and ``dotsllm.json``, a :class:`CheckpointMeta`: the kind, step and tokens seen, the model config, the
trainer's :class:`TrainState`, the sequence length and the layout that wrote it.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dotsllm.model.config import Dots1ModelConfig
from dotsllm.training import optimizer_state
from dotsllm.training.checkpoint import META_FILE, Checkpointer, read_meta


@dataclass
class TrainState:
    """A trainer's progress: what an exact resume restores besides model, optimizer and RNG."""

    step: int = 0
    consumed_samples: int = 0  # the data's position: samples (rows, prompts drawn) taken so far
    tokens_seen: int = 0
    nonfinite_skipped: int = 0


@dataclass
class CheckpointMeta:
    """The ``dotsllm.json`` of a checkpoint."""

    kind: str  # rolling | milestone | imported
    step: int
    tokens_seen: int
    model: dict[str, Any]  # Dots1ModelConfig fields
    train_state: dict[str, Any] = field(default_factory=lambda: dataclasses.asdict(TrainState()))
    trainer: str = "pretrain"  # which trainer wrote it: pretrain | sft | grpo | import
    seq_length: int | None = None  # None: no training progress (an import)
    parallel: dict[str, Any] | None = None  # the layout that saved it; None: written layout-free
    world_size: int | None = None
    has_optimizer: bool = False
    source: str | None = None  # where an import came from
    name: str | None = None  # the directory name, set when written

    @classmethod
    def read(cls, ckpt_dir: str | Path) -> "CheckpointMeta":
        values = read_meta(Path(ckpt_dir))
        if "train_state" not in values:  # written before the schema held it: flat keys
            values["train_state"] = {f.name: values[f.name] for f in dataclasses.fields(TrainState) if f.name in values}
        state = values["train_state"]
        if "tokens" in state:  # GRPO's count before TrainState held tokens_seen
            state["tokens_seen"] = state.pop("tokens")
        state.setdefault("tokens_seen", values["tokens_seen"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self, **overrides: Any) -> Dots1ModelConfig:
        """The architecture this checkpoint holds, with Dots1ModelConfig field ``overrides``."""
        stored = Dots1ModelConfig.from_dict(self.model, source=f"{self.name or 'checkpoint'}/{META_FILE}")
        return stored.with_overrides(**overrides)


def sharded_state(
    model_chunks: list[torch.nn.Module],
    optimizer=None,
    *,
    load_from: Path | None = None,
    with_rng: bool = True,
) -> dict[str, Any]:
    """A checkpoint's sharded state dict: to save, or to load ``load_from`` into.

    ``model_chunks`` may be DDP-wrapped (their modules' state is taken, not the wrapper's).
    """
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    modules = [getattr(chunk, "module", chunk) for chunk in model_chunks]
    state: dict[str, Any] = {
        _model_key(i, len(modules)): module.sharded_state_dict() for i, module in enumerate(modules)
    }
    if optimizer is not None:
        merged = {k: v for part in list(state.values()) for k, v in part.items()}
        saved = optimizer_state.saved_common_state(load_from) if load_from else None
        state["optimizer"] = optimizer_state.sharded_state_dict(optimizer, merged, saved)
    if with_rng:
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        state["rng"] = ShardedObject("rng_state", rng_state(), (world,), (rank,), replica_id=0)
    return state


def save(
    checkpointer: Checkpointer,
    kind: str,
    model_chunks: list[torch.nn.Module],
    optimizer,
    train_state: TrainState,
    *,
    model: dict[str, Any],
    parallel: dict[str, Any],
    seq_length: int,
    trainer: str,
) -> Path:
    """Save a training checkpoint (model, optimizer, RNG, train state) through ``checkpointer``."""
    meta = CheckpointMeta(
        kind=kind,
        step=train_state.step,
        tokens_seen=train_state.tokens_seen,
        model=model,
        train_state=dataclasses.asdict(train_state),
        trainer=trainer,
        seq_length=seq_length,
        parallel=parallel,
        world_size=torch.distributed.get_world_size(),
        has_optimizer=True,
    )
    return checkpointer.save(kind, sharded_state(model_chunks, optimizer), meta.as_dict())


def load(
    ckpt_dir: str | Path,
    model_chunks: list[torch.nn.Module],
    optimizer=None,
    *,
    parallel: dict[str, Any] | None = None,
) -> CheckpointMeta:
    """The one checkpoint reader: load ``ckpt_dir``'s weights into ``model_chunks`` (this rank's part
    in any layout), its optimizer state into ``optimizer`` when one is given and the checkpoint has
    one, and its RNG streams when ``parallel`` (the loading run's layout) is the one that wrote it.
    Returns its metadata (a trainer restores the train state from it)."""
    from megatron.core.dist_checkpointing import load as dist_load

    meta = CheckpointMeta.read(ckpt_dir)
    same_layout = (
        parallel is not None and meta.parallel == parallel and meta.world_size == torch.distributed.get_world_size()
    )
    with_optimizer = optimizer is not None and meta.has_optimizer
    state = sharded_state(
        model_chunks, optimizer if with_optimizer else None, load_from=ckpt_dir, with_rng=same_layout
    )  # fmt: skip
    loaded = dist_load(state, str(ckpt_dir))
    for i, chunk in enumerate(model_chunks):
        getattr(chunk, "module", chunk).load_state_dict(loaded[_model_key(i, len(model_chunks))])
    if with_optimizer:
        optimizer_state.load_state_dict(optimizer, loaded["optimizer"])
    if same_layout:
        set_rng_state(loaded["rng"])
    return meta


def _model_key(index: int, count: int) -> str:
    return f"model{index}" if count > 1 else "model"


def rng_state() -> dict[str, Any]:
    """Every RNG stream a rank uses: Python, NumPy, torch (CPU and CUDA) and megatron's tracker."""
    from megatron.core import tensor_parallel

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
