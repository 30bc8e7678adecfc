"""One optimizer step through megatron-core's pipeline schedules, with the loss as a parameter.

A *forward step* is megatron-core's ``forward_step_func(data_iterator, model) -> (output, loss_func)``.
Its ``loss_func(output)`` returns ``(loss_sum, num_tokens, logs)``: the loss summed over the
micro-batch's loss-bearing tokens, their count (an int tensor), and ``logs``, a dict of ``[sum, count]``
tensors to report. The schedules run with ``calculate_per_token_loss`` (set by the model config), so
they neither average per micro-batch nor per DP rank: ``finalize_model_grads`` divides the gradients
by the global token count. Loss and gradients are then the per-token mean over every micro-batch and
data-parallel rank, whatever the masks (SFT answers of different lengths, GRPO token means) — and for
pretraining (all-ones masks) the same as a mean of micro-batch means.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import torch

ForwardStep = Callable[[Iterator[dict[str, torch.Tensor]], torch.nn.Module], tuple[torch.Tensor, Callable]]


def current_device() -> torch.device:
    """The device this rank trains on: its CUDA device, or the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def masked_token_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """The per-token loss function of a micro-batch: ``(sum, count, {"loss": [sum, count]})``.

    The sum is float64 (exact token counts, and a reported loss to ~1e-12 whatever the micro-batch
    size); its gradient, 1 per loss token, is the same in any precision.
    """
    mask = loss_mask.to(per_token_loss.device, torch.float64)
    loss_sum = (per_token_loss.double() * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    return loss_sum, num_tokens, {"loss": torch.stack([loss_sum.detach(), mask.sum()])}


def lm_forward_step(data_iterator: Iterator[dict[str, torch.Tensor]], model: torch.nn.Module):
    """Next-token loss of one micro-batch (pretraining's and SFT's forward step).

    A batch holds ``tokens``, ``labels``, ``loss_mask`` and ``position_ids`` ([b, s]) and an
    optional boolean ``attention_mask`` ([b, 1, s, s], True = masked out).
    """
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch["labels"])
    return output, lambda per_token_loss: masked_token_loss(batch["loss_mask"], per_token_loss)


def attach_grad_hooks(ddp_chunks: list[torch.nn.Module], optimizer) -> None:
    """Tell the schedules how to scale the loss and finalize grads (DP/SP/EP reductions, expert bias)."""
    from megatron.core.distributed import finalize_model_grads

    for chunk in ddp_chunks:
        if not chunk.config.calculate_per_token_loss:
            raise ValueError("the model config must set calculate_per_token_loss (Dots1ModelConfig does)")
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
    forward_step: ForwardStep = lm_forward_step,
) -> dict[str, Any]:
    """Forward/backward over ``num_microbatches`` and one optimizer step.

    Returns the per-token means of the forward step's logs (``loss`` among them; identical on every
    rank), ``tokens`` (the global count of loss tokens), the grad norm, and whether the update was
    applied. A step whose loss or gradients are not finite is skipped on every rank, and the MoE
    routers' expert biases (which ``finalize_model_grads`` has already moved) are put back.
    """
    for chunk in ddp_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    biases = _expert_biases(ddp_chunks)
    saved_biases = [b.clone() for b in biases]
    logs = _run_schedule(ddp_chunks, data_iterator, num_microbatches, micro_batch_size, seq_length, forward_step, False)
    result: dict[str, Any] = {**logs, "grad_norm": float("nan"), "update_applied": False}
    if not (math.isfinite(logs["loss"]) and _grads_are_finite(ddp_chunks)):
        with torch.no_grad():
            for bias, saved in zip(biases, saved_biases):
                bias.copy_(saved)
        return result
    update_applied, grad_norm, _ = optimizer.step()
    result["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
    result["update_applied"] = bool(update_applied)
    return result


@torch.no_grad()
def evaluate(
    ddp_chunks: list[torch.nn.Module],
    batches: list[dict],
    micro_batch_size: int,
    seq_length: int,
    forward_step: ForwardStep = lm_forward_step,
) -> dict[str, float]:
    """Per-token means of ``forward_step``'s logs over ``batches`` (this rank's micro-batches) and all
    DP ranks, without updates."""
    with _eval_mode(ddp_chunks):
        iterators = [iter(batches) for _ in ddp_chunks]
        return _run_schedule(ddp_chunks, iterators, len(batches), micro_batch_size, seq_length, forward_step, True)


@torch.no_grad()
def forward_outputs(
    ddp_chunks: list[torch.nn.Module], batches: list[dict], micro_batch_size: int, seq_length: int, forward_step: ForwardStep
) -> list:
    """What ``forward_step``'s loss function returns when called with ``non_loss_data=True``, for each
    of ``batches``, on the last pipeline stage (an empty list elsewhere). Forward only, in eval mode:
    no gradients, no router statistics, no RNG drawn."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    with _eval_mode(ddp_chunks):
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=[iter(batches) for _ in ddp_chunks],
            model=ddp_chunks,
            num_microbatches=len(batches),
            seq_length=seq_length,
            micro_batch_size=micro_batch_size,
            forward_only=True,
            collect_non_loss_data=True,
        )


def per_token_losses(
    ddp_chunks: list[torch.nn.Module],
    batches: list[dict],
    micro_batch_size: int,
    seq_length: int,
    forward_step: ForwardStep = lm_forward_step,
) -> list[torch.Tensor]:
    """The next-token loss of every position of ``batches`` ([b, s] per micro-batch) through
    ``forward_step``'s model call, on the last pipeline stage (an empty list elsewhere); see
    :func:`forward_outputs`."""

    def keep_per_token_loss(data_iterator, model):
        output, _ = forward_step(data_iterator, model)
        return output, lambda per_token_loss, non_loss_data=True: per_token_loss.float()

    return forward_outputs(ddp_chunks, batches, micro_batch_size, seq_length, keep_per_token_loss)


@contextlib.contextmanager
def _eval_mode(chunks: list[torch.nn.Module]):
    """Eval mode for the block; each chunk's own mode afterwards."""
    modes = [chunk.training for chunk in chunks]
    for chunk in chunks:
        chunk.eval()
    try:
        yield
    finally:
        for chunk, training in zip(chunks, modes):
            chunk.train(training)


def _run_schedule(ddp_chunks, data_iterator, num_microbatches, micro_batch_size, seq_length, forward_step, forward_only):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    logs = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data_iterator,
        model=ddp_chunks,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    return reduce_logs(logs)


def reduce_logs(logs: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Per-token means of the micro-batches' ``[sum, count]`` logs over the data-parallel ranks, sent
    from the last pipeline stage to every rank; ``tokens`` is the global count behind ``loss``."""
    from megatron.core import parallel_state

    device = current_device()
    names = sorted(logs[0]) if logs else []
    totals = torch.stack([sum(entry[name].double() for entry in logs) for name in names]) if names else None
    if totals is not None:
        totals = totals.to(device)
        torch.distributed.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    reduced = {name: (s / c if c else float("nan")) for name, (s, c) in zip(names, totals.tolist())} if names else {}
    if "loss" in reduced:
        reduced["tokens"] = int(totals[names.index("loss"), 1].item())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        carrier = [reduced]
        last = parallel_state.get_pipeline_model_parallel_last_rank()
        torch.distributed.broadcast_object_list(carrier, src=last, group=parallel_state.get_pipeline_model_parallel_group())
        reduced = carrier[0]
    return reduced


def _expert_biases(ddp_chunks: list[torch.nn.Module]) -> list[torch.Tensor]:
    return [b for chunk in ddp_chunks for name, b in chunk.module.named_buffers() if name.endswith("expert_bias")]


def _grads_are_finite(ddp_chunks: list[torch.nn.Module]) -> bool:
    """Whether every reduced gradient (and its L2 norm) is finite, agreed by all ranks.

    megatron's optimizer only checks with a loss scaler (fp16); in bf16 or fp32 a NaN/Inf gradient
    would be applied. Each rank checks its whole grad buffers (with the distributed optimizer that
    includes its reduced shard), then all ranks agree through one all-reduce.
    """
    norms = [
        torch.linalg.vector_norm(buffer.grad_data, dtype=torch.float32)
        for chunk in ddp_chunks
        for buffer in (*chunk.buffers, *chunk.expert_parallel_buffers)
    ]
    device = norms[0].device if norms else torch.device("cpu")
    finite = torch.stack(norms).isfinite().all().float().reshape(1) if norms else torch.ones(1, device=device)
    torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())
