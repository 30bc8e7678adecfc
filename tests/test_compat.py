"""The CPU layer for megatron-core: each patch does what the upstream spot needs, and only on CPU."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from dotsllm.compat import megatron_cpu

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU layer is only active without CUDA")


@pytest.fixture(scope="module", autouse=True)
def applied():
    assert megatron_cpu.apply() is True


@pytest.fixture
def rng_tracker():
    """megatron's RNG tracker, with the process's RNG state restored afterwards."""
    from megatron.core.tensor_parallel import random as mc_random

    tracker = mc_random.get_cuda_rng_tracker()
    saved = (torch.get_rng_state(), tracker.get_states())
    yield tracker
    torch.set_rng_state(saved[0])
    tracker.set_states(saved[1])


def test_apply_is_idempotent():
    assert megatron_cpu.apply() is True
    assert sum(isinstance(mode, megatron_cpu.CudaToCpuMode) for mode in _function_modes()) == 1


def test_cuda_runtime_calls_are_cpu_noops():
    assert torch.empty(2, device=torch.cuda.current_device()).device.type == "cpu"
    stream = torch.cuda.Stream()
    event = torch.cuda.Event()
    with torch.cuda.stream(stream):
        event.record()
    torch.cuda.current_stream().wait_stream(stream)
    stream.wait_event(event)
    torch.cuda.synchronize()
    assert event.query() and stream.query()
    assert stream.record_event(event) is event
    # Still a class: libraries annotate with `torch.cuda.Stream | None` (transformers.generation).
    assert isinstance(stream, torch.cuda.Stream) and (torch.cuda.Stream | None) is not None


def test_current_device_works_inside_backward():
    """Backward runs outside the device-rewriting mode, as in megatron's `_AllToAll.backward`."""

    class AllocatesInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return torch.empty(grad.shape, device=torch.cuda.current_device()).copy_(grad)

    x = torch.ones(3, requires_grad=True)
    AllocatesInBackward.apply(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(3))


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.zeros(1, device="cuda"),
        lambda: torch.zeros(1, device="cuda:1"),
        lambda: torch.empty(1, device=0),
        lambda: torch.zeros(1, device=torch.device("cuda")),
        lambda: torch.ones(1).cuda(),
        lambda: torch.ones(1).to("cuda"),
        lambda: torch.ones(1).to(device="cuda", dtype=torch.float64),
        lambda: torch.empty(1, pin_memory=True),
    ],
)
def test_cuda_devices_land_on_cpu(make):
    assert make().device.type == "cpu"


def test_type_strings_name_the_cuda_type_of_the_dtype():
    assert torch.ones(1).type() == "torch.cuda.FloatTensor"
    assert torch.ones(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    assert torch.ones(1).type(torch.float64).dtype == torch.float64  # conversions are untouched


def test_rng_tracker_forks_reproducible_streams_per_name(rng_tracker):
    from megatron.core.tensor_parallel import random as mc_random

    def seed(tp_rank: int = 0) -> None:
        mc_random.model_parallel_cuda_manual_seed(123, tp_rank=tp_rank, ep_rank=0, etp_rank=0)

    def draw(name: str = mc_random._MODEL_PARALLEL_RNG_TRACKER_NAME) -> torch.Tensor:
        default_state = torch.get_rng_state()
        with rng_tracker.fork(name):
            sample = torch.rand(4)
        assert torch.equal(torch.get_rng_state(), default_state), "fork must restore the default stream"
        return sample

    seed()
    first, second = draw(), draw()
    expert = draw(mc_random._EXPERT_PARALLEL_RNG_TRACKER_NAME)
    assert not torch.equal(first, second), "a forked stream advances"
    assert not torch.equal(first, expert), "each name has its own stream"
    seed()
    assert torch.equal(draw(), first) and torch.equal(draw(), second)
    seed(tp_rank=1)
    assert not torch.equal(draw(), first), "tensor-parallel ranks get different streams"


def test_moe_split_sizes_are_numpy_like_on_gpu():
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    splits = torch.tensor([3, 0, 5])
    moved = moe_utils.maybe_move_tensor_to_cpu(splits, as_numpy=True)
    assert type(moved).__name__ == "ndarray" and moved.tolist() == [3, 0, 5]
    assert moe_utils.maybe_move_tensor_to_cpu(splits) is splits
    assert token_dispatcher.maybe_move_tensor_to_cpu is moe_utils.maybe_move_tensor_to_cpu


def test_torch_norm_under_sequence_parallel_marks_its_weight():
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    from dotsllm.model.config import Dots1ModelConfig


    model = Dots1ModelConfig.from_preset("dots1-tiny")
    config = model.transformer_config(tp=2, etp=2)
    norm = WrappedTorchNorm(config, 16, eps=1e-6)
    assert isinstance(norm, torch.nn.RMSNorm) and norm.eps == 1e-6
    assert norm.weight.sequence_parallel is True
    assert config.sequence_parallel, "the caller's config is not modified"
    plain = WrappedTorchNorm(model.transformer_config(), 16)
    assert not getattr(plain.weight, "sequence_parallel", False)


def test_wrong_megatron_version_is_a_clear_error(monkeypatch):
    from megatron.core import package_info

    monkeypatch.setattr(package_info, "__version__", "0.15.0")
    monkeypatch.setattr(megatron_cpu, "_APPLIED", False)
    monkeypatch.setattr(megatron_cpu, "PATCHES", [pytest.fail])
    with pytest.raises(RuntimeError, match=r"0\.15\.0 is installed: pip install megatron-core==0\.16\.1"):
        megatron_cpu.apply()


def test_apply_does_nothing_when_cuda_is_present():
    code = """
        import sys
        import torch
        torch.cuda.is_available = lambda: True
        current_device = torch.cuda.current_device
        from dotsllm.compat import megatron_cpu
        assert megatron_cpu.apply() is False
        assert torch.cuda.current_device is current_device
        assert torch._C._len_torch_function_stack() == 0
        assert "megatron.core" not in sys.modules
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def _function_modes() -> list:
    from torch.overrides import _get_current_function_mode_stack

    return _get_current_function_mode_stack()
