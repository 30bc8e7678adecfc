"""With per-token loss, the sequence aux loss weighs in exactly as under megatron's per-micro-batch mean
(dotsllm/compat/megatron_per_token_loss.py; the TP case is in tests/distributed/test_parity.py)."""

import dataclasses

import torch

from dotsllm.compat import megatron_per_token_loss


def _grads(model_cfg, per_token: bool, batches):
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from dotsllm.model import build_model
    from dotsllm.training.optimizer import OptimizerSettings, build_optimizer, wrap_with_ddp
    from dotsllm.training.step import lm_forward_step

    torch.manual_seed(0)
    model = build_model(model_cfg, config_overrides={"calculate_per_token_loss": per_token})
    ddp = wrap_with_ddp([model], use_distributed_optimizer=False)
    optimizer = build_optimizer(ddp, OptimizerSettings(use_distributed_optimizer=False), lr=3e-4)
    ddp[0].config.finalize_model_grads_func = finalize_model_grads
    ddp[0].config.grad_scale_func = optimizer.scale_loss

    def mean_per_micro_batch(data_iterator, model):  # megatron's legacy (loss, logs) contract
        output, per_token_loss_func = lm_forward_step(data_iterator, model)
        return output, lambda out: (lambda s, n, logs: (s / n, logs))(*per_token_loss_func(out))

    get_forward_backward_func()(
        forward_step_func=lm_forward_step if per_token else mean_per_micro_batch,
        data_iterator=iter(batches), model=ddp, num_microbatches=len(batches), seq_length=64,
        micro_batch_size=2, forward_only=False,
    )  # fmt: skip
    return {n: p.main_grad.clone() for n, p in model.named_parameters()}


def test_seq_aux_loss_gradients_equal_the_per_micro_batch_mean(megatron_world, tiny_config):
    from dotsllm.training.fixed_batch import make_lm_batch

    assert megatron_per_token_loss.apply() is True
    cfg = dataclasses.replace(tiny_config, moe_aux_loss_coeff=1e-2)  # large enough to show in every router grad
    tokens = torch.randint(0, cfg.vocab_size, (4, 2, 65), generator=torch.Generator().manual_seed(3))
    batches = [make_lm_batch(t) for t in tokens]
    legacy, per_token = _grads(cfg, False, batches), _grads(cfg, True, batches)
    routers = [n for n in legacy if n.endswith("router.weight")]
    assert len(routers) == 3
    assert all(torch.equal(per_token[n], legacy[n]) for n in legacy)  # bit-identical: power-of-2 scales
