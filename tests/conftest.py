"""Shared fixtures: a single-process megatron-core world (gloo on CPU) for in-process tests."""

import pytest
import torch


@pytest.fixture(scope="session")
def megatron_world():
    """World of one process with megatron-core's parallel state (TP=PP=EP=1)."""
    from dotsllm.model import ParallelConfig
    from dotsllm.parallel.setup import destroy_distributed, init_distributed

    init_distributed(ParallelConfig(), seed=1234)
    yield
    destroy_distributed()


@pytest.fixture
def tiny_config():
    from dotsllm.model import Dots1ModelConfig

    return Dots1ModelConfig.from_preset("dots1-tiny")


@pytest.fixture
def seeded():
    torch.manual_seed(0)
