"""megatron-core 0.16.1 without Transformer Engine (CPU, or a GPU machine without TE).

One patch: ``transformer/moe/moe_utils.py`` defines ``te_general_gemm`` only when TE imports, but
``router_gating_linear`` (the fp32 router dots1 uses) reads it unconditionally: a NameError without
TE. Defining it as None selects megatron-core's own torch matmul path.
"""

from __future__ import annotations

import sys

from dotsllm.compat import apply_once

_APPLIED = False


def needed() -> bool:
    from megatron.core.transformer.moe import moe_utils

    return not moe_utils.HAVE_TE


def apply() -> bool:
    """Install the patch when TE is absent; idempotent. Returns whether it is active."""
    return apply_once(sys.modules[__name__])


def patch_router_gemm() -> None:
    from megatron.core.transformer.moe import moe_utils

    moe_utils.te_general_gemm = None


PATCHES = [patch_router_gemm]
