"""The policy's forward steps on GRPO rows, for megatron-core's schedules: response log-probs, and the loss.

Both run the same computation up to the log-probs (the rows' logits at the response positions, divided
by the rollout temperature), so with unchanged weights the training forward reproduces the log-prob
pass bit for bit: the first update's ratio is exactly 1.

The loss function follows :mod:`dotsllm.training.step`'s contract, ``(loss_sum, count, logs)`` with
the gradients divided by the global sum of ``count``. Its ``count`` is the micro-batch's whole token
count ``b × s`` (rows × row length) and its ``loss_sum`` the micro-batch's share of the aggregated mini-batch loss
(:func:`~dotsllm.posttrain.grpo.losses.sequence_weights`) times the mini-batch's global token count
``loss_scale``: the division then leaves exactly the aggregated loss in every mode, and megatron's MoE
aux loss, which it scales by the micro-batch's token count (``compat/megatron_per_token_loss``), keeps
the weight it has in pretraining (1 / (micro-batches × DP)) instead of growing with a sequence-count
denominator.

Rows are those of :mod:`dotsllm.posttrain.grpo.batch`, standard or prefix-grouped (then each micro-batch
passes its :class:`~dotsllm.model.prefix_grouped_attention.PrefixGroupLayout` to a model built for it);
the per-response tensors ``[b, slots, L]`` are flattened to the loss code's response layout
``[b × slots, L]``, the same code for both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

import torch

from dotsllm.model.prefix_grouped_attention import PrefixGroupLayout
from dotsllm.model.routing_replay import set_replay_targets
from dotsllm.posttrain.grpo.logprobs import response_layout, token_log_probs, vocab_parallel_entropy
from dotsllm.posttrain.grpo.losses import LossSettings, aggregate, policy_loss

# per-token statistics logged as means over response tokens: (log name, PolicyLoss field)
TOKEN_STATS = (
    ("pg_loss", "surrogate"), ("ratio", "ratio"), ("clip_low", "clipped_low"), ("clip_high", "clipped_high"),
    ("dual_clip", "dual_clipped"), ("kl", "kl"),
)  # fmt: skip

# per-response tensors of a micro-batch, [b, slots, ...] flattened to the response layout [b × slots, ...]
RESPONSE_TENSORS = ("response_mask", "response_tokens", "old_log_probs", "ref_log_probs", "advantages", "weights")


class PolicyForward:
    """Forward steps of one policy (or the frozen reference) on rows from :mod:`~dotsllm.posttrain.grpo.batch`.

    ``routers`` (this rank's, with replay on) replay each row's recorded ``routing``; ``prefix_grouping``:
    the rows are prefix-grouped (attention follows their ``segment_ids``; the model built with
    ``prefix_grouping``).
    """

    def __init__(
        self, settings: LossSettings, temperature: float, routers: Sequence[torch.nn.Module] | None = None,
        prefix_grouping: bool = False,
    ):  # fmt: skip
        self.settings = settings
        self.temperature = temperature
        self.routers = list(routers) if routers else None
        self.prefix_grouping = prefix_grouping

    def _forward(self, data_iterator: Iterator[dict[str, torch.Tensor]], model: torch.nn.Module):
        batch = next(data_iterator)
        if self.routers is not None and "routing" in batch:
            set_replay_targets(model, self.routers, batch["routing"])
        # the model's core attention reads a layout as the attention mask; None: causal
        layout = PrefixGroupLayout.from_segment_ids(batch["segment_ids"]) if self.prefix_grouping else None
        return model(batch["tokens"], batch["position_ids"], layout), batch

    def _response(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """Logits ``[b × slots, L, vocab / TP]`` of the positions predicting the response tokens."""
        return response_layout(logits, batch["logit_index"])

    def log_probs_step(self, data_iterator, model):
        """Forward-only step: its loss function gives the response log-probs ``[b, slots, L]`` (0 past
        each response)."""
        output, batch = self._forward(data_iterator, model)

        def log_probs(logits: torch.Tensor, non_loss_data: bool = True) -> torch.Tensor:
            labels = batch["response_tokens"].flatten(0, 1)
            values = token_log_probs(self._response(batch, logits), labels, self.temperature)
            return values.view(batch["response_mask"].shape) * batch["response_mask"]

        return output, log_probs

    def loss_step(self, data_iterator, model):
        """Training step: the GRPO loss of the micro-batch (see the module doc)."""
        output, batch = self._forward(data_iterator, model)
        return output, partial(self._loss, batch)

    def _loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor):
        flat = {name: batch[name].flatten(0, 1) for name in RESPONSE_TENSORS if name in batch}
        mask = flat["response_mask"]
        response_logits = self._response(batch, logits)
        log_probs = token_log_probs(response_logits, flat["response_tokens"], self.temperature)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.settings.entropy_coef != 0):
            entropy = vocab_parallel_entropy(response_logits, self.temperature) * mask
        terms = policy_loss(
            log_probs, flat["old_log_probs"], flat["advantages"], mask, self.settings,
            ref_log_probs=flat.get("ref_log_probs"), entropy=entropy,
        )  # fmt: skip
        loss_sum = aggregate(terms.loss, flat["weights"]) * batch["loss_scale"][0].double()
        count = torch.tensor(batch["tokens"].numel(), dtype=torch.int, device=loss_sum.device)
        tokens = mask.sum().double()
        logs = {"loss": torch.stack([loss_sum.detach(), count.to(loss_sum.dtype)])}
        for name, field in TOKEN_STATS:
            value = getattr(terms, field)
            if value is not None:
                logs[name] = torch.stack([value.double().sum(), tokens])
        logs["entropy"] = torch.stack([entropy.detach().double().sum(), tokens])
        logs["ratio_dev"] = torch.stack([((terms.ratio - 1).abs() * mask).double().sum(), tokens])
        return loss_sum, count, logs
