"""GRPO rollouts on the live model (dots1-tiny, fp32, one process): behaviour log-probs against the
trainer's log-prob pass, seeds, and router replay (the rollout's experts reused in the training forward)."""

import pytest
import torch

from dotsllm.posttrain.grpo.batch import micro_batches, training_rows
from dotsllm.posttrain.grpo.losses import LossSettings
from dotsllm.posttrain.grpo.policy_forward import PolicyForward
from dotsllm.posttrain.grpo.prompts import Prompt
from dotsllm.posttrain.grpo.rollout import BuiltinRollout, RolloutSettings, rollout

SEQ, NEW, MBS = 40, 12, 4
SETTINGS = RolloutSettings(group_size=3, prompts_per_step=3, temperature=0.7, top_k=50, top_p=0.95, max_new_tokens=NEW)


@pytest.fixture(scope="module")
def chunks(megatron_world):
    from dotsllm.model import Dots1ModelConfig
    from dotsllm.parallel import ParallelConfig
    from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer

    torch.manual_seed(5)
    chunks, _ = build_model_and_optimizer(
        Dots1ModelConfig.from_preset("dots1-tiny"), ParallelConfig(), "fp32",
        OptimizerSettings(use_distributed_optimizer=False), 3e-4, config_overrides={"moe_enable_routing_replay": True},
    )  # fmt: skip
    return chunks


@pytest.fixture(scope="module")
def prompts():
    generator = torch.Generator().manual_seed(1)
    return [
        (draw, Prompt(tuple(torch.randint(1, 8192, (n,), generator=generator).tolist()), "", {}, f"p{draw}"))
        for draw, n in zip((10, 11, 12), (7, 15, 4))
    ]


def pass_log_probs(chunks, samples, routers=None):
    """The trainer's log-prob pass (forward only, eval mode) over the samples' rows."""
    from dotsllm.model.routing_replay import routing_action
    from dotsllm.training.step import forward_outputs

    rows = training_rows(samples, SEQ, NEW)
    padded = len(samples) + (-len(samples)) % MBS
    rows = {k: torch.cat([v, v[: padded - len(samples)]]) for k, v in rows.items()}
    forward = PolicyForward(LossSettings(), SETTINGS.temperature, routers)
    context = routing_action(routers, "replay_forward") if routers else torch.no_grad()
    with context:
        outputs = forward_outputs(chunks, micro_batches(rows, MBS), MBS, SEQ, forward.log_probs_step)
    return tuple(t[: len(samples), 0] for t in (torch.cat(outputs), rows["response_mask"], rows["behaviour_log_probs"]))


def test_rollout_log_probs_equal_the_log_prob_pass_and_a_seed_reproduces_it(chunks, prompts):
    backend = BuiltinRollout(chunks, SETTINGS)
    free = rollout(backend, prompts, SETTINGS, stop_token_id=-1, seed=7)
    assert [s.draw for s in free] == [10, 10, 10, 11, 11, 11, 12, 12, 12]
    assert len({tuple(s.response) for s in free[3:6]}) == 3  # a group's samples differ
    stop = free[1].response[3]
    samples = rollout(backend, prompts, SETTINGS, stop, seed=7)  # the same seeds: the same draws, up to the stop
    for before, after in zip(free, samples):
        end = before.response.index(stop) + 1 if stop in before.response else len(before.response)
        assert after.response == before.response[:end] and after.truncated == (stop not in before.response)
        assert after.log_probs == pytest.approx(before.log_probs[:end], abs=1e-6)
    assert any(s.truncated for s in samples) and any(not s.truncated for s in samples)
    log_probs, mask, behaviour = pass_log_probs(chunks, samples)
    assert int(mask.sum()) == sum(len(s.response) for s in samples)
    torch.testing.assert_close(log_probs[mask], behaviour[mask], rtol=0, atol=1e-5)
    assert behaviour[mask].min() < -1  # not trivially near 0

    alone = rollout(backend, prompts[1:2], SETTINGS, stop, seed=7)  # its seeds follow its draw, not its batch
    assert [s.response for s in alone] == [s.response for s in samples[3:6]]
    reseeded = rollout(backend, prompts[:1], SETTINGS, -1, seed=8)
    assert all(a.response != b.response for a, b in zip(reseeded, free[:3]))


def test_recorded_routing_is_the_routing_of_a_full_forward(chunks, prompts):
    """Each token's experts as recorded slot by slot through the KV cache (prompts prefilled once per
    group) equal those of one full forward of prompt + response, in record mode."""
    from dotsllm.model.routing_replay import moe_routers, routing_action

    routers = moe_routers(chunks)
    samples = rollout(BuiltinRollout(chunks, SETTINGS), prompts, SETTINGS, -1, seed=3, record_routing=True)
    model = chunks[0].module
    for sample in samples[::2]:
        tokens = torch.tensor([[*sample.prompt.ids, *sample.response[:-1]]])
        assert sample.routing.shape == (tokens.shape[1], 3, 2)  # 3 MoE layers, top-2
        with routing_action(routers, "record"), torch.no_grad():
            model.eval()
            model(tokens, torch.arange(tokens.shape[1])[None], None)
            full = torch.stack([r.router_replay.get_recorded_indices() for r in routers], dim=1)
        model.train()
        assert torch.equal(sample.routing.long().sort(-1).values, full.sort(-1).values)


def test_router_replay_gives_the_rollout_log_probs_when_routing_would_differ(chunks, prompts):
    """With replay and unchanged weights, the log-prob pass reproduces the rollout's log-probs to 1e-6
    (relative: float32 log-probs near −10 are 1e-6 apart at one ULP, the KV cache's only difference).
    The routers' expert biases are then moved (they pick the top-k, not the weights): without replay
    the routing, hence the log-probs, change; with it they do not."""
    from dotsllm.model.routing_replay import moe_routers

    routers = moe_routers(chunks)
    samples = rollout(BuiltinRollout(chunks, SETTINGS), prompts, SETTINGS, -1, seed=4, record_routing=True)
    replayed, mask, behaviour = pass_log_probs(chunks, samples, routers)
    torch.testing.assert_close(replayed[mask], behaviour[mask], rtol=1e-6, atol=1e-7)
    saved = [r.expert_bias.clone() for r in routers]
    try:
        generator = torch.Generator().manual_seed(0)
        for router in routers:
            router.expert_bias.add_(torch.randn(router.expert_bias.shape, generator=generator))
        moved, _, _ = pass_log_probs(chunks, samples)
        moved_replayed, _, _ = pass_log_probs(chunks, samples, routers)
    finally:
        for router, bias in zip(routers, saved):
            router.expert_bias.copy_(bias)
    assert (moved[mask] - behaviour[mask]).abs().max() > 1e-2
    torch.testing.assert_close(moved_replayed[mask], behaviour[mask], rtol=1e-6, atol=1e-7)
    for router in routers:  # replay leaves no action and no indices behind
        assert router.router_replay.router_replay_action is None and router.router_replay.target_topk_idx is None
