"""Shared fixtures: a single-process megatron-core world (gloo on CPU) for in-process tests, a local SLURM."""

import pytest
import torch


@pytest.fixture(scope="session")
def megatron_world():
    """World of one process with megatron-core's parallel state (TP=PP=EP=1)."""
    from dotsllm.parallel import ParallelConfig
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


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory):
    """A one-node SLURM for the session (tests/slurm_cluster.py), stopped whether tests pass or fail.

    Skips, naming what is missing, where it cannot run (not root, no slurm-wlm/munge).
    """
    import slurm_cluster

    if reason := slurm_cluster.missing():
        pytest.skip(f"no local SLURM: {reason}")
    with slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("slurm"), requeue_delay_s=5) as cluster:
        yield cluster
