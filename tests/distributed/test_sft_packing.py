"""SFT packing changes nothing but speed: one step over conversations packed into rows (block-diagonal
attention, positions restarting) gives the gradients of the same conversations one per row — fp32,
rel 1e-5 — with data, tensor (sequence), expert and pipeline parallelism (2 processes, gloo)."""

import json

import pytest
from dist_launch import WORKER, run_workers

LAYOUTS = ["dp", "tp2-etp2", "ep2", "pp2"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sft_packing")
    run_workers(2, "packing", workdir, *LAYOUTS, timeout_s=300, worker=WORKER.with_name("sft_worker.py"))
    return {name: [json.loads((workdir / f"{name}.rank{r}.json").read_text()) for r in range(2)] for name in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_packed_step_has_the_gradients_of_one_conversation_per_row(results, layout):
    for rank, found in enumerate(results[layout]):
        assert found["packed_rows"] < 14 / 2  # packing really packs
        assert found["packed"]["tokens"] == found["alone"]["tokens"] == found["expected_tokens"]
        assert found["packed"]["loss"] == pytest.approx(found["alone"]["loss"], rel=1e-6)
        assert found["grads_nonzero"] > 0.9 * len(found["grads"])
        worst = max(found["grads"], key=found["grads"].get)
        assert found["grads"][worst] < 1e-5, f"rank {rank}: {worst} differs by {found['grads'][worst]:.2e}"
