"""One megatron-core ``torch_dist`` checkpoint saved a group of tensors at a time, for state too large to hold.

``dist_checkpointing.save`` (and PyTorch DCP under it) plans a save from the whole state in memory;
no library saves one incrementally, hence this module. Each group is saved on its own into a scratch
folder with ``dist_checkpointing.save``; its files move into the checkpoint under a part prefix; at
the end one DCP ``.metadata`` lists the tensors of every part. The result differs from a one-shot
save only in its file names: loading it (into any layout) is the same.

What this relies on (torch 2.13, megatron-core 0.16.1; ``tests/test_hf_import.py`` checks that a
checkpoint saved here has the metadata of a one-shot save, and loads it into other layouts):

- DCP's ``Metadata.state_dict_metadata`` maps each key to a ``BytesStorageMetadata`` or a
  ``TensorStorageMetadata`` (size, dtype, ``chunks``); a tensor whose shards (e.g. a layer's stacked
  experts) fall in several groups gets the union of their chunks;
- ``Metadata.storage_data`` maps ``MetadataIndex(key, chunk offset)`` to a ``filesystem._StorageInfo``
  whose ``relative_path`` ``FileSystemReader`` resolves against the checkpoint folder;
- ``FileSystemWriter.finish(metadata, write_results)`` writes ``.metadata`` from them (atomically);
  megatron's extra ``all_local_plans`` attribute, which only its cached save plans use, is not kept;
- megatron's ``metadata.json`` and ``common.pt`` are the same for every group (no common state);
- see :func:`_without_prepended_axes` for the stacked experts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter, Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.storage import WriteResult

from dotsllm.training.checkpoint import MEGATRON_FILES  # written by every dist_checkpointing.save; kept once


def save_in_groups(groups: Iterable[dict[str, Any]], ckpt_dir: str | Path) -> None:
    """Save ``groups``, disjoint sharded state dicts that together make one state, as one checkpoint.

    ``ckpt_dir`` must exist and be empty. Each group is saved and dropped before the next is taken
    from ``groups`` (make it a generator): memory holds one group. Groups hold only sharded tensors
    and objects (the common state of each save is dropped). Needs a world of one. Nothing is fsynced
    here: :func:`~dotsllm.training.checkpoint.write_checkpoint` fsyncs every file of the result.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace, nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedBase, apply_factories

    if torch.distributed.get_world_size() != 1:
        raise RuntimeError(f"save_in_groups runs in a world of one, not {torch.distributed.get_world_size()}")
    ckpt_dir = Path(ckpt_dir)
    metadata = Metadata(state_dict_metadata={})
    results: list[WriteResult] = []
    i = -1
    for group in groups:  # not enumerate: its reused result tuple would hold a group while the next is built
        i += 1
        if any(not isinstance(value, ShardedBase) for value in nested_values(group)):
            raise ValueError(f"group {i} holds values other than sharded tensors and objects")
        apply_factories(group)
        dict_list_map_inplace(_without_prepended_axes, group)
        part = ckpt_dir / f".part{i:05d}"
        part.mkdir()
        # A group may hold only some shards of a tensor, which megatron's check of a save rejects:
        # each whole tensor is checked once all groups are in.
        dist_checkpointing.save(group, str(part), validate_access_integrity=False)
        del group  # before the next is built
        _add_part(metadata, results, part, prefix=f"part{i:05d}")
        if i == 0:
            for name in MEGATRON_FILES:
                os.replace(part / name, ckpt_dir / name)
        shutil.rmtree(part)
    if i < 0:
        raise ValueError(f"{ckpt_dir}: no groups to save")
    for key, item in metadata.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            _check_whole(key, item)
    FileSystemWriter(str(ckpt_dir)).finish(metadata, [results])


def _without_prepended_axes(item: Any) -> Any:
    """A ``ShardedTensor`` with prepended axes (a layer's experts stacked on the first) as the same shard
    with those axes in its data; other items as they are.

    megatron-core 0.16.1 saves shards with prepended axes through torch's legacy ``ShardedTensor``,
    which in a world of one needs every shard of the tensor in the same save (a group may hold only
    some experts); other shards go through its ``CheckpointableShardedTensor``, which writes the same
    chunk (offsets and sizes including the prepended axes).
    """
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    if not isinstance(item, ShardedTensor) or not item.prepend_axis_num:
        return item
    shape = (1,) * item.prepend_axis_num + item.local_shape
    return dataclasses.replace(item, data=item.data.reshape(shape), local_shape=shape, prepend_axis_num=0)


def _add_part(metadata: Metadata, results: list[WriteResult], part: Path, prefix: str) -> None:
    """Move the data files of the checkpoint ``part`` beside it, renamed ``<prefix><name>``; list its tensors."""
    saved = FileSystemReader(str(part)).read_metadata()
    for key, item in saved.state_dict_metadata.items():
        known = metadata.state_dict_metadata.setdefault(key, item)
        if known is item:
            continue
        tensors = isinstance(known, TensorStorageMetadata) and isinstance(item, TensorStorageMetadata)
        if not tensors or (known.size, known.properties) != (item.size, item.properties):
            raise ValueError(f"{key}: saved by two groups, not as shards of one tensor")
        known.chunks.extend(item.chunks)
    for index, info in saved.storage_data.items():
        stored = dataclasses.replace(info, relative_path=prefix + info.relative_path)
        results.append(WriteResult(index=index, size_in_bytes=info.length, storage_data=stored))
    for name in {info.relative_path for info in saved.storage_data.values()}:
        os.replace(part / name, part.parent / (prefix + name))


def _check_whole(key: str, item: TensorStorageMetadata) -> None:
    """The chunks of ``key`` are distinct and as large as the tensor (they are grid shards of the model's)."""
    offsets = {tuple(chunk.offsets) for chunk in item.chunks}
    stored = sum(math.prod(chunk.sizes) for chunk in item.chunks)
    if len(offsets) != len(item.chunks) or stored != math.prod(item.size):
        raise ValueError(f"{key}: the groups hold {stored} of its {math.prod(item.size)} elements")
