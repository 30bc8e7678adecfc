"""Worker processes for the distributed parity tests, started by torchrun: ``worker.py <command> [args]``.

The step is the trainer's own: ``build_model_and_optimizer`` (megatron DDP + optimizer) and
``dotsllm.training.step.train_step`` (per-token loss through megatron's schedules, finalize_model_grads,
the optimizer step). Each command writes its findings as JSON for the test to assert.

Commands:
  reference WORKDIR          one process: build dots1-tiny, save its weights, take one step on the
                             global batch, save the grads (main_grad in place of each weight) and the
                             weights after the step (with the routers' updated expert_bias)
  parity WORKDIR LAYOUT...   for each layout (e.g. ``ep2``, ``tp2-etp2``, ``pp2-vpp2``, ``tp2-pp2-ep2-dopt``):
                             load the weights, take the same step, load the reference results into this
                             layout and compare them with this rank's grads and weights
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from dotsllm.model.config import Dots1ModelConfig

from dotsllm.parallel import ParallelConfig
from dotsllm.parallel.setup import init_distributed

PRESET = "dots1-tiny"
SEQ_LENGTH = 64
MICRO_BATCH = 2
NUM_MICROBATCHES = 4  # of the global batch; split over data-parallel ranks
LR = 1e-3
SETTINGS = dict(clip_grad=0.0, adam_eps=1e-3)  # no clipping (grads are compared after the
# step); a large eps keeps the first Adam update linear in the grads, not their sign


def parse_layout(name: str) -> tuple[ParallelConfig, bool]:
    """``"tp2-ep2-dopt"`` -> ``(ParallelConfig(tp=2, ep=2), distributed optimizer)``."""
    sizes = {key: int(size) for key, size in re.findall(r"([a-z]+)(\d+)", name)}
    return ParallelConfig(**sizes), name.endswith("-dopt")


def build(layout: ParallelConfig, distributed_optimizer: bool, seed: int = 1234):
    """(Re)build megatron's groups for ``layout``; the trainer's model chunks and optimizer."""
    from megatron.core import parallel_state

    from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    init_distributed(layout, seed=seed)
    settings = OptimizerSettings(**SETTINGS, use_distributed_optimizer=distributed_optimizer)
    return build_model_and_optimizer(Dots1ModelConfig.from_preset(PRESET), layout, "fp32", settings, LR)


def build_plain(layout: ParallelConfig) -> list[torch.nn.Module]:
    """This rank's model chunks for ``layout`` (already initialized), without DDP: to load references into."""
    from dotsllm.model import build_model

    vpp = layout.vpp or 1
    cfg = Dots1ModelConfig.from_preset(PRESET)
    return [build_model(cfg, vp_stage=vp if vpp > 1 else None) for vp in range(vpp)]


def modules(chunks) -> list[torch.nn.Module]:
    return [getattr(chunk, "module", chunk) for chunk in chunks]


def save(chunks, directory: Path) -> None:
    from megatron.core import dist_checkpointing

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v for m in modules(chunks) for k, v in m.sharded_state_dict().items()}
    dist_checkpointing.save(state, str(directory))


def load(chunks, directory: Path) -> None:
    """Load a checkpoint saved under any layout into ``chunks`` (strict: every tensor present)."""
    from megatron.core import dist_checkpointing

    for module in modules(chunks):
        module.load_state_dict(dist_checkpointing.load(module.sharded_state_dict(), str(directory)), strict=True)


def global_batch(vocab_size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """NUM_MICROBATCHES micro-batches, the same on every rank; loss masks of uneven token counts."""
    from dotsllm.training.fixed_batch import make_lm_batch

    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (NUM_MICROBATCHES, MICRO_BATCH, SEQ_LENGTH + 1), generator=generator)
    batches = [make_lm_batch(t) for t in tokens]
    for batch in batches:
        batch["loss_mask"] = (torch.rand(batch["loss_mask"].shape, generator=generator) < 0.7).float()
    return batches


def step(chunks, optimizer) -> dict:
    """The trainer's step on this data-parallel rank's share of the global batch, with the logged aux
    loss and the zero-sum-learning metrics of a held-out batch (as the trainer measures them)."""
    from megatron.core import parallel_state

    from dotsllm.training.zero_sum import reduce_zero_sum_stats
    from dotsllm.training.metrics import AuxLossMeter
    from dotsllm.training.step import per_token_losses, train_step

    cfg = Dots1ModelConfig.from_preset(PRESET)
    dp_size, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()

    def local(batches):
        return batches[dp_rank * len(batches) // dp_size : (dp_rank + 1) * len(batches) // dp_size]

    train, held_out = local(global_batch(cfg.vocab_size)), local(global_batch(cfg.vocab_size, seed=1))
    meter = AuxLossMeter([i + 1 for i, moe in enumerate(cfg.moe_layer_freq) if moe], cfg.num_layers)
    before = per_token_losses(chunks, held_out, MICRO_BATCH, SEQ_LENGTH)
    result = train_step(chunks, optimizer, [iter(train) for _ in chunks], len(train), MICRO_BATCH, SEQ_LENGTH)
    after = per_token_losses(chunks, held_out, MICRO_BATCH, SEQ_LENGTH)
    meter.add_step(len(train))
    result["aux_loss"] = meter.collect()
    if before:  # the last pipeline stage
        mask = torch.cat([b["loss_mask"].reshape(-1) for b in held_out])
        flat = [torch.cat([t.reshape(-1) for t in losses]) for losses in (before, after)]
        group = parallel_state.get_data_parallel_group(with_context_parallel=True)
        result["zsl"] = reduce_zero_sum_stats(*flat, mask, group=group).as_record()
    return result


def main_grads_as_weights(chunks) -> None:
    """Overwrite each weight with its main_grad, so the modules' state holds the step's grads."""
    with torch.no_grad():
        for param in (p for m in modules(chunks) for p in m.parameters()):
            param.copy_(param.main_grad)


def compare(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (exact match required when expected is zero)."""
    diff = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def reference(workdir: str) -> None:
    workdir = Path(workdir)
    chunks, optimizer = build(ParallelConfig(), distributed_optimizer=False)
    save(chunks, workdir / "weights")
    (module,) = modules(chunks)
    before = {n: b.clone() for n, b in module.named_buffers() if n.endswith("expert_bias")}
    result = step(chunks, optimizer)
    save(chunks, workdir / "after_step")
    main_grads_as_weights(chunks)
    save(chunks, workdir / "grads")
    result["grad_nonzero"] = {n: bool(p.main_grad.abs().max() > 0) for n, p in module.named_parameters()}
    result["expert_bias_moved"] = [not torch.equal(b, before[n]) for n, b in module.named_buffers() if n in before]
    _write(workdir / "reference.json", result)


def parity(workdir: str, *layout_names: str) -> None:
    workdir = Path(workdir)
    for name in layout_names:
        layout, distributed_optimizer = parse_layout(name)
        chunks, optimizer = build(layout, distributed_optimizer)
        load(chunks, workdir / "weights")
        result = step(chunks, optimizer)
        expected_after = build_plain(layout)
        load(expected_after, workdir / "after_step")
        found = {
            "weights_after_step": _compare_chunks(chunks, expected_after, params=True),
            "expert_bias": _compare_chunks(chunks, expected_after, params=False),
        }
        if not distributed_optimizer:  # its main_grad buffers hold only this rank's reduced shard
            main_grads_as_weights(chunks)
            expected_grads = build_plain(layout)
            load(expected_grads, workdir / "grads")
            found["grads"] = _compare_chunks(chunks, expected_grads, params=True)
        _write(workdir / f"{name}.rank{torch.distributed.get_rank()}.json", {**result, **found})


def _compare_chunks(chunks, expected_chunks, params: bool) -> dict[str, float]:
    found = {}
    for i, (module, expected) in enumerate(zip(modules(chunks), modules(expected_chunks))):
        if params:
            reference = dict(expected.named_parameters())
            found.update({f"{i}:{n}": compare(p, reference[n]) for n, p in module.named_parameters()})
        else:
            reference = dict(expected.named_buffers())
            found.update(
                {f"{i}:{n}": compare(b, reference[n]) for n, b in module.named_buffers() if n.endswith("expert_bias")}
            )
    return found


def _write(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=1))


COMMANDS = {"reference": reference, "parity": parity}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
