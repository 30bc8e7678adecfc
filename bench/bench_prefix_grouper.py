"""Prefix grouping vs standard rows: one GRPO forward + backward of a group, time and memory, next to
the FLOPs ratios of the Prefix Grouper paper (arXiv 2506.05433, App. A.2).

    OMP_NUM_THREADS=1 python bench/bench_prefix_grouper.py [--repeats 3] [--preset dots1-tiny] [key=value ...]

One process, fp32, megatron's local layers (a model built with the prefix-grouped core attention, which
attends as megatron does on the standard rows). For G ∈ {2, 4, 8, 16} and
Lp/Lr ∈ {0.5, 4, 16} one group of G responses of Lr tokens to a prompt of Lp tokens goes through the
GRPO training forward step (``PolicyForward.loss_step`` in megatron's schedule, forward + backward, no
optimizer step): standard, G rows ``[P; Ri]`` of Lp + Lr tokens; grouped, one row ``[P; R1; …; RG]``.
Time is the best of ``--repeats`` in CPU time of the process (wall time on CUDA): the machine's other
load would swamp wall time. Memory is ``torch.cuda.max_memory_allocated`` on CUDA; on a CPU, where a
process's peak RSS only grows, the bytes of the distinct tensors autograd keeps for backward (saved
tensors hooks): the activation memory, what grouping changes.

Theoretical ratios, grouped over standard: ``attn`` the paper's causal attention FLOPs
``(Lp² + G·Lr(2Lp+Lr)) / (G(Lp+Lr)²)``, ``rest`` everything per token ``(Lp+G·Lr) / (G(Lp+Lr))``, ``model``
the two mixed by the model's FLOPs (``prefix_grouping.model_flops_ratio``). The last column is the
measured speed-up over the one the model's FLOP mix allows (1 / model ratio). Extra ``key=value`` arguments
override the model preset (e.g. ``hidden_size=256``).
"""

import argparse
from functools import partial

import torch
from rich.console import Console
from rich.table import Table

from dotsllm.config_loading import apply_overrides
from dotsllm.model import Dots1ModelConfig
from dotsllm.parallel import ParallelConfig
from dotsllm.model.accounting import model_parameter_counts
from dotsllm.parallel.setup import init_distributed
from dotsllm.posttrain.grpo import batch as rows_of
from dotsllm.posttrain.grpo.losses import LossSettings, sequence_weights
from dotsllm.posttrain.grpo.policy_forward import PolicyForward
from dotsllm.posttrain.grpo.prefix_grouping import attention_flops_ratio, model_flops_ratio, pointwise_flops_ratio
from dotsllm.posttrain.grpo.prompts import Prompt
from dotsllm.posttrain.grpo.rollout import Sample
from dotsllm.training.optimizer import OptimizerSettings, build_model_and_optimizer
from timing import best_time

GROUP_SIZES = (2, 4, 8, 16)
SHAPES = ((64, 128), (256, 64), (256, 16))  # (Lp, Lr): Lp/Lr = 0.5, 4, 16


def group_rows(vocab_size: int, lp: int, lr: int, g: int, grouped: bool) -> tuple[dict[str, torch.Tensor], int]:
    """One group's training rows (as the trainer builds them for its update) and their length."""
    generator = torch.Generator().manual_seed(lp * 1000 + lr * 10 + g)
    prompt = Prompt(tuple(torch.randint(1, vocab_size, (lp,), generator=generator).tolist()), "", {}, "bench")
    samples = [
        Sample(0, prompt, torch.randint(1, vocab_size, (lr,), generator=generator).tolist(), [-1.0] * lr, False, None)
        for _ in range(g)
    ]
    groups = [list(range(g))] if grouped else None
    seq = lp + (g * lr if grouped else lr)
    rows = rows_of.training_rows(samples, seq, lr, groups)
    mask = rows["response_mask"]
    responses = mask.flatten(0, 1)
    advantages = torch.linspace(-1, 1, g)
    rows.update(
        advantages=rows_of.per_slot(advantages, rows["sample_index"]),
        old_log_probs=torch.full(mask.shape, -1.0),
        weights=sequence_weights(responses, "token-mean", int(responses.sum()), g, lr).view(mask.shape[:2]),
        loss_scale=torch.full((len(mask),), float(len(mask) * seq)),
    )
    return rows, seq


class SavedActivations:
    """Bytes of the distinct storages autograd saves for backward inside the block (CPU's memory measure)."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def forward_backward(chunks, forward: PolicyForward, rows: dict[str, torch.Tensor], seq: int) -> int:
    """One forward + backward of ``rows`` as one micro-batch; the memory measure (see the module doc)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in chunks:
        chunk.zero_grad_buffer()
    saved = SavedActivations()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
        get_forward_backward_func()(
            forward_step_func=forward.loss_step, data_iterator=[iter([rows])], model=chunks, num_microbatches=1,
            seq_length=seq, micro_batch_size=len(rows["tokens"]), forward_only=False,
        )  # fmt: skip
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else saved.bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dots1-tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    values = apply_overrides({}, args.overrides)
    cfg = Dots1ModelConfig.from_preset(args.preset, **values, moe_aux_loss_coeff=0.0, moe_router_bias_update_rate=0.0)
    init_distributed(ParallelConfig(), seed=1234)
    matmul = model_parameter_counts(cfg).active_matmul
    width = cfg.num_attention_heads * (cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads)
    settings = OptimizerSettings(use_distributed_optimizer=False)
    chunks, _ = build_model_and_optimizer(cfg, ParallelConfig(), "fp32", settings, 3e-4, prefix_grouping=True)
    memory = "peak allocated" if torch.cuda.is_available() else "saved activations"
    clock = "wall" if torch.cuda.is_available() else "CPU"
    table = Table(title=(
        f"GRPO forward + backward of one group, grouped vs standard: {args.preset} {values or ''} fp32, "
        f"best of {args.repeats} ({clock} time); memory = {memory}"
    ))  # fmt: skip
    columns = ("G", "Lp/Lr", "Lp", "Lr", "std s", "grp s", "std MiB", "grp MiB", "time ratio", "memory ratio",
               "attn", "rest", "model", "speed-up / (1/model)")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for g in GROUP_SIZES:
        for lp, lr in SHAPES:
            measured = {}
            for grouped in (False, True):
                rows, seq = group_rows(cfg.vocab_size, lp, lr, g, grouped)
                forward = PolicyForward(LossSettings(), 1.0, prefix_grouping=grouped)
                measured[grouped] = best_time(partial(forward_backward, chunks, forward, rows, seq), args.repeats)
            (std_s, std_mem), (grp_s, grp_mem) = measured[False], measured[True]
            model = model_flops_ratio(matmul, cfg.num_layers, width, lp, lr, g)
            table.add_row(
                str(g), f"{lp / lr:g}", str(lp), str(lr), f"{std_s:.3f}", f"{grp_s:.3f}", f"{std_mem / 2**20:.1f}",
                f"{grp_mem / 2**20:.1f}", f"{grp_s / std_s:.3f}", f"{grp_mem / std_mem:.3f}",
                f"{attention_flops_ratio(lp, lr, g):.3f}", f"{pointwise_flops_ratio(lp, lr, g):.3f}", f"{model:.3f}",
                f"{(std_s / grp_s) * model:.2f}",
            )  # fmt: skip
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
