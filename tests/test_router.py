"""The dots1 router: sigmoid + bias for the choice, unbiased normalized scores x 2.5 to combine."""

import itertools

import torch

from dotsllm.model import build_model

from dotsllm.parallel import ParallelConfig
from dotsllm.training.fixed_batch import make_lm_batch
from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer
from dotsllm.training.step import train_step


def reference_route(x, weight, bias, top_k, scale):
    """dots1 / DeepSeek-V3 routing in plain PyTorch: returns dense combine weights [tokens, experts]."""
    scores = torch.sigmoid(x.double() @ weight.double().T)
    chosen = torch.topk(scores + bias.double(), top_k, dim=-1).indices
    picked = scores.gather(-1, chosen)
    weights = picked / picked.sum(-1, keepdim=True) * scale
    return torch.zeros_like(scores).scatter(-1, chosen, weights)


def moe_routers(model):
    from megatron.core.transformer.moe.router import TopKRouter

    return [m for m in model.modules() if isinstance(m, TopKRouter)]


def test_router_matches_reference(megatron_world, tiny_config):
    model = build_model(tiny_config)
    routers = moe_routers(model)
    assert len(routers) == tiny_config.num_layers - tiny_config.num_dense_layers
    router = routers[0]
    # A bias large enough to change the choice for many tokens, so a router that ignored it
    # (or used it in the combine weights) would fail.
    torch.manual_seed(0)
    with torch.no_grad():
        router.expert_bias.copy_(torch.randn(tiny_config.num_experts) * 0.3)
    x = torch.randn(64, 2, tiny_config.hidden_size)  # [seq, batch, hidden]
    probs, routing_map = router(x)
    flat = x.reshape(-1, tiny_config.hidden_size)
    expected = reference_route(
        flat, router.weight, router.expert_bias, tiny_config.moe_router_topk, tiny_config.moe_router_topk_scaling_factor
    )
    assert routing_map.sum(-1).eq(tiny_config.moe_router_topk).all()
    assert torch.equal(routing_map, expected > 0)
    torch.testing.assert_close(probs.double(), expected, rtol=1e-5, atol=1e-6)
    # The bias matters: without it the choice differs for some tokens.
    unbiased = reference_route(
        flat, router.weight, torch.zeros_like(router.expert_bias), tiny_config.moe_router_topk, 2.5
    )
    assert not torch.equal(unbiased > 0, routing_map)


def _expert_loads(model, batch):
    """Tokens routed to each expert, per MoE layer, for one forward of ``batch``."""
    loads = []
    hooks = [
        r.register_forward_hook(lambda mod, inp, out: loads.append(out[1].sum(0).float()))
        for r in moe_routers(model)
    ]
    with torch.no_grad():
        model(batch["tokens"], batch["position_ids"], None)
    for h in hooks:
        h.remove()
    return torch.stack(loads)


def test_expert_bias_moves_toward_balance(megatron_world, tiny_config):
    rate = 1e-2
    cfg = tiny_config.__class__(**{**tiny_config.__dict__, "moe_router_bias_update_rate": rate})
    # lr = 0: only the expert bias (updated in finalize_model_grads, not by the optimizer) changes.
    settings = OptimizerSettings(weight_decay=0.0, use_distributed_optimizer=False)
    ddp, optimizer = build_model_and_optimizer(cfg, ParallelConfig(), "fp32", settings, lr=0.0)
    model = ddp[0].module
    batch = make_lm_batch(torch.randint(0, cfg.vocab_size, (8, 65), generator=torch.Generator().manual_seed(1)))
    routers = moe_routers(model)

    def imbalance(loads):
        return (loads.max(-1).values / loads.mean(-1)).mean().item()

    first_loads = _expert_loads(model, batch)
    bias_before = torch.stack([r.expert_bias.clone() for r in routers])
    train_step(ddp, optimizer, itertools.repeat(batch), 1, 8, 64)
    bias_after = torch.stack([r.expert_bias.clone() for r in routers])
    # One update: +rate for under-loaded experts, -rate for over-loaded ones (sign rule).
    expected_step = rate * torch.sign(first_loads.mean(-1, keepdim=True) - first_loads)
    torch.testing.assert_close(bias_after - bias_before, expected_step, rtol=0, atol=1e-7)

    for _ in range(20):
        train_step(ddp, optimizer, itertools.repeat(batch), 1, 8, 64)
    # max/mean load: at least a third of the excess over perfect balance (1.0) is gone.
    assert imbalance(_expert_loads(model, batch)) - 1 < (imbalance(first_loads) - 1) * 2 / 3
