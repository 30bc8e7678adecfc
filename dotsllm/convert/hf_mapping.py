"""dots1 weights: megatron-core ``GPTModel`` tensor names ⇄ HuggingFace hub names, one tensor at a time.

Megatron names are global and unsharded (TP=PP=EP=1 module ``state_dict`` names), in either layer
flavour: the local spec (``input_layernorm.weight``, ``pre_mlp_layernorm.weight``,
``experts.local_experts.E.linear_fc1.weight``) or Transformer Engine's (``linear_qkv.layer_norm_weight``,
``mlp.linear_fc1.layer_norm_weight``, grouped ``experts.linear_fc1.weightE``). HF names are the hub's,
with one tensor per expert. Three megatron tensors pack several HF ones:

- ``linear_qkv.weight``: per query group ``g``, the rows of its query heads, then its key head, then its
  value head (megatron's interleaved layout) ⇄ ``q_proj``, ``k_proj``, ``v_proj``;
- ``linear_fc1.weight`` (dense, shared and routed experts): gate rows, then up rows ⇄ ``gate_proj``, ``up_proj``.

Used by export, import and weight sync into a rollout engine: :func:`megatron_to_hf` streams HF tensors
from megatron ones; :func:`hf_to_megatron` builds each megatron tensor from the HF ones it packs.
Split tensors are views of their source; copy them before the source changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from dotsllm.model.config import Dots1ModelConfig

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorMap:
    """One megatron tensor and the HF tensors it packs.

    A packed tensor is ``groups`` repetitions of the HF tensors' rows, each HF tensor contributing
    ``rows / groups`` consecutive rows per repetition (qkv: one repetition per query group).
    """

    megatron_name: str
    hf_names: tuple[str, ...]
    hf_shapes: tuple[Shape, ...]
    groups: int = 1

    @property
    def megatron_shape(self) -> Shape:
        if len(self.hf_shapes) == 1:
            return self.hf_shapes[0]
        return (sum(shape[0] for shape in self.hf_shapes), *self.hf_shapes[0][1:])

    def to_hf(self, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if tuple(tensor.shape) != self.megatron_shape:
            raise ValueError(
                f"{self.megatron_name}: shape {tuple(tensor.shape)}, the model config needs {self.megatron_shape}"
            )
        if len(self.hf_names) == 1:
            return [(self.hf_names[0], tensor)]
        rows = [shape[0] // self.groups for shape in self.hf_shapes]
        parts = tensor.reshape(self.groups, -1, *tensor.shape[1:]).split(rows, dim=1)
        return [(name, part.reshape(shape)) for name, part, shape in zip(self.hf_names, parts, self.hf_shapes)]

    def to_megatron(self, hf_tensors: list[torch.Tensor]) -> torch.Tensor:
        for name, tensor, shape in zip(self.hf_names, hf_tensors, self.hf_shapes):
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)}, the model config needs {shape}")
        if len(hf_tensors) == 1:
            return hf_tensors[0]
        grouped = [t.reshape(self.groups, -1, *t.shape[1:]) for t in hf_tensors]
        return torch.cat(grouped, dim=1).reshape(self.megatron_shape)


def tensor_maps(cfg: Dots1ModelConfig, te: bool = False) -> list[TensorMap]:
    """Every tensor of the whole model, in layer order, named for the local (or TE) layer spec."""
    h, d = cfg.hidden_size, cfg.head_dim
    maps = [TensorMap("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), ((cfg.vocab_size, h),))]

    def add(megatron: str, hf: str | tuple[str, ...], *shapes: Shape, groups: int = 1) -> None:
        maps.append(TensorMap(megatron, (hf,) if isinstance(hf, str) else hf, shapes, groups))

    def mlp(megatron: str, hf: str, width: int, suffix: str = "") -> None:
        """A SwiGLU MLP; ``suffix`` numbers TE's grouped expert weights (``linear_fc1.weight3``)."""
        add(f"{megatron}.linear_fc1.weight{suffix}", (f"{hf}.gate_proj.weight", f"{hf}.up_proj.weight"),
            (width, h), (width, h))
        add(f"{megatron}.linear_fc2.weight{suffix}", f"{hf}.down_proj.weight", (h, width))

    for n in range(cfg.num_layers):
        m, hf = f"decoder.layers.{n}", f"model.layers.{n}"
        moe = n >= cfg.num_dense_layers
        attn = f"{m}.self_attention"
        add(f"{attn}.linear_qkv.layer_norm_weight" if te else f"{m}.input_layernorm.weight",
            f"{hf}.input_layernorm.weight", (h,))
        add(f"{attn}.linear_qkv.weight",
            (f"{hf}.self_attn.q_proj.weight", f"{hf}.self_attn.k_proj.weight", f"{hf}.self_attn.v_proj.weight"),
            (cfg.num_attention_heads * d, h), (cfg.num_query_groups * d, h), (cfg.num_query_groups * d, h),
            groups=cfg.num_query_groups)
        add(f"{attn}.linear_proj.weight", f"{hf}.self_attn.o_proj.weight", (h, cfg.num_attention_heads * d))
        if cfg.qk_layernorm:
            add(f"{attn}.q_layernorm.weight", f"{hf}.self_attn.q_norm.weight", (d,))
            add(f"{attn}.k_layernorm.weight", f"{hf}.self_attn.k_norm.weight", (d,))
        add(f"{m}.mlp.linear_fc1.layer_norm_weight" if te and not moe else f"{m}.pre_mlp_layernorm.weight",
            f"{hf}.post_attention_layernorm.weight", (h,))
        if not moe:
            mlp(f"{m}.mlp", f"{hf}.mlp", cfg.ffn_hidden_size)
            continue
        add(f"{m}.mlp.router.weight", f"{hf}.mlp.gate.weight", (cfg.num_experts, h))
        add(f"{m}.mlp.router.expert_bias", f"{hf}.mlp.gate.e_score_correction_bias", (cfg.num_experts,))
        for e in range(cfg.num_experts):
            hf_expert = f"{hf}.mlp.experts.{e}"
            if te:
                mlp(f"{m}.mlp.experts", hf_expert, cfg.moe_ffn_hidden_size, suffix=str(e))
            else:
                mlp(f"{m}.mlp.experts.local_experts.{e}", hf_expert, cfg.moe_ffn_hidden_size)
        if cfg.num_shared_experts:
            mlp(f"{m}.mlp.shared_experts", f"{hf}.mlp.shared_experts", cfg.shared_expert_ffn_hidden_size)
    add("decoder.final_layernorm.weight", "model.norm.weight", (h,))
    if cfg.untie_embeddings:
        add("output_layer.weight", "lm_head.weight", (cfg.vocab_size, h))
    return maps


@functools.lru_cache(maxsize=4)
def _by_megatron_name(cfg: Dots1ModelConfig) -> dict[str, TensorMap]:
    by_name = {m.megatron_name: m for te in (False, True) for m in tensor_maps(cfg, te)}
    # megatron's local spec checkpoints its norms under the TE names (sharded_state_dict_keys_map),
    # including MoE layers' pre-MLP norm as ``mlp.linear_fc1.layer_norm_weight``.
    for m in tensor_maps(cfg):
        if m.megatron_name.endswith(".pre_mlp_layernorm.weight"):
            alias = m.megatron_name.replace(".pre_mlp_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight")
            by_name.setdefault(alias, TensorMap(alias, m.hf_names, m.hf_shapes))
    return by_name


def tensor_map(megatron_name: str, cfg: Dots1ModelConfig) -> TensorMap:
    """The map of one megatron tensor (local or TE name); ``KeyError`` names an unknown tensor."""
    try:
        return _by_megatron_name(cfg)[megatron_name]
    except KeyError:
        raise KeyError(f"{megatron_name!r} is not a tensor of the dots1 model {cfg.name!r}") from None


def megatron_to_hf(
    named_tensors: Iterable[tuple[str, torch.Tensor]], cfg: Dots1ModelConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """HF (name, tensor) pairs for megatron ones, in input order; ``_extra_state`` entries are skipped.

    Give ``state_dict()`` items, not ``named_parameters()``: the expert biases are buffers.
    """
    for name, tensor in named_tensors:
        if not name.endswith("._extra_state"):
            yield from tensor_map(name, cfg).to_hf(tensor)


def hf_to_megatron(
    get_hf: Callable[[str], torch.Tensor], cfg: Dots1ModelConfig, te: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Megatron (name, tensor) pairs of the whole model, each built from ``get_hf(hf_name)`` calls."""
    for m in tensor_maps(cfg, te):
        yield m.megatron_name, m.to_megatron([get_hf(name) for name in m.hf_names])
