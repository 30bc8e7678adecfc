"""Without Transformer Engine, megatron-core's fp32 router gating works (on CPU and on GPU)."""

import pytest
import torch

from dotsllm.compat import megatron_without_te

pytestmark = pytest.mark.skipif(not megatron_without_te.needed(), reason="Transformer Engine is installed")


def test_router_gating_linear_runs_without_te():
    from megatron.core.transformer.moe.moe_utils import router_gating_linear

    assert megatron_without_te.apply() is True
    inp = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(4, 8, requires_grad=True)
    out = router_gating_linear(inp, weight, None, torch.float32)
    torch.testing.assert_close(out, inp @ weight.t())
    out.sum().backward()
    torch.testing.assert_close(weight.grad, inp.detach().sum(0).expand(4, 8))
