"""dots1-tiny trains on CPU through megatron-core's DDP, optimizer and schedule."""

import pytest

from dotsllm.training.fixed_batch import train_on_fixed_batch


def test_tiny_overfits_fixed_batch(megatron_world, tiny_config):
    losses = train_on_fixed_batch(tiny_config, steps=30)
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0], losses


def test_reported_loss_does_not_depend_on_the_microbatch_split(megatron_world, tiny_config):
    """The schedule divides each microbatch loss by their number in place; the logged loss must not."""
    import torch

    from dotsllm.parallel import ParallelConfig
    from dotsllm.training.fixed_batch import make_lm_batch
    from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer
    from dotsllm.training.step import train_step

    tokens = torch.randint(0, tiny_config.vocab_size, (4, 65), generator=torch.Generator().manual_seed(3))
    losses = []
    for micro in (4, 2, 1):
        torch.manual_seed(0)
        settings = OptimizerSettings(use_distributed_optimizer=False)
        ddp, optimizer = build_model_and_optimizer(tiny_config, ParallelConfig(), "fp32", settings, lr=3e-4)
        batches = [make_lm_batch(tokens[i : i + micro]) for i in range(0, 4, micro)]
        losses.append(train_step(ddp, optimizer, iter(batches), len(batches), micro, 64)["loss"])
    assert losses[0] > 8.0  # ~ln(vocab) at initialization
    assert losses[1] == pytest.approx(losses[0], rel=1e-6) and losses[2] == pytest.approx(losses[0], rel=1e-6)


def test_norms_and_biases_get_no_weight_decay(megatron_world, tiny_config):
    from dotsllm.parallel import ParallelConfig
    from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer, set_lr_and_weight_decay

    settings = OptimizerSettings(use_distributed_optimizer=False)
    ddp, optimizer = build_model_and_optimizer(tiny_config, ParallelConfig(), "fp32", settings, lr=3e-4)
    set_lr_and_weight_decay(optimizer, 2e-4, 0.1)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert all(g["lr"] == 2e-4 for g in optimizer.param_groups)
    model = ddp[0].module
    for name, param in model.named_parameters():
        main = getattr(param, "main_param", param)
        expected = 0.0 if param.dim() == 1 else 0.1
        assert decay_of.get(id(main), decay_of.get(id(param))) == expected, name


def _lm_batches(vocab_size: int, shape: tuple[int, int, int], seed: int = 3):
    import torch

    from dotsllm.training.fixed_batch import make_lm_batch

    micro, batch, seq = shape
    tokens = torch.randint(0, vocab_size, (micro, batch, seq + 1), generator=torch.Generator().manual_seed(seed))
    return [make_lm_batch(t) for t in tokens]


def _trainer_parts(model_cfg, lr=0.0, **settings):
    from dotsllm.parallel import ParallelConfig
    from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer

    torch = __import__("torch")
    torch.manual_seed(0)
    full = dict(weight_decay=0.0, clip_grad=0.0, use_distributed_optimizer=False) | settings
    return build_model_and_optimizer(model_cfg, ParallelConfig(), "fp32", OptimizerSettings(**full), lr=lr)


def test_loss_and_gradients_are_the_token_mean_over_micro_batches(megatron_world, tiny_config):
    """One micro-batch with a long answer, one with a short one: the step's loss and gradients are those
    of the mean over all loss tokens, not the mean of the two micro-batch means (SFT, GRPO token-mean)."""
    import dataclasses

    import torch

    from dotsllm.model import build_model
    from dotsllm.training.step import train_step

    cfg = dataclasses.replace(tiny_config, moe_aux_loss_coeff=0.0)  # only the LM loss in the gradient
    ddp, optimizer = _trainer_parts(cfg)
    batches = _lm_batches(cfg.vocab_size, (2, 1, 64))
    batches[0]["loss_mask"][:, :4] = 0  # 60 answer tokens
    batches[1]["loss_mask"][:, 4:] = 0  # 4 answer tokens
    reference = build_model(cfg)
    reference.load_state_dict(ddp[0].module.state_dict())
    per_token = [reference(b["tokens"], b["position_ids"], None, labels=b["labels"]) for b in batches]
    sums = [(loss * b["loss_mask"]).sum() for loss, b in zip(per_token, batches)]
    token_mean = (sums[0] + sums[1]) / 64
    token_mean.backward()

    result = train_step(ddp, optimizer, iter(batches), 2, 1, 64)
    assert result["tokens"] == 64
    assert result["loss"] == pytest.approx(token_mean.item(), rel=1e-6)
    assert abs(result["loss"] - (sums[0].item() / 60 + sums[1].item() / 4) / 2) > 1e-3  # not the mean of means
    grads = dict(reference.named_parameters())
    for name, param in ddp[0].module.named_parameters():
        expected = grads[name].grad
        assert (param.main_grad - expected).abs().max() <= 1e-5 * expected.abs().max(), name


def _seq_aux_loss_reference(hidden: "torch.Tensor", router) -> float:
    """dots1's sequence-wise balance loss of one micro-batch, by the formula: for each sequence,
    E / (k T^2) * sum_i (sum_t p_ti)(sum_t r_ti), p the normalized sigmoid scores and r the unbiased
    top-k choice; the mean over the micro-batch's sequences."""
    import torch

    s, b, _ = hidden.shape
    scores = torch.sigmoid(hidden.double() @ router.weight.double().T)  # [s, b, E]
    probs = scores / scores.sum(-1, keepdim=True)
    chosen = torch.zeros_like(probs).scatter(-1, probs.topk(router.topk, dim=-1).indices, 1.0)
    experts = probs.shape[-1]
    per_sequence = experts / (router.topk * s * s) * (probs.sum(0) * chosen.sum(0)).sum(-1)
    return per_sequence.mean().item()


@pytest.mark.parametrize("split", [(2, 2), (4, 1)], ids=["2x2", "4x1"])
def test_logged_aux_loss_is_the_per_step_value_of_each_layer(megatron_world, tiny_config, split):
    """megatron adds a layer's aux loss once per micro-batch: the logged value divides by them (and by
    the steps of the log window), whatever the split of the global batch."""
    from megatron.core.transformer.moe.router import TopKRouter

    from dotsllm.training.metrics import AuxLossMeter
    from dotsllm.training.step import train_step

    ddp, optimizer = _trainer_parts(tiny_config)
    micro, batch = split
    routers = {m.layer_number: m for m in ddp[0].module.modules() if isinstance(m, TopKRouter)}
    expected = {n: [] for n in routers}
    hooks = [
        r.register_forward_pre_hook(lambda r, args: expected[r.layer_number].append(_seq_aux_loss_reference(args[0], r)))
        for r in routers.values()
    ]
    meter = AuxLossMeter(sorted(routers), tiny_config.num_layers)
    for step in range(2):  # a log window of two steps
        batches = _lm_batches(tiny_config.vocab_size, (micro, batch, 64), seed=step)
        train_step(ddp, optimizer, iter(batches), micro, batch, 64)
        meter.add_step(micro)
    for hook in hooks:
        hook.remove()
    logged = meter.collect()
    assert sorted(logged) == [2, 3, 4] and all(len(v) == 2 * micro for v in expected.values())
    for layer, value in logged.items():
        assert value == pytest.approx(sum(expected[layer]) / len(expected[layer]), rel=1e-5), layer
    assert meter.collect() == {}  # a new window, with no step yet


def test_nonfinite_gradients_with_a_finite_loss_skip_the_update_and_keep_the_expert_bias(megatron_world, tiny_config):
    import torch

    from dotsllm.training.step import train_step

    ddp, optimizer = _trainer_parts(tiny_config, lr=1e-2)
    model = ddp[0].module
    batches = _lm_batches(tiny_config.vocab_size, (1, 2, 64))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    biases = {n: b.clone() for n, b in model.named_buffers() if n.endswith("expert_bias")}
    poisoned = model.decoder.layers[1].self_attention.linear_proj.weight
    hook = poisoned.register_hook(lambda grad: grad * float("nan"))
    result = train_step(ddp, optimizer, iter(batches), 1, 2, 64)
    hook.remove()
    assert torch.isfinite(torch.tensor(result["loss"])) and not result["update_applied"]
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert all(torch.equal(b, biases[n]) for n, b in model.named_buffers() if n in biases)

    result = train_step(ddp, optimizer, iter(batches), 1, 2, 64)  # the same step, unpoisoned
    assert result["update_applied"]
    assert not all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert not all(torch.equal(b, biases[n]) for n, b in model.named_buffers() if n in biases)
