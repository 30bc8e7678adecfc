"""megatron-core 0.16.1 with ``calculate_per_token_loss`` and the sequence aux loss (everywhere).

One patch: ``transformer/moe/router.py`` ``TopKRouter._apply_seq_aux_loss`` reshapes the routing
map to ``[seq_length, batch x experts]`` and passes its first dimension, this rank's part of one
sequence, as the micro-batch's token count to ``attach_and_log_load_balancing_loss``. With per-token
loss the aux loss is multiplied by that count so that ``finalize_model_grads``' division by the
global token count leaves it weighted ``1 / (micro-batches x DP)``, which needs the micro-batch's
whole token count: counting one sequence shrinks the aux gradient by the micro-batch size, and under
sequence parallelism (each TP rank routes 1/TP of the tokens, and the router's grads are summed
over TP) counting one rank's share shrinks it by TP again. The patch passes
``count x batch size x TP-CP group size``: every gradient is then bit-identical to megatron's
per-micro-batch mean in one process (and equal to rel 1e-6 under TP, tests/distributed).
"""

from __future__ import annotations

import sys

from dotsllm.compat import apply_once

_APPLIED = False


def needed() -> bool:
    return True


def apply() -> bool:
    """Install the patch; idempotent. Returns whether it is active."""
    return apply_once(sys.modules[__name__])


def patch_seq_aux_loss_token_count() -> None:
    from megatron.core.transformer.moe.router import TopKRouter

    original = TopKRouter._apply_seq_aux_loss

    def _apply_seq_aux_loss(self, probs, scores_for_aux_loss, routing_map, seq_length, bsz, with_padding_mask=False):
        attach = self.attach_and_log_load_balancing_loss

        def attach_counting_the_whole_micro_batch(*args, valid_token_count=None, **kwargs):
            whole = valid_token_count * bsz * self.tp_cp_group.size()
            return attach(*args, valid_token_count=whole, **kwargs)

        self.attach_and_log_load_balancing_loss = attach_counting_the_whole_micro_batch
        try:
            return original(self, probs, scores_for_aux_loss, routing_map, seq_length, bsz, with_padding_mask)
        finally:
            del self.attach_and_log_load_balancing_loss

    TopKRouter._apply_seq_aux_loss = _apply_seq_aux_loss


PATCHES = [patch_seq_aux_loss_token_count]
