"""Prefix grouping against the standard rows, by the GRPO trainer's own code: ``grpo_prefix_worker.py
exactness WORKDIR LAYOUT...`` under torchrun (one process is tests/distributed/test_grpo_prefix.py's
in-process case).

The batch: dots1-tiny (fp32, MoE, router replay of a synthetic routing), groups of G = 4 and one of 2
(a row holds any number of responses) with prompts of 5-17 tokens and responses of 1-10, standard rows padded
to 32. Two copies of the same weights each take one GRPO update (``PolicyUpdate``: the log-prob
pass, then the update against it), one on standard rows and one on grouped rows (a model built with
the prefix-grouped core attention, ``build_model(prefix_grouping=True)``). Written per layout and
rank: the largest difference of the old log-probs, of the loss, of every gradient, of every weight after
the update and of its change (each relative to the tensor's largest value; Adam divides each gradient
element by its own size, so the changes of elements whose gradient is ~eps amplify float noise). The
sequence aux loss and the expert-bias updates are off, as grouping requires.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

from dotsllm.model.config import Dots1ModelConfig

from dotsllm.parallel import ParallelConfig
from dotsllm.posttrain.grpo import batch as rows_of
from dotsllm.posttrain.grpo.prompts import Prompt
from dotsllm.posttrain.grpo.rollout import Sample
from worker import compare, modules, parse_layout

GROUP_SIZES, PROMPT_LENGTHS, NEW, SEQ, MICRO_BATCH = (4, 4, 2, 4), (11, 5, 17, 8), 10, 32, 4


def model_config() -> Dots1ModelConfig:
    return Dots1ModelConfig.from_preset("dots1-tiny", moe_aux_loss_coeff=0.0, moe_router_bias_update_rate=0.0)


def samples(cfg: Dots1ModelConfig) -> list[Sample]:
    """The groups (the same on every rank and layout), each sample's routing over all MoE layers: its
    group's prompt routing, then its own."""
    rng = random.Random(0)
    generator = torch.Generator().manual_seed(0)
    moe_layers, topk = sum(cfg.moe_layer_freq), cfg.moe_router_topk

    def routing(positions: int) -> torch.Tensor:
        scores = torch.rand(positions, moe_layers, cfg.num_experts, generator=generator)
        return scores.argsort(-1)[..., :topk].to(torch.int16)

    found = []
    for draw, (group, lp) in enumerate(zip(GROUP_SIZES, PROMPT_LENGTHS)):
        prompt = Prompt(tuple(rng.randrange(1, cfg.vocab_size) for _ in range(lp)), "", {}, f"p{draw}")
        prompt_routing = routing(lp)
        for _ in range(group):
            response = [rng.randrange(1, cfg.vocab_size) for _ in range(rng.randint(1, NEW))]
            log_probs = [-rng.random() for _ in response]
            own = torch.cat([prompt_routing, routing(len(response) - 1)])
            found.append(Sample(draw, prompt, response, log_probs, False, own))
    return found


def local_routing(cfg: Dots1ModelConfig, routers, batch: list[Sample]) -> list[Sample]:
    """``batch`` with each routing cut to this rank's MoE layers (a pipeline stage holds its own)."""
    layer_numbers = [i + 1 for i, moe in enumerate(cfg.moe_layer_freq) if moe]
    columns = [layer_numbers.index(router.layer_number) for router in routers]
    return [Sample(s.draw, s.prompt, s.response, s.log_probs, s.truncated, s.routing[:, columns]) for s in batch]


def policy_update(chunks, optimizer, prefix_grouping: bool):
    """GRPO's update of a rollout batch (``PolicyUpdate``: its rows, passes and updates) on ``chunks``."""
    from dotsllm.config_loading import from_dict
    from dotsllm.model.routing_replay import moe_routers
    from dotsllm.posttrain.grpo.update import PolicyUpdate
    from dotsllm.recipes.grpo import GRPOConfig

    config = from_dict(
        GRPOConfig,
        {
            "run_dir": "unused", "tokenizer": "unused",
            "training": {"seq_length": SEQ, "micro_batch_size": MICRO_BATCH, "precision": "fp32",
                         "prefix_grouping": prefix_grouping},
            "rollout": {"group_size": max(GROUP_SIZES), "max_new_tokens": NEW},
            "moe": {"router_replay": True, "aux_loss_coeff": 0.0},
        },
        where="grpo_prefix_worker",
    )  # fmt: skip
    return PolicyUpdate(config, chunks, optimizer, moe_routers(chunks), None, prefix_grouping)


def per_sample(values: torch.Tensor, sample_index: torch.Tensor, count: int) -> torch.Tensor:
    """Slot-layout ``values`` ``[rows, slots, L]`` back to one row per sample ``[count, L]``."""
    out = torch.zeros(count, values.shape[-1], dtype=values.dtype)
    present = sample_index >= 0
    out[sample_index[present]] = values[present]
    return out


def rows_for(update, batch: list[Sample], prefix_grouping: bool) -> tuple[dict[str, torch.Tensor], int]:
    """GRPO's rows of ``batch`` and their length."""
    groups = rows_of.shared_prompt_groups(batch) if prefix_grouping else None
    seq = update.row_length(batch, groups)
    return rows_of.training_rows(batch, seq, NEW, groups), seq


def log_probs(update, rows: dict[str, torch.Tensor], seq: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-prob pass (with replay) over all ``rows`` as one mini-batch: per-sample log-probs and mask."""
    with update.replay():
        values = update.log_probs(update.model_chunks, update.policy, rows, [list(range(len(rows["tokens"])))], seq)
    mask = per_sample(rows["response_mask"], rows["sample_index"], count)
    return per_sample(values, rows["sample_index"], count), mask


def log_prob_difference(standard: tuple[torch.Tensor, ...], grouped: tuple[torch.Tensor, ...]) -> float:
    """The largest |Δ log-prob| over response tokens; infinite when the two mark different tokens."""
    (values, mask), (other_values, other_mask) = standard, grouped
    if not torch.equal(mask, other_mask):
        return float("inf")
    return (values - other_values)[mask].abs().max().item()


def build(cfg: Dots1ModelConfig, layout: ParallelConfig, weights_from=None, prefix_grouping: bool = False):
    """Model chunks and optimizer; ``prefix_grouping``: with the prefix-grouped core attention."""
    from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer

    settings = OptimizerSettings(
        weight_decay=0.0, clip_grad=0.0, adam_eps=1e-3, use_distributed_optimizer=False
    )  # no clipping: the two updates are compared
    chunks, optimizer = build_model_and_optimizer(
        cfg, layout, "fp32", settings, 1e-3, {"moe_enable_routing_replay": True}, prefix_grouping=prefix_grouping
    )
    if weights_from is not None:
        for module, source in zip(modules(chunks), modules(weights_from)):
            module.load_state_dict(source.state_dict())
    return chunks, optimizer


def exactness_of_layout(layout: ParallelConfig) -> dict:
    """One layout's findings (see the module doc); megatron's parallel state is set up for ``layout``."""
    cfg = model_config()
    standard_chunks, standard_optimizer = build(cfg, layout)
    grouped_chunks, grouped_optimizer = build(cfg, layout, weights_from=standard_chunks, prefix_grouping=True)
    before = [p.detach().clone() for m in modules(standard_chunks) for p in m.parameters()]
    found: dict = {}
    results, grads, deltas = {}, {}, {}
    for name, chunks, optimizer in (("standard", standard_chunks, standard_optimizer),
                                    ("grouped", grouped_chunks, grouped_optimizer)):  # fmt: skip
        grouped = name == "grouped"
        update = policy_update(chunks, optimizer, grouped)
        batch = local_routing(cfg, update.routers, samples(cfg))
        rows, seq = rows_for(update, batch, grouped)
        found[f"{name}_rows"], found[f"{name}_row_length"] = len(rows["tokens"]), seq
        results[name] = log_probs(update, rows, seq, len(batch))
        advantages = [(-1.0) ** i * (0.5 + i / len(batch)) for i in range(len(batch))]
        updates, _ = update(batch, advantages, step=0)
        found[f"{name}_update"] = {k: updates[0][k] for k in ("loss", "tokens", "grad_norm", "update_applied")}
        params = [p for m in modules(chunks) for p in m.parameters()]
        grads[name] = [p.main_grad.clone() for p in params]
        deltas[name] = [p.detach() - b for p, b in zip(params, before)]
    names = [n for m in modules(standard_chunks) for n, _ in m.named_parameters()]
    found["log_prob_max_diff"] = log_prob_difference(results["standard"], results["grouped"])
    found["response_tokens"] = int(results["standard"][1].sum())
    found["grads"] = {n: compare(g, s) for n, g, s in zip(names, grads["grouped"], grads["standard"])}
    found["grads_nonzero"] = sum(bool(g.abs().max() > 0) for g in grads["standard"])
    found["weights_after"] = {
        n: compare(g + b, s + b) for n, g, s, b in zip(names, deltas["grouped"], deltas["standard"], before)
    }
    found["weight_updates"] = {n: compare(g, s) for n, g, s in zip(names, deltas["grouped"], deltas["standard"])}
    return found


def exactness(workdir: str, *layout_names: str) -> None:
    from megatron.core import parallel_state

    from dotsllm.parallel.setup import init_distributed

    for name in layout_names:
        layout, _ = parse_layout(name)
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        init_distributed(layout, seed=1234)
        found = exactness_of_layout(layout)
        Path(workdir, f"{name}.rank{torch.distributed.get_rank()}.json").write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    {"exactness": exactness}[sys.argv[1]](*sys.argv[2:])
