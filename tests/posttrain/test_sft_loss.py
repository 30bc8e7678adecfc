"""SFT's loss is the per-token mean over the global batch: a long and a short answer in two
micro-batches give the mean over all answer tokens (not the mean of the two answers' means), and the
gradient of that mean — through the trainer's own step and megatron's schedules."""

import pytest
import torch

from dotsllm.chat_template import EncodedConversation
from dotsllm.posttrain.sft.packing import build_row, collate

SEQ = 32


def test_one_long_and_one_short_answer_give_the_token_mean(megatron_world):
    from dotsllm.model import Dots1ModelConfig, build_model
    from dotsllm.parallel import ParallelConfig
    from dotsllm.posttrain.sft.forward import sft_forward_step
    from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer
    from dotsllm.training.step import train_step

    cfg = Dots1ModelConfig.from_preset("dots1-tiny", moe_aux_loss_coeff=0.0)  # the LM loss alone
    settings = OptimizerSettings(weight_decay=0.0, clip_grad=0.0, use_distributed_optimizer=False)
    (chunk,), optimizer = build_model_and_optimizer(cfg, ParallelConfig(), "fp32", settings, lr=0.0)
    reference = build_model(cfg)
    reference.load_state_dict(chunk.module.state_dict())

    g = torch.Generator().manual_seed(0)
    long = EncodedConversation(torch.randint(10, 8000, (30,), generator=g).tolist(), [False] * 5 + [True] * 25)
    short = EncodedConversation(torch.randint(10, 8000, (12,), generator=g).tolist(), [False] * 10 + [True] * 2)
    batches = [collate([build_row([c], SEQ)]) for c in (long, short)]
    result = train_step([chunk], optimizer, [iter(batches)], 2, 1, SEQ, sft_forward_step)

    sums, counts = [], []
    for batch in batches:
        per_token = reference(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        sums.append((per_token * batch["loss_mask"]).sum())
        counts.append(batch["loss_mask"].sum())
    token_mean = sum(sums) / sum(counts)
    mean_of_means = sum(s / c for s, c in zip(sums, counts)) / 2
    assert [c.item() for c in counts] == [25, 2] and result["tokens"] == 27
    assert result["loss"] == pytest.approx(token_mean.item(), rel=1e-6)
    # the mean of the two answers' means is far outside that tolerance (an untrained model: ~0.4%)
    assert abs(mean_of_means.item() - token_mean.item()) > 1e-3 * token_mean.item()
    token_mean.backward()
    grads = dict(reference.named_parameters())
    for name, param in chunk.module.named_parameters():
        expected = grads[name].grad
        scale = expected.abs().max()
        assert scale > 0, name
        assert (param.main_grad - expected).abs().max() <= 1e-5 * scale, name
