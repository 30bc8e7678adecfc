"""Log-probabilities and entropy of tokens from a forward's vocabulary-sharded logits, in any TP layout.

The logits at temperature T are ``logits / T``: the distribution the rollout sampled from (before
top-k/top-p), so ``log_softmax(logits / T)`` of a sampled token is its behaviour log-prob. Under tensor
parallelism each rank holds a slice of the vocabulary; megatron-core's ``vocab_parallel_cross_entropy``
(= −log p of the label) and the entropy below reduce over the TP group.
"""

from __future__ import annotations

import torch


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(logits / T)[label]`` per position: ``logits`` ``[..., vocab / TP]``, ``labels`` ``[...]``."""
    from megatron.core import tensor_parallel

    scaled = logits.float() / temperature  # a new tensor: megatron's cross entropy works in place on it
    return -tensor_parallel.vocab_parallel_cross_entropy(scaled, labels)


def vocab_parallel_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / T)`` per position, over the vocabulary shards of the TP group.

    megatron-core has no vocabulary-parallel entropy: ``H = log Σe^z − Σ e^z·z / Σe^z`` with
    ``z = logits / T − max``, its two sums all-reduced over TP (the gradient flows through them).
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

    scaled = logits.float() / temperature
    shift = scaled.detach().max(dim=-1, keepdim=True).values
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp > 1:
        torch.distributed.all_reduce(
            shift, op=torch.distributed.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group()
        )
    z = scaled - shift
    exp = torch.exp(z)
    total, weighted = exp.sum(-1), (exp * z).sum(-1)
    if tp > 1:
        total = reduce_from_tensor_model_parallel_region(total)
        weighted = reduce_from_tensor_model_parallel_region(weighted)
    return torch.log(total) - weighted / total


def response_layout(per_position: torch.Tensor, logit_index: torch.Tensor) -> torch.Tensor:
    """``[rows × slots, L, ...]``: for each response (slot) of each row of ``per_position`` ``[rows, s, ...]``,
    the entries at ``logit_index`` ``[rows, slots, L]`` (the positions whose next token is response token t)."""
    index = logit_index.to(per_position.device)
    rows = torch.arange(per_position.shape[0], device=per_position.device)[:, None, None]
    return per_position[rows, index].flatten(0, 1)
