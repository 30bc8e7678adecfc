"""``dotsllm eval CKPT --tasks ...``: perplexity on held-out token shards and exact-match generation tasks.

Under torchrun the checkpoint is loaded into the layout of --tp/--pp/--ep/--vpp (each rank reads its
own shards), the data-parallel ranks share the work, and rank 0 prints and writes the results:

    torchrun --nproc-per-node 8 -m dotsllm.cli eval CKPT --tasks qa.jsonl --tokenizer tok.model --ep 4 --tp 2

CKPT may also be an exported HF folder (config.json, safetensors), run by transformers in one process
(generation tasks): the same numbers as its checkpoint show that the export holds.

Every accuracy comes with its standard error over prompts (value ± SE). --samples N adds sampled
evaluation: N continuations of each prompt at --temperature (and --top-p), seeded by --seed, the
prompt and the sample's number (the same samples at any batch size or data-parallel layout), scored
like the greedy answer; it reports the sampled accuracy and the unbiased pass@k of each --pass-k:

    dotsllm eval CKPT --tasks math.jsonl --tokenizer tok.model --score math --samples 16 --temperature 0.7 --pass-k 1 4 16

For lm-evaluation-harness, export first and evaluate the HF folder:

    dotsllm export-hf CKPT OUT --tokenizer-dir TOKENIZER_DIR
    lm_eval --model hf --model_args pretrained=OUT,dtype=bfloat16 --tasks hellaswag,arc_easy --batch_size 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dotsllm.evaluation.generation import SCORE_NAMES, SCORES
from dotsllm.training.checkpoint import checkpoint_or_hf_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "checkpoint", type=checkpoint_or_hf_argument,
        help="a dotsllm checkpoint (a folder holding dotsllm.json), a run's checkpoints/ folder or the run directory (its latest complete one), "
        "or a HF folder (config.json; generation tasks only)",
    )  # fmt: skip
    parser.add_argument(
        "--tasks", nargs="+", required=True, metavar="TASK",
        help="'perplexity' (needs --data) and/or JSONL files of {\"prompt\", \"answer\"} lines (greedy; sampled with --samples)",
    )  # fmt: skip
    ppl = parser.add_argument_group("perplexity")
    ppl.add_argument(
        "--data", nargs="+", default=[], metavar="PREFIX", help="held-out Megatron shards (.bin/.idx prefixes)"
    )
    ppl.add_argument(
        "--seq-len", type=int, help="tokens per window (default: the checkpoint's training seq_length, else 2048)"
    )
    ppl.add_argument("--max-samples", type=int, help="at most this many windows (default: all)")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--tokenizer", help="SentencePiece .model or HF tokenizer.json the model was trained with")
    gen.add_argument("--eod-token", help="end-of-document token of a tokenizer.json (default <|endoftext|>)")
    gen.add_argument("--max-new-tokens", type=int, help="per prompt (default: the answer's token count)")
    gen.add_argument(
        "--chat", action="store_true",
        help="render each prompt as a user turn of the dots chat template and stop at <|endofresponse|>",
    )  # fmt: skip
    gen.add_argument(
        "--score", choices=SCORES, default="exact",
        help="exact: the answer, whitespace aside; math: math-verify finds it (\\boxed{} first)",
    )  # fmt: skip
    sampled = parser.add_argument_group("sampled evaluation (generation tasks; default: greedy only)")
    sampled.add_argument(
        "--samples", type=int, metavar="N", help="also draw N continuations of each prompt: sampled accuracy and pass@k"
    )
    sampled.add_argument("--temperature", type=float, help="of the samples (> 0; default 1.0)")
    sampled.add_argument("--top-p", type=float, help="nucleus sampling of the samples (default 1.0: off)")
    sampled.add_argument("--seed", type=int, help="of the samples (default 0)")
    sampled.add_argument(
        "--pass-k", type=int, nargs="+", metavar="K", help="report pass@K for each K <= N (default: 1 and N)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="windows, prompts or samples per data-parallel rank"
    )
    layout = parser.add_argument_group("layout", "how the model is split over the processes (torchrun)")
    for flag in ("--tp", "--pp", "--ep"):
        layout.add_argument(flag, type=int, default=1)
    layout.add_argument("--etp", type=int, help="expert tensor parallelism (default: --tp when --ep is 1, else 1)")
    layout.add_argument("--vpp", type=int, help="virtual pipeline stages per rank")
    parser.add_argument("--output", help="write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from dotsllm.evaluation.runner import EvaluationError, evaluate
    from dotsllm.parallel import ParallelConfig

    etp = args.etp or (args.tp if args.ep == 1 else 1)
    sampling = sampled_eval(args)
    try:
        results = evaluate(
            args.checkpoint, args.tasks, data=args.data, seq_len=args.seq_len, max_samples=args.max_samples,
            tokenizer=args.tokenizer, eod_token=args.eod_token, max_new_tokens=args.max_new_tokens, chat=args.chat,
            score=args.score, batch_size=args.batch_size, sampling=sampling,
            parallel=ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep, etp=etp, vpp=args.vpp),
        )  # fmt: skip
    except EvaluationError as e:
        raise SystemExit(f"dotsllm eval: {e}") from None
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return 0
    Console().print(results_table(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def sampled_eval(args: argparse.Namespace):
    """The :class:`~dotsllm.evaluation.generation.SampledEval` of --samples and its options (None
    without --samples); a bad combination ends the command with one line."""
    from dotsllm.evaluation.generation import SampledEval

    options = {"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed, "pass_k": args.pass_k}
    given = {name: value for name, value in options.items() if value is not None}
    if args.samples is None:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise SystemExit(f"dotsllm eval: {flags} without --samples N (greedy evaluation samples nothing)")
        return None
    try:
        return SampledEval(args.samples, **given)
    except ValueError as e:
        raise SystemExit(f"dotsllm eval: --samples: {e}") from None


def results_table(results: dict):
    """The rich table of :func:`dotsllm.evaluation.runner.evaluate`'s results: one row per task metric,
    accuracies as value ± standard error."""
    from rich.table import Table

    where = "HF folder" if results["step"] is None else f"step {results['step']}"
    table = Table(title=f"{Path(results['checkpoint']).name}, {where}")
    for column in ("task", "metric", "value", "count"):
        table.add_column(column)
    for name, result in results["tasks"].items():
        if "perplexity" in result:
            table.add_row(name, "perplexity", f"{result['perplexity']:.4f}", f"{result['tokens']:,} tokens")
            table.add_row("", "mean loss", f"{result['mean_loss']:.6f}", "")
            continue
        count = f"{result['correct']}/{result['samples']}"
        table.add_row(name, f"{SCORE_NAMES[result['score']]}, greedy", _plus_minus(result), count)
        if sampled := result.get("sampled"):
            n, prompts = sampled["samples"], result["samples"]
            how = f"{n} samples/prompt, T={sampled['temperature']:g}" + (
                f", top-p {sampled['top_p']:g}" if sampled["top_p"] < 1 else ""
            )
            table.add_row("", f"sampled ({how})", _plus_minus(sampled), f"{sampled['correct']}/{n * prompts}")
            for k, estimate in sampled["pass_at_k"].items():
                table.add_row("", f"pass@{k}", _plus_minus(estimate, "value", "se"), "")
    return table


def _plus_minus(numbers: dict, value: str = "accuracy", se: str = "accuracy_se") -> str:
    return f"{numbers[value]:.4f} ± {numbers[se]:.4f}"
