"""dotsllm checkpoints (megatron-core ``dist_checkpointing``) ⇄ HF dots1 folders, and loading one for inference.

A checkpoint stores global tensors, so whatever TP/PP/EP/VPP saved it, one process reads it: the
model config comes from its ``dotsllm.json``. Export streams: the model's sharded state dict is built
on the meta device and loaded a group of tensors at a time (``dist_checkpointing.load`` reads only the
tensors it is asked for), so memory stays near one group plus one safetensors shard.

dotsllm checkpoints are trusted files (``dist_checkpointing`` unpickles their metadata); weights from
elsewhere come in as safetensors through :func:`import_to_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from dotsllm.convert.hf_io import export_hf, megatron_tensor_reader, read_hf_config
from dotsllm.model.config import Dots1ModelConfig
from dotsllm.training import checkpoint_state
from dotsllm.training.checkpoint import write_checkpoint
from dotsllm.training.checkpoint_state import CheckpointMeta

DEFAULT_GROUP_BYTES = 512 * 2**20
NO_INIT = {"perform_initialization": False}  # every weight is loaded


def checkpoint_model_config(ckpt_dir: str | Path) -> Dots1ModelConfig:
    """The model config recorded in a checkpoint's ``dotsllm.json``."""
    return CheckpointMeta.read(ckpt_dir).model_config()


def checkpoint_dtype(ckpt_dir: str | Path) -> torch.dtype:
    """The dtype the checkpoint stores its weights in (that of the word embeddings)."""
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_tensors_metadata(str(ckpt_dir))["embedding.word_embeddings.weight"].dtype


def iter_checkpoint_tensors(
    ckpt_dir: str | Path, cfg: Dots1ModelConfig, group_bytes: int = DEFAULT_GROUP_BYTES
) -> Iterator[tuple[str, torch.Tensor]]:
    """The whole model's (megatron name, tensor) pairs, read from ``ckpt_dir`` about ``group_bytes`` at a time.

    Needs a world of one. Names are the local spec's unsharded ``state_dict`` names; dtypes the checkpoint's.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    from dotsllm.model.accounting import build_meta_model

    stored = dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
    sharded = {k: v for k, v in build_meta_model(cfg).sharded_state_dict().items() if not k.endswith("._extra_state")}
    missing = sorted({v.key for v in sharded.values()} - set(stored))
    if missing:
        raise ValueError(f"{ckpt_dir}: {len(missing)} model tensor(s) missing, e.g. {missing[:5]}")

    def materialized(item):
        """``item`` with an empty CPU tensor of the stored dtype in place of its meta tensor."""
        dtype = stored[item.key].dtype
        if isinstance(item, ShardedTensorFactory):
            return dataclasses.replace(item, data=torch.empty(item.data.shape, dtype=dtype))
        return dataclasses.replace(item, data=torch.empty(item.local_shape, dtype=dtype), dtype=dtype)

    def read(group: dict) -> Iterator[tuple[str, torch.Tensor]]:
        loaded = dist_checkpointing.load(group, str(ckpt_dir))  # also returns the common (non-tensor) state
        return ((name, loaded[name]) for name in group)

    # A stored tensor is read whole (megatron stacks a layer's experts into one): group by stored key.
    by_key: dict[str, dict] = {}
    for name, item in sharded.items():
        by_key.setdefault(item.key, {})[name] = item
    units = ({name: materialized(item) for name, item in items.items()} for items in by_key.values())
    for group in _batched(units, group_bytes):
        yield from read(group)


def _batched(units: Iterable[dict[str, Any]], group_bytes: int) -> Iterator[dict[str, Any]]:
    """Consecutive units (dicts of sharded items) merged into groups of at most ``group_bytes`` of tensor
    data, or of one unit if it is larger. Lazy: units are taken one at a time, as the groups are used."""
    group: dict[str, Any] = {}
    group_size = 0
    for unit in units:
        size = sum(item.data.numel() * item.data.element_size() for item in unit.values() if item.data is not None)
        if group and group_size + size > group_bytes:
            yield group
            group, group_size = {}, 0
        group.update(unit)
        group_size += size
    if group:
        yield group


def export_checkpoint(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    tokenizer: str | Path | None = None,
    max_shard_bytes: int = 5 * 2**30,
    group_bytes: int | None = None,
) -> Path:
    """Write the HF ``Dots1ForCausalLM`` folder of a dotsllm checkpoint, streaming (see the module doc).

    Tensors are read ``group_bytes`` (default a quarter shard) at a time: peak memory is about one
    shard plus one group, whatever the model's size.
    """
    cfg = checkpoint_model_config(ckpt_dir)
    tensors = iter_checkpoint_tensors(ckpt_dir, cfg, group_bytes or max_shard_bytes // 4)
    return export_hf(
        tensors, cfg, out_dir, tokenizer_dir=tokenizer_dir, tokenizer=tokenizer, max_shard_bytes=max_shard_bytes
    )


def load_checkpoint_model(ckpt_dir: str | Path, dtype: torch.dtype | None = None, prefix_grouping: bool = False):
    """This rank's model of a checkpoint in the current ``parallel_state`` layout, in eval mode.

    Returns ``(chunks, cfg)``: one ``GPTModel`` per virtual pipeline stage (one without VPP), built for
    this rank's TP/PP/EP part; each rank reads only its own shards. A world of one holds the whole
    model. ``dtype`` defaults to the checkpoint's; ``prefix_grouping`` as
    :func:`~dotsllm.model.builder.build_model`.
    """
    from megatron.core import parallel_state

    from dotsllm.model.builder import build_model

    cfg = checkpoint_model_config(ckpt_dir)
    dtype = dtype or checkpoint_dtype(ckpt_dir)
    vpp = parallel_state.get_virtual_pipeline_model_parallel_world_size() or 1
    chunks = [
        build_model(
            cfg, params_dtype=dtype, vp_stage=vp if vpp > 1 else None, config_overrides=NO_INIT,
            prefix_grouping=prefix_grouping,
        )  # fmt: skip
        for vp in range(vpp)
    ]
    checkpoint_state.load(ckpt_dir, chunks)
    return [chunk.eval() for chunk in chunks], cfg


def import_to_checkpoint(
    hf_dir: str | Path,
    ckpt_dir: str | Path,
    group_bytes: int = DEFAULT_GROUP_BYTES,
) -> Path:
    """Write a dotsllm checkpoint (kind ``imported``, no optimizer state) from a HF dots1 folder, streaming.

    The model's sharded state dict is built on the meta device (with the HF dtype) and its tensors are
    read from the safetensors and saved ``group_bytes`` at a time (:func:`save_in_groups`; a larger
    tensor is a group of its own): peak memory grows with the group size (1-2 groups, some of them
    copied by megatron's save), not with the model's. The checkpoint is the one a save of the whole
    model writes (in other files): it loads under any TP/PP/EP. Needs a world of one.
    """
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from dotsllm.model.accounting import build_meta_model

    cfg = dataclasses.replace(read_hf_config(hf_dir), name=Path(hf_dir).resolve().name)
    read = megatron_tensor_reader(hf_dir, cfg)  # checks the whole folder before anything is written
    sharded = build_meta_model(cfg, params_dtype=getattr(torch, read_hf_dtype(hf_dir))).sharded_state_dict()

    def loaded(name: str, item):
        """``item`` holding its tensor read from ``hf_dir``, in the model's dtype (norms and biases: fp32)."""
        if isinstance(item, ShardedObject):  # a layer's ``_extra_state`` (None for local layers)
            return item
        return dataclasses.replace(item, data=read(name).to(item.data.dtype))

    # Lazy: each group is read when the previous one is saved.
    groups = (
        {"model": {name: loaded(name, item) for name, item in group.items()}}
        for group in _batched(({name: item} for name, item in sharded.items()), group_bytes)
    )
    meta = CheckpointMeta(
        kind="imported", step=0, tokens_seen=0, model=dataclasses.asdict(cfg), trainer="import",
        source=str(Path(hf_dir).resolve()),
    )  # fmt: skip
    return write_checkpoint(ckpt_dir, groups, meta.as_dict())


def read_hf_dtype(hf_dir: str | Path) -> str:
    """The weights' dtype named in a HF ``config.json`` (``dtype`` or the older ``torch_dtype``); float32 if absent."""
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"{hf_dir}/config.json: unsupported dtype {name!r}")
    return name
