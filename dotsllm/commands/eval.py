"""``dotsllm eval CKPT --tasks ...``: perplexity on held-out token shards and exact-match generation tasks.

Under torchrun the checkpoint is loaded into the layout of --tp/--pp/--ep/--vpp (each rank reads its
own shards), the data-parallel ranks share the work, and rank 0 prints and writes the results:

    torchrun --nproc-per-node 8 -m dotsllm.cli eval CKPT --tasks qa.jsonl --tokenizer tok.model --ep 4 --tp 2

CKPT may also be an exported HF folder (config.json, safetensors), run by transformers in one process
(generation tasks): the same numbers as its checkpoint show that the export holds. For
lm-evaluation-harness, export first and evaluate the HF folder:

    dotsllm export-hf CKPT OUT --tokenizer-dir TOKENIZER_DIR
    lm_eval --model hf --model_args pretrained=OUT,dtype=bfloat16 --tasks hellaswag,arc_easy --batch_size 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dotsllm.evaluation.generation import SCORE_NAMES, SCORES
from dotsllm.training.checkpoint import META_FILE, checkpoint_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "checkpoint", type=checkpoint_dir,
        help="a dotsllm checkpoint directory (holding dotsllm.json), a run's checkpoints/ folder (its latest), "
        "or a HF folder (config.json; generation tasks only)",
    )  # fmt: skip
    parser.add_argument(
        "--tasks", nargs="+", required=True, metavar="TASK",
        help="'perplexity' (needs --data) and/or JSONL files of {\"prompt\", \"answer\"} lines (greedy exact match)",
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
    parser.add_argument("--batch-size", type=int, default=8, help="windows or prompts per data-parallel rank")
    layout = parser.add_argument_group("layout", "how the model is split over the processes (torchrun)")
    for flag in ("--tp", "--pp", "--ep"):
        layout.add_argument(flag, type=int, default=1)
    layout.add_argument("--etp", type=int, help="expert tensor parallelism (default: --tp when --ep is 1, else 1)")
    layout.add_argument("--vpp", type=int, help="virtual pipeline stages per rank")
    parser.add_argument("--output", help="write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from dotsllm.convert.checkpoint_io import load_checkpoint_model
    from dotsllm.evaluation import exact_match, perplexity, read_tasks, token_windows
    from dotsllm.parallel import ParallelConfig
    from dotsllm.parallel.setup import init_distributed
    from dotsllm.training.checkpoint import read_meta

    files = [t for t in args.tasks if t != "perplexity"]
    if "perplexity" in args.tasks and not args.data:
        raise SystemExit("dotsllm eval: the perplexity task needs --data PREFIX...")
    if files and not args.tokenizer:
        raise SystemExit("dotsllm eval: generation tasks need --tokenizer")
    tasks = {Path(f).stem: read_tasks(f) for f in files}  # fail early on a bad file

    if is_hf_folder(args.checkpoint):
        if "perplexity" in args.tasks:
            raise SystemExit("dotsllm eval: perplexity needs a dotsllm checkpoint, not a HF folder")
        chunks, meta, rank = load_hf_model(args.checkpoint), {"step": None, "tokens_seen": None}, 0
    else:
        etp = args.etp or (args.tp if args.ep == 1 else 1)
        init_distributed(ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep, etp=etp, vpp=args.vpp))
        meta = read_meta(Path(args.checkpoint))
        chunks, _ = load_checkpoint_model(args.checkpoint)
        rank = torch.distributed.get_rank()
    results = {
        "checkpoint": str(args.checkpoint),
        "step": meta["step"],
        "tokens_seen": meta["tokens_seen"],
        "tasks": {},
    }
    where = "HF folder" if meta["step"] is None else f"step {meta['step']}"
    table = Table(title=f"{Path(args.checkpoint).name}, {where}")
    for column in ("task", "metric", "value", "count"):
        table.add_column(column)
    if "perplexity" in args.tasks:
        seq_len = args.seq_len or meta.get("seq_length") or 2048
        result = perplexity(chunks, token_windows(args.data, seq_len, args.max_samples), args.batch_size)
        results["tasks"]["perplexity"] = {**result.as_dict(), "seq_len": seq_len, "data": args.data}
        table.add_row("perplexity", "perplexity", f"{result.perplexity:.4f}", f"{result.tokens:,} tokens")
        table.add_row("", "mean loss", f"{result.mean_loss:.6f}", "")
    if tasks:
        from dotsllm.posttrain.chat import ChatTemplate
        from dotsllm.tokenizer import Tokenizer

        tokenizer = Tokenizer(args.tokenizer, eod_token=args.eod_token)
        template = ChatTemplate(tokenizer) if args.chat else None
        for name, samples in tasks.items():
            result = exact_match(
                chunks, tokenizer, samples, args.max_new_tokens, args.batch_size, chat=template, score=args.score
            )
            results["tasks"][name] = result
            table.add_row(name, SCORE_NAMES[args.score], f"{result['accuracy']:.4f}", f"{result['correct']}/{result['samples']}")
    if rank == 0:
        Console().print(table)
        if args.output:
            Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / META_FILE).is_file()


def load_hf_model(path: Path):
    """The HF folder's causal LM in fp32, on CUDA when there is one."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
