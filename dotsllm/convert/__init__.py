"""HF Dots1 ⇄ megatron-core weights: the name mapping and HF folder I/O."""

from dotsllm.convert.hf_io import export_hf, import_hf, iter_hf_as_megatron, load_into_model, read_hf_config
from dotsllm.convert.hf_mapping import TensorMap, hf_to_megatron, megatron_to_hf, tensor_map, tensor_maps

__all__ = [
    "TensorMap",
    "export_hf",
    "hf_to_megatron",
    "import_hf",
    "iter_hf_as_megatron",
    "load_into_model",
    "megatron_to_hf",
    "read_hf_config",
    "tensor_map",
    "tensor_maps",
]
