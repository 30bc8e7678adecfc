"""Prefix grouping changes nothing but cost: a GRPO update on prefix-grouped rows (each group's prompt
encoded once, ``[P; R1; …; RG]``) gives the standard rows' old log-probs, loss, gradients and weights —
fp32, dots1-tiny with MoE layers and router replay, G = 4 and a group of 2, responses of different
lengths, padding — in one process and under EP=2, TP=2 (sequence parallel) and PP=2 (2 processes,
gloo). The comparison is shown to catch a grouped layout whose positions do not restart, whose
responses see each other, or whose first response token is dropped or mispredicted."""

import json

import pytest
import torch

import grpo_prefix_worker as prefix
from dist_launch import WORKER, run_workers

LAYOUTS = ["ep2", "tp2-etp2", "pp2"]


def assert_grouped_equals_standard(found: dict, where: str) -> None:
    assert (found["standard_rows"], found["grouped_rows"]) == (14, 4), where  # 14 samples, 4 groups
    assert found["grouped_row_length"] < 64 and found["response_tokens"] > 4 * 14, where
    assert found["log_prob_max_diff"] < 1e-5, where
    standard, grouped = found["standard_update"], found["grouped_update"]
    assert standard["update_applied"] and grouped["update_applied"], where
    assert grouped["loss"] == pytest.approx(standard["loss"], rel=1e-6, abs=1e-6), where
    assert grouped["grad_norm"] == pytest.approx(standard["grad_norm"], rel=1e-5), where
    assert found["grads_nonzero"] > 0.9 * len(found["grads"]), where
    for key, limit in (("grads", 1e-5), ("weights_after", 1e-5), ("weight_updates", 1e-3)):
        worst = max(found[key], key=found[key].get)
        assert found[key][worst] < limit, f"{where}: {key} of {worst} differ by {found[key][worst]:.2e}"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grpo_prefix")
    run_workers(2, "exactness", workdir, *LAYOUTS, timeout_s=400, worker=WORKER.with_name("grpo_prefix_worker.py"))
    return {name: [json.loads((workdir / f"{name}.rank{r}.json").read_text()) for r in range(2)] for name in LAYOUTS}


def test_grouped_update_equals_the_standard_one_in_one_process(megatron_world):
    from dotsllm.parallel import ParallelConfig

    assert_grouped_equals_standard(prefix.exactness_of_layout(ParallelConfig()), "one process")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_grouped_update_equals_the_standard_one_in_parallel_layouts(layouts, layout):
    for rank, found in enumerate(layouts[layout]):
        assert_grouped_equals_standard(found, f"{layout} rank {rank}")


def test_the_comparison_catches_broken_grouped_rows(megatron_world):
    from dotsllm.parallel import ParallelConfig

    cfg = prefix.model_config()
    chunks, optimizer = prefix.build(cfg, ParallelConfig(), prefix_grouping=True)  # standard rows: causal
    standard_update, grouped_update = (prefix.policy_update(chunks, optimizer, grouped) for grouped in (False, True))
    batch = prefix.local_routing(cfg, standard_update.routers, prefix.samples(cfg))
    standard = prefix.log_probs(standard_update, *prefix.rows_for(standard_update, batch, False), len(batch))
    rows, seq = prefix.rows_for(grouped_update, batch, True)

    def difference(**changed: torch.Tensor) -> float:
        grouped = prefix.log_probs(grouped_update, {**rows, **changed}, seq, len(batch))
        return prefix.log_prob_difference(standard, grouped)

    assert difference() < 1e-5
    responses = rows["segment_ids"] > 0
    index, mask = rows["logit_index"].clone(), rows["response_mask"].clone()
    index[..., 0] += 1  # token 0 predicted from its own position, not the prompt's last
    mask[..., 0] = False
    broken = {
        "positions run on": {"position_ids": torch.arange(seq).expand(len(rows["tokens"]), seq)},
        "responses see each other": {"segment_ids": torch.where(responses, 1, rows["segment_ids"])},
        "first token mispredicted": {"logit_index": index},
        "first token dropped": {"response_mask": mask},
    }
    for name, changed in broken.items():
        assert difference(**changed) > 1e-3, name
