"""Worker processes for the distributed tests, started by torchrun: ``worker.py <command> [args]``.

The building blocks are those of a real trainer: ``init_distributed`` + ``build_model``, megatron's
``DistributedDataParallel``, ``get_forward_backward_func`` with ``finalize_model_grads``, and
``dist_checkpointing`` for weights. Each command writes its findings as JSON for the test to assert.

Commands:
  reference WORKDIR          one process: build dots1-tiny, save its weights, take one step, save
                             the result (main_grad in place of each weight, buffers such as the
                             router's expert_bias as updated by finalize_model_grads)
  parity WORKDIR LAYOUT...   for each layout (e.g. ``ep2``, ``tp2-etp2``, ``pp2``): load the weights,
                             take the same step, load the reference result into this layout and
                             compare it with this rank's main_grads and buffers
"""

from __future__ import annotations

import json
import re
import sys
from functools import partial
from pathlib import Path

import torch

from dotsllm.model.builder import build_model
from dotsllm.model.config import Dots1ModelConfig, ParallelConfig
from dotsllm.parallel.setup import init_distributed

PRESET = "dots1-tiny"
SEQ_LENGTH = 64
MICRO_BATCH = 2
NUM_MICROBATCHES = 4  # of the global batch; split over data-parallel ranks


def parse_layout(name: str) -> ParallelConfig:
    """``"tp2-ep2"`` -> ``ParallelConfig(tp=2, ep=2)``."""
    return ParallelConfig(**{key: int(size) for key, size in re.findall(r"([a-z]+)(\d+)", name)})


def setup(layout: ParallelConfig, seed: int = 1234) -> None:
    """(Re)build megatron's process groups for ``layout`` on the existing torch.distributed world."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    init_distributed(layout, seed=seed)


def build_ddp(layout: ParallelConfig):
    """This rank's model stage wrapped in megatron's DDP, wired to the schedule like a trainer."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    module = build_model(Dots1ModelConfig.from_preset(PRESET), layout, backend="local")
    ddp = DistributedDataParallel(
        config=module.config,
        ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True),
        module=module,
    )
    module.config.no_sync_func = ddp.no_sync
    module.config.finalize_model_grads_func = finalize_model_grads
    return ddp


def save_module(module: torch.nn.Module, directory: Path) -> None:
    from megatron.core import dist_checkpointing

    directory.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(module.sharded_state_dict(), str(directory))


def load_module(module: torch.nn.Module, directory: Path) -> None:
    """Load a checkpoint saved under any layout into ``module`` (strict: every tensor present)."""
    from megatron.core import dist_checkpointing

    module.load_state_dict(dist_checkpointing.load(module.sharded_state_dict(), str(directory)), strict=True)


def global_batch(vocab_size: int, seed: int = 0) -> torch.Tensor:
    """Token ids [NUM_MICROBATCHES, MICRO_BATCH, SEQ_LENGTH + 1], the same on every rank."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (NUM_MICROBATCHES, MICRO_BATCH, SEQ_LENGTH + 1), generator=generator)


def _loss_func(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    loss = (per_token_loss.float() * loss_mask).sum()
    num_tokens = loss_mask.sum().to(torch.int)
    return loss, num_tokens, {"lm loss": torch.stack([loss.detach(), num_tokens.float()])}


def _forward_step(data_iterator, model):
    tokens = next(data_iterator)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    position_ids = torch.arange(inputs.shape[1]).expand_as(inputs)
    output = model(inputs, position_ids, None, labels=labels)
    return output, partial(_loss_func, torch.ones_like(labels, dtype=torch.float))


def train_step(ddp, tokens: torch.Tensor) -> float | None:
    """Forward/backward over this data-parallel rank's share of ``tokens`` plus finalize_model_grads.

    Returns the global per-token loss on the last pipeline stage (None elsewhere).
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    dp_size = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    local = tokens.chunk(dp_size)[dp_rank]
    ddp.zero_grad_buffer()
    losses = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=iter(local),
        model=[ddp],
        num_microbatches=len(local),
        seq_length=SEQ_LENGTH,
        micro_batch_size=MICRO_BATCH,
        forward_only=False,
    )
    if not parallel_state.is_pipeline_last_stage():
        return None
    total = torch.stack([entry["lm loss"] for entry in losses]).sum(0)
    torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return (total[0] / total[1]).item()


def step_result(module: torch.nn.Module) -> None:
    """Overwrite each weight with its main_grad, so the module's state is the step's result."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(param.main_grad)


def compare(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (exact match required when expected is zero)."""
    diff = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def reference(workdir: str) -> None:
    workdir = Path(workdir)
    layout = ParallelConfig()
    setup(layout)
    ddp = build_ddp(layout)
    save_module(ddp.module, workdir / "weights")
    loss = train_step(ddp, global_batch(ddp.module.vocab_size))
    step_result(ddp.module)
    save_module(ddp.module, workdir / "reference")
    nonzero = {name: bool(p.main_grad.abs().max() > 0) for name, p in ddp.module.named_parameters()}
    bias_moved = [bool(b.abs().max() > 0) for n, b in ddp.module.named_buffers() if n.endswith("expert_bias")]
    _write(workdir / "reference.json", {"loss": loss, "grad_nonzero": nonzero, "expert_bias_moved": bias_moved})


def parity(workdir: str, *layout_names: str) -> None:
    workdir = Path(workdir)
    for name in layout_names:
        layout = parse_layout(name)
        setup(layout)
        ddp = build_ddp(layout)
        load_module(ddp.module, workdir / "weights")
        loss = train_step(ddp, global_batch(ddp.module.vocab_size))
        expected = build_ddp(layout).module
        load_module(expected, workdir / "reference")
        expected_params = dict(expected.named_parameters())
        expected_buffers = dict(expected.named_buffers())
        result = {
            "loss": loss,
            "grads": {n: compare(p.main_grad, expected_params[n]) for n, p in ddp.module.named_parameters()},
            "expert_bias": {
                n: compare(b, expected_buffers[n]) for n, b in ddp.module.named_buffers() if n.endswith("expert_bias")
            },
        }
        _write(workdir / f"{name}.rank{torch.distributed.get_rank()}.json", result)


def _write(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=1))


COMMANDS = {"reference": reference, "parity": parity}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
