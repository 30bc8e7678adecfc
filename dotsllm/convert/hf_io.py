"""HF dots1 folders: write one from streamed megatron tensors, read one back as megatron tensors.

Weights are safetensors only: nothing here unpickles. Export holds at most one shard in memory;
import reads one tensor at a time, after checking every tensor's name and shape. Errors name the tensor and the file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dotsllm.convert.hf_mapping import hf_to_megatron, megatron_to_hf, tensor_map, tensor_maps
from dotsllm.convert.hf_tokenizer import complete_copied_tokenizer, generation_ids, write_hf_tokenizer
from dotsllm.model.config import Dots1ModelConfig
from dotsllm.tokenizer import Tokenizer

INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
)


def export_hf(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    cfg: Dots1ModelConfig,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    tokenizer: str | Path | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write a ``Dots1ForCausalLM`` folder from megatron (name, tensor) pairs of the whole model.

    Tensors keep their dtype; ``config.json`` records the embedding's. Every tensor of ``cfg`` must
    come exactly once (``_extra_state`` entries are ignored). The tokenizer comes from HF files
    (``tokenizer_dir``, copied) or from a dotsllm tokenizer (``tokenizer``: a SentencePiece ``.model``
    is converted); either way ``tokenizer_config.json`` carries the dots ``chat_template`` when the
    vocabulary has the chat tokens (:mod:`dotsllm.convert.hf_tokenizer`). With a tokenizer,
    ``config.json`` and ``generation_config.json`` get its token ids
    (:func:`~dotsllm.convert.hf_tokenizer.generation_ids`): generation stops at ``<|endofresponse|>`` or
    the end of document, row by row in a batch, and pads with the end of document.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    eod = None
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out)
        eod = complete_copied_tokenizer(out)
    if tokenizer is not None:
        write_hf_tokenizer(tokenizer, out)
        eod = Tokenizer(tokenizer).eod
    token_ids = generation_ids(out, eod)
    owner = {hf: m.megatron_name for m in tensor_maps(cfg) for hf in m.hf_names}
    unseen = set(owner)
    shards: list[list[str]] = []
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = total_bytes = 0
    dtype = None

    def flush() -> None:
        save_file(shard, out / f"shard-{len(shards)}.partial", metadata={"format": "pt"})
        shards.append(list(shard))
        shard.clear()

    for name, tensor in megatron_to_hf(named_tensors, cfg):
        if name not in unseen:
            raise ValueError(f"{owner[name]} was given twice")
        unseen.remove(name)
        nbytes = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + nbytes > max_shard_bytes:
            flush()
            shard_bytes = 0
        # A copy: split tensors are views, and the source may be a live parameter.
        shard[name] = tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        shard_bytes += nbytes
        total_bytes += nbytes
        if name == "model.embed_tokens.weight":
            dtype = tensor.dtype
    if unseen:
        missing = sorted({owner[name] for name in unseen})
        raise ValueError(f"export to {out}: {len(missing)} megatron tensor(s) missing, e.g. {missing[:5]}")
    flush()

    weight_map = {}
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (out / f"shard-{i}.partial").rename(out / file)
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    config = {**cfg.hf_config_dict(), "dtype": str(dtype).removeprefix("torch.")}
    if token_ids:  # config.json: one eos id, the tokenizer's (as transformers' configs hold it); generation_config: all
        config.update(token_ids, eos_token_id=token_ids["eos_token_id"][0])
        (out / GENERATION_CONFIG).write_text(json.dumps(token_ids, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def copy_tokenizer(tokenizer_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copy the HF tokenizer files of ``tokenizer_dir`` (or that one file, name kept) into ``out_dir``."""
    src = Path(tokenizer_dir)
    files = [src] if src.is_file() else [src / f for f in TOKENIZER_FILES if (src / f).is_file()]
    if not files:
        raise FileNotFoundError(f"no tokenizer files in {src}; looked for {list(TOKENIZER_FILES)}")
    for f in files:
        shutil.copy2(f, Path(out_dir) / f.name)
    return [f.name for f in files]


def read_hf_config(hf_dir: str | Path) -> Dots1ModelConfig:
    """The model config of a HF dots1 folder (from its ``config.json``)."""
    path = Path(hf_dir) / "config.json"
    return Dots1ModelConfig.from_hf_config(json.loads(path.read_text()), name=str(path))


def iter_hf_as_megatron(
    hf_dir: str | Path, cfg: Dots1ModelConfig, te: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Megatron (name, tensor) pairs of the whole model from a HF dots1 folder, named for the local (or TE) spec."""
    reader = _SafetensorsFolder(Path(hf_dir), cfg)
    yield from hf_to_megatron(reader.get, cfg, te)


def megatron_tensor_reader(hf_dir: str | Path, cfg: Dots1ModelConfig) -> Callable[[str], torch.Tensor]:
    """A function reading one megatron tensor (local or TE name) from a HF dots1 folder.

    The folder is checked at once: every tensor of ``cfg`` present with its shape (safetensors headers only).
    """
    reader = _SafetensorsFolder(Path(hf_dir), cfg)

    def read(megatron_name: str) -> torch.Tensor:
        m = tensor_map(megatron_name, cfg)
        return m.to_megatron([reader.get(name) for name in m.hf_names])

    return read


def import_hf(hf_dir: str | Path, model: torch.nn.Module, cfg: Dots1ModelConfig) -> None:
    """Load a HF dots1 folder into a single-stage, unsharded megatron ``GPTModel`` built from ``cfg``."""
    te = any(name.endswith(".layer_norm_weight") for name in model.state_dict())
    load_into_model(model, iter_hf_as_megatron(hf_dir, cfg, te))


def load_into_model(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy (name, tensor) pairs into ``model``'s state in place; each tensor of it must come exactly once."""
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("._extra_state")}
    for name, tensor in named_tensors:
        target = state.pop(name, None)
        if target is None:
            raise ValueError(f"{name}: not a tensor of the model, or given twice")
        if target.shape != tensor.shape:
            raise ValueError(f"{name}: shape {tuple(tensor.shape)}, the model has {tuple(target.shape)}")
        target.copy_(tensor)
    if state:
        raise ValueError(f"{len(state)} model tensor(s) not loaded, e.g. {sorted(state)[:5]}")


class _SafetensorsFolder:
    """The safetensors files of a HF folder, their tensors' names and shapes checked against ``cfg`` on opening.

    A file is opened for each read and closed after it: safetensors memory-maps it, and the pages a
    read touches would stay resident (counted in RSS) while it is open.
    """

    def __init__(self, folder: Path, cfg: Dots1ModelConfig) -> None:
        self.folder = folder
        self.shapes = {n: s for m in tensor_maps(cfg) for n, s in zip(m.hf_names, m.hf_shapes)}
        index = folder / INDEX
        if index.is_file():
            self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif (folder / "model.safetensors").is_file():
            with self._open("model.safetensors", "(all)") as handle:
                self.weight_map = dict.fromkeys(handle.keys(), "model.safetensors")
        else:
            raise FileNotFoundError(f"{folder}: neither {INDEX} nor model.safetensors")
        unexpected = sorted(set(self.weight_map) - set(self.shapes))
        if unexpected:
            raise ValueError(f"{folder}: {len(unexpected)} tensor(s) the model config lacks, e.g. {unexpected[:5]}")
        # Every tensor before any is read (headers only): a long import fails at once.
        by_file: dict[str, list[str]] = {}
        for name in self.shapes:
            if name not in self.weight_map:
                raise ValueError(f"{name}: missing from {self.folder}")
            by_file.setdefault(self.weight_map[name], []).append(name)
        for file, names in by_file.items():
            with self._open(file, names[0]) as handle:
                stored = set(handle.keys())
                for name in names:
                    if name not in stored:
                        raise ValueError(f"{name}: listed in {INDEX} but missing from {self.folder / file}")
                    shape = tuple(handle.get_slice(name).get_shape())
                    if shape != self.shapes[name]:
                        raise ValueError(
                            f"{name}: shape {shape} in {self.folder / file}, config.json needs {self.shapes[name]}"
                        )

    def _open(self, file: str, tensor: str) -> safe_open:
        try:
            return safe_open(self.folder / file, framework="pt")
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{tensor}: cannot read {self.folder / file} (truncated or corrupt?): {e}") from e

    def get(self, name: str) -> torch.Tensor:
        """The HF tensor ``name`` (checked when the folder was opened)."""
        with self._open(self.weight_map[name], name) as handle:
            return handle.get_tensor(name)
