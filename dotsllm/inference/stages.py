"""This rank's model chunks run forward as its part of the pipeline, for inference.

Pipeline stages (virtual ones too) run in order: rank ``r``'s chunk ``c`` is virtual stage
``c * pp + r``, so hidden states go round the pipeline ring, received from the previous rank and sent
to the next with plain ``torch.distributed`` point-to-point calls (gloo and NCCL; megatron's
inference helpers assert CUDA). The last stage returns the logits of the last position; its choices
go back to the other stages with :meth:`ModelStages.broadcast_from_last`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

# Attributes through which megatron-core modules (and their shared TransformerConfig) switch
# sequence parallelism on; the names megatron's own static generation switches off.
SEQUENCE_PARALLEL_ATTRS = ("sequence_parallel", "scatter_to_sequence_parallel", "reduce_scatter_embeddings")


def model_chunks(model: torch.nn.Module | Sequence[torch.nn.Module]) -> list[torch.nn.Module]:
    """The ``GPTModel`` chunks of ``model`` (one module or one per virtual stage), unwrapped from DDP."""
    from megatron.core.utils import unwrap_model

    return unwrap_model(list(model) if isinstance(model, Sequence) else [model])


@contextmanager
def inference_setting(chunks: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Eval mode with sequence parallelism off; every module's own setting is restored afterwards.

    A one-token decode step cannot be split over TP ranks, and the cache keeps whole sequences, so
    inference runs without sequence parallelism (as megatron's static generation does). Written by
    hand: megatron's ``set_model_to_sequence_parallel`` caches modules by ``id(model)`` (stale once a
    model is freed) and restores one value everywhere rather than each module's own.
    """
    saved = [
        (owner, attr, getattr(owner, attr))
        for chunk in chunks
        for owner in [chunk.config, *chunk.modules()]
        for attr in SEQUENCE_PARALLEL_ATTRS
        if isinstance(getattr(owner, attr, None), bool)
    ]
    modes = [(module, module.training) for chunk in chunks for module in chunk.modules()]
    try:
        for owner, attr, _ in saved:
            setattr(owner, attr, False)
        for chunk in chunks:
            chunk.eval()
        yield
    finally:
        for owner, attr, value in saved:
            setattr(owner, attr, value)
        for module, training in modes:
            module.training = training


class ModelStages:
    """Forward of this rank's chunks as its part of the pipeline (see the module doc)."""

    def __init__(self, chunks: Sequence[torch.nn.Module]):
        from megatron.core import parallel_state

        self.chunks = list(chunks)
        config = self.chunks[0].config
        self.hidden_size = config.hidden_size
        self.dtype = config.pipeline_dtype or config.params_dtype
        self.device = next(self.chunks[0].parameters()).device
        self.pp_size = parallel_state.get_pipeline_model_parallel_world_size()
        self.is_last = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        if self.pp_size > 1:
            self.group = parallel_state.get_pipeline_model_parallel_group()
            self.prev_rank = parallel_state.get_pipeline_model_parallel_prev_rank()
            self.next_rank = parallel_state.get_pipeline_model_parallel_next_rank()
            self.last_rank = parallel_state.get_pipeline_model_parallel_last_rank()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, context=None) -> torch.Tensor | None:
        """Logits ``[batch, vocab]`` (gathered over TP) of the last position on the last stage; None elsewhere.

        ``tokens``/``positions`` are ``[batch, length]``; ``context`` a megatron inference context (the
        KV cache) or None for a full forward.
        """
        batch, length = tokens.shape
        output = None
        for chunk in self.chunks:
            if not chunk.pre_process:
                hidden = torch.empty(length, batch, self.hidden_size, dtype=self.dtype, device=self.device)
                torch.distributed.recv(hidden, src=self.prev_rank, group=self.group)
                chunk.set_input_tensor(hidden)
            output = chunk(tokens, positions, None, inference_context=context, runtime_gather_output=True)
            if not chunk.post_process:
                torch.distributed.send(output.contiguous(), dst=self.next_rank, group=self.group)
        return output[:, -1] if self.is_last else None

    def broadcast_from_last(
        self, tensor: torch.Tensor | None, shape: Sequence[int], dtype: torch.dtype
    ) -> torch.Tensor:
        """``tensor`` of the last stage on every stage of this pipeline (``shape``/``dtype`` elsewhere)."""
        if self.pp_size == 1:
            return tensor
        if not self.is_last:
            tensor = torch.empty(tuple(shape), dtype=dtype, device=self.device)
        torch.distributed.broadcast(tensor, src=self.last_rank, group=self.group)
        return tensor
