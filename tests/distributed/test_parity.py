"""Parallel layouts give the single-process step: loss, gradients, weights after the optimizer step,
expert-bias update, logged aux loss and zero-sum-learning metrics (fp32, gloo), through the trainer's
own ``train_step``.

One process builds dots1-tiny, saves its weights and takes one step on a global batch of 4
micro-batches whose loss masks hold different token counts (so the per-token normalization over
micro-batches and DP ranks matters); it saves its grads and the weights after the step. Then 2 (or 4)
processes load those weights into each layout, take the same step, load the references resharded to
the layout and compare them with their own.
"""

from __future__ import annotations

import json

import pytest
from dist_launch import run_workers

from dotsllm.parallel import ParallelConfig

LAYOUTS = {  # TP runs with sequence parallelism; "-dopt": megatron's distributed optimizer
    2: ["ep2", "tp2-etp2", "tp2-ep2", "pp2", "pp2-vpp2-dopt"],
    4: ["tp2-pp2-ep2-vpp2", "tp2-pp2-ep2-dopt"],
}
RTOL = 1e-5


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("parity")
    run_workers(1, "reference", workdir)
    for nproc, layouts in LAYOUTS.items():
        run_workers(nproc, "parity", workdir, *layouts, timeout_s=300)
    reference = json.loads((workdir / "reference.json").read_text())
    ranks = {
        name: [json.loads((workdir / f"{name}.rank{r}.json").read_text()) for r in range(nproc)]
        for nproc, layouts in LAYOUTS.items()
        for name in layouts
    }
    return reference, ranks


def test_reference_step_is_not_trivial(results):
    reference, _ = results
    assert reference["update_applied"] and all(reference["grad_nonzero"].values())
    assert reference["expert_bias_moved"] and all(reference["expert_bias_moved"])
    assert 0.6 * 512 < reference["tokens"] < 0.8 * 512  # the masked global batch: 4 x 2 x 64 positions
    assert set(reference["aux_loss"]) == {"2", "3", "4"} and all(v > 0 for v in reference["aux_loss"].values())
    assert 0 < reference["zsl"]["zsl_D"] < 1 and reference["zsl"]["zsl_M"] > 0


@pytest.mark.parametrize("layout", [name for layouts in LAYOUTS.values() for name in layouts])
def test_layout_matches_single_process(results, layout):
    reference, ranks = results
    for rank, found in enumerate(ranks[layout]):
        assert found["update_applied"]
        assert found["loss"] == pytest.approx(reference["loss"], rel=RTOL), f"rank {rank}"
        assert found["tokens"] == reference["tokens"], f"rank {rank}"
        assert found["aux_loss"].keys() == reference["aux_loss"].keys()
        for layer, value in found["aux_loss"].items():
            assert value == pytest.approx(reference["aux_loss"][layer], rel=RTOL), f"rank {rank} layer {layer}"
        if "zsl" in found:  # ranks of the last pipeline stage: the zero-sum-learning metrics
            for key, value in found["zsl"].items():
                assert value == pytest.approx(reference["zsl"][key], rel=1e-4, abs=1e-7), f"rank {rank} {key}"
        for kind in ("weights_after_step", "grads", "expert_bias"):
            if kind == "grads" and layout.endswith("-dopt"):
                continue  # the distributed optimizer's grad buffers hold only this rank's shard
            assert found[kind], f"rank {rank} compared no {kind}"
            worst = max(found[kind], key=found[kind].get)
            assert found[kind][worst] < RTOL, f"rank {rank}: {kind} {worst} differs by {found[kind][worst]:.2e}"
    assert sum(len(found["expert_bias"]) for found in ranks[layout]) >= len(reference["expert_bias_moved"])
    assert any("zsl" in found for found in ranks[layout])


def test_tp_without_ep_needs_etp_equal_tp():
    """megatron-core would reduce the TP-replicated experts' grads over the (size 1) DP group."""
    with pytest.raises(ValueError, match="etp must equal tp"):
        ParallelConfig(tp=2).data_parallel_size(2)
    assert ParallelConfig(tp=2, etp=2).data_parallel_size(2) == 1
