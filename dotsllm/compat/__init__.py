"""Patches for megatron-core 0.16.1, one module per situation that needs them.

``megatron_cpu``: a CPU-only torch (gloo). ``megatron_torch_adamw``: the distributed optimizer with
torch's AdamW (no TE/Apex). ``megatron_without_te``: no Transformer Engine. ``megatron_per_token_loss``:
the sequence aux loss under per-token loss normalization (every machine). Each module lists its ``PATCHES`` (each naming the upstream spot it
covers), says when it is ``needed()``, and installs them with :func:`apply_once`.
"""

from __future__ import annotations

from types import ModuleType

SUPPORTED_MEGATRON_CORE = "0.16.1"


def check_megatron_version() -> None:
    from megatron.core import package_info

    if package_info.__version__ != SUPPORTED_MEGATRON_CORE:
        raise RuntimeError(
            f"dotsllm's compat layer patches megatron-core {SUPPORTED_MEGATRON_CORE}, but "
            f"{package_info.__version__} is installed: pip install megatron-core=={SUPPORTED_MEGATRON_CORE}"
        )


def apply_once(module: ModuleType) -> bool:
    """Install ``module.PATCHES`` once, when ``module.needed()``, on the pinned megatron-core only.

    Returns whether the module's patches are active.
    """
    if module._APPLIED:
        return True
    if not module.needed():
        return False
    check_megatron_version()
    for patch in module.PATCHES:
        patch()
    module._APPLIED = True
    return True
