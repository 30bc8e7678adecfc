"""Generated tokens/s of ``dotsllm.inference.generate``: KV cache vs full recompute, shared vs per-row prefill.

    python bench/bench_generation.py [--preset dots1-tiny] [--prompts 4] [--samples 8] [--prompt-len 256] [--new 32]

One process (CUDA when present, else CPU), fp32, random weights. ``--prompts`` prompts of
``--prompt-len`` tokens, each continued ``--samples`` times (GRPO's G) for ``--new`` tokens:
- greedy with the KV cache vs greedy by recomputing the whole batch each step (the same tokens are
  required, or the bench stops);
- sampling (T = 1) with each prompt prefilled once and its cache copied to its samples vs prefilled
  for every sample (the same tokens are required).
Times are the best of ``--repeats``: wall time on CUDA, CPU time of the process on CPU.
"""

import argparse

import torch
from rich.console import Console
from rich.table import Table

from dotsllm.inference import GenerationRequest, SamplingParams, generate
from dotsllm.model import Dots1ModelConfig
from dotsllm.parallel import ParallelConfig
from dotsllm.model.builder import build_model
from dotsllm.parallel.setup import init_distributed
from timing import best_time




@torch.no_grad()
def greedy_by_recompute(model, prompts: torch.Tensor, new: int) -> list[list[int]]:
    tokens = prompts
    for _ in range(new):
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
        logits = model(tokens, positions, None, runtime_gather_output=True)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[:, prompts.shape[1] :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dots1-tiny")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    init_distributed(ParallelConfig())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = Dots1ModelConfig.from_preset(args.preset)
    torch.manual_seed(0)
    model = build_model(cfg, backend="local").to(device).eval()
    prompts = torch.randint(1, cfg.vocab_size, (args.prompts, args.prompt_len), device=device)
    rows = args.prompts * args.samples
    generated = rows * args.new

    greedy = SamplingParams(temperature=0, max_new_tokens=args.new)
    greedy_requests = [GenerationRequest(p, greedy) for p in prompts.repeat_interleave(args.samples, 0).tolist()]
    cached_s, cached = best_time(lambda: generate(model, greedy_requests, share_prompt_prefill=False), args.repeats)
    recompute_s, recomputed = best_time(
        lambda: greedy_by_recompute(model, prompts.repeat_interleave(args.samples, 0), args.new), args.repeats
    )
    if [r.tokens for r in cached] != recomputed:
        raise SystemExit("KV-cache and recomputed greedy tokens DIFFER: the comparison measures nothing")

    sampled = SamplingParams(temperature=1.0, max_new_tokens=args.new)
    sampled_requests = [
        GenerationRequest(p, sampled, seed=i * args.samples + g)
        for i, p in enumerate(prompts.tolist())
        for g in range(args.samples)
    ]
    shared_s, shared = best_time(lambda: generate(model, sampled_requests, share_prompt_prefill=True), args.repeats)
    each_s, each = best_time(lambda: generate(model, sampled_requests, share_prompt_prefill=False), args.repeats)
    if [r.tokens for r in shared] != [r.tokens for r in each]:
        raise SystemExit("shared and per-row prefill samples DIFFER: the comparison measures nothing")

    on_cuda = device.type == "cuda"
    table = Table(
        title=f"{args.preset} on {device.type} ({'wall' if on_cuda else 'CPU'} time): {args.prompts} prompts x "
        f"{args.samples} samples, {args.prompt_len} prompt + {args.new} new tokens"
    )
    for column in ("generation", "seconds" if on_cuda else "CPU seconds", "new tokens/s", "speed-up"):
        table.add_column(column)
    rows = [
        ("greedy, full recompute", recompute_s, recompute_s),
        ("greedy, KV cache", cached_s, recompute_s),
        ("sampled, prefill per sample", each_s, each_s),
        ("sampled, prefill per prompt", shared_s, each_s),
    ]
    for name, seconds, baseline in rows:
        table.add_row(name, f"{seconds:.3f}", f"{generated / seconds:,.0f}", f"{baseline / seconds:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
