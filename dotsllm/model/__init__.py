"""The dots1 model: config presets, layer specs, builder, and parameter/FLOP counting."""

from dotsllm.model.builder import build_model, resolve_backend
from dotsllm.model.config import Dots1ModelConfig, list_presets

__all__ = ["Dots1ModelConfig", "build_model", "list_presets", "resolve_backend"]
