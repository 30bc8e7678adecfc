"""Parallel layouts give the single-process loss, gradients and expert-bias update (fp32, gloo).

One process builds dots1-tiny, saves its weights with dist_checkpointing and takes one training
step (DDP + ``get_forward_backward_func`` + ``finalize_model_grads``, 4 microbatches); it saves the
result: every weight replaced by its main_grad, the routers' updated ``expert_bias``. Then two
processes load those weights into each layout, take the same step on the same global batch, load
the reference result resharded to the layout and compare it with their own main_grads.
"""

from __future__ import annotations

import json

import pytest
from dist_launch import run_workers

from dotsllm.model.config import ParallelConfig

LAYOUTS = ["ep2", "tp2-etp2", "tp2-ep2", "pp2"]  # TP runs with sequence parallelism
RTOL = 1e-5


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("parity")
    run_workers(1, "reference", workdir)
    run_workers(2, "parity", workdir, *LAYOUTS)
    reference = json.loads((workdir / "reference.json").read_text())
    ranks = {name: [json.loads((workdir / f"{name}.rank{r}.json").read_text()) for r in range(2)] for name in LAYOUTS}
    return reference, ranks


def test_reference_step_is_not_trivial(results):
    reference, _ = results
    assert all(reference["grad_nonzero"].values())
    assert reference["expert_bias_moved"] and all(reference["expert_bias_moved"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_matches_single_process(results, layout):
    reference, ranks = results
    losses = [rank["loss"] for rank in ranks[layout] if rank["loss"] is not None]
    assert losses, "no rank reported a loss"
    for loss in losses:
        assert loss == pytest.approx(reference["loss"], rel=RTOL)
    for rank, found in enumerate(ranks[layout]):
        assert found["grads"], f"rank {rank} compared no gradients"
        worst = max(found["grads"], key=found["grads"].get)
        assert found["grads"][worst] < RTOL, f"rank {rank}: {worst} differs by {found['grads'][worst]:.2e}"
        assert all(diff < RTOL for diff in found["expert_bias"].values()), found["expert_bias"]
    assert sum(len(found["expert_bias"]) for found in ranks[layout]) >= len(reference["expert_bias_moved"])


def test_tp_without_ep_needs_etp_equal_tp():
    """megatron-core would reduce the TP-replicated experts' grads over the (size 1) DP group."""
    with pytest.raises(ValueError, match="etp must equal tp"):
        ParallelConfig(tp=2).data_parallel_size(2)
    assert ParallelConfig(tp=2, etp=2).data_parallel_size(2) == 1
