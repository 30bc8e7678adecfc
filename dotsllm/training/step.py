"""One optimizer step of causal-LM training through megatron-core's pipeline schedules."""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch


def lm_forward_step(data_iterator: Iterator[dict[str, torch.Tensor]], model: torch.nn.Module):
    """megatron-core ``forward_step_func``: masked mean next-token loss of one microbatch.

    A batch holds ``tokens``, ``labels``, ``loss_mask`` and ``position_ids`` ([b, s]) and an
    optional boolean ``attention_mask`` ([b, 1, s, s], True = masked out).
    """
    batch = next(data_iterator)
    output = model(
        batch["tokens"],
        batch["position_ids"],
        batch.get("attention_mask"),
        labels=batch["labels"],
    )

    def loss_func(per_token_loss: torch.Tensor):
        mask = batch["loss_mask"].to(per_token_loss.dtype)
        loss = (per_token_loss.float() * mask).sum() / mask.sum().clamp(min=1)
        return loss, {"lm loss": loss.detach().clone()}  # the schedule divides `loss` in place

    return output, loss_func


def attach_grad_hooks(ddp_chunks: list[torch.nn.Module], optimizer) -> None:
    """Tell the schedules how to scale the loss and finalize grads (DP/SP/EP reductions, expert bias)."""
    from megatron.core.distributed import finalize_model_grads

    for chunk in ddp_chunks:
        chunk.config.finalize_model_grads_func = finalize_model_grads
        chunk.config.grad_scale_func = optimizer.scale_loss
        chunk.config.no_sync_func = [c.no_sync for c in ddp_chunks] if len(ddp_chunks) > 1 else ddp_chunks[0].no_sync


def train_step(
    ddp_chunks: list[torch.nn.Module],
    optimizer,
    data_iterator: Any,
    num_microbatches: int,
    micro_batch_size: int,
    seq_length: int,
) -> dict[str, float]:
    """Forward/backward over ``num_microbatches`` and one optimizer step.

    Returns the loss averaged over microbatches and data-parallel ranks (identical on every
    rank), the grad norm, and whether the update was applied: a step whose loss is not finite
    is skipped on every rank.
    """
    for chunk in ddp_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    loss = _run_schedule(ddp_chunks, data_iterator, num_microbatches, micro_batch_size, seq_length, forward_only=False)
    if not math.isfinite(loss):
        return {"loss": loss, "grad_norm": float("nan"), "update_applied": False}
    update_applied, grad_norm, _ = optimizer.step()
    return {
        "loss": loss,
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "update_applied": bool(update_applied),
    }


@torch.no_grad()
def evaluate(ddp_chunks: list[torch.nn.Module], batches: list[dict], micro_batch_size: int, seq_length: int) -> float:
    """Mean loss of ``batches`` (this rank's micro-batches) over all DP ranks, without updates."""
    for chunk in ddp_chunks:
        chunk.eval()
    try:
        return _run_schedule(
            ddp_chunks, [iter(batches) for _ in ddp_chunks], len(batches), micro_batch_size, seq_length, forward_only=True
        )
    finally:
        for chunk in ddp_chunks:
            chunk.train()


def _run_schedule(ddp_chunks, data_iterator, num_microbatches, micro_batch_size, seq_length, forward_only) -> float:
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    losses = get_forward_backward_func()(
        forward_step_func=lm_forward_step,
        data_iterator=data_iterator,
        model=ddp_chunks,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    return _global_mean_loss(losses, parallel_state)


def _global_mean_loss(losses: list[dict[str, torch.Tensor]], parallel_state) -> float:
    """Mean loss over microbatches and DP ranks, sent from the last pipeline stage to all ranks."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    local = torch.stack([d["lm loss"] for d in losses]).mean() if losses else torch.zeros(())
    local = local.reshape(1).float().to(device)
    torch.distributed.all_reduce(local, group=parallel_state.get_data_parallel_group())
    local /= parallel_state.get_data_parallel_world_size()
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        last = parallel_state.get_pipeline_model_parallel_last_rank()
        torch.distributed.broadcast(local, src=last, group=parallel_state.get_pipeline_model_parallel_group())
    return float(local)
