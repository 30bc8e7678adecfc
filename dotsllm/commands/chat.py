"""``dotsllm chat CKPT --tokenizer TOK``: talk to a checkpoint through the dots chat template.

Interactive by default (each line is a user turn; the conversation is kept; an empty line or EOF
ends it); ``--prompt TEXT`` answers one message and exits. Generation stops at ``<|endofresponse|>``.
"""

from __future__ import annotations

import argparse
import sys

from dotsllm.training.checkpoint import checkpoint_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", type=checkpoint_argument,
        help="a dotsllm checkpoint (a folder holding dotsllm.json), a run's checkpoints/ folder or the run directory (its latest complete one)",
    )  # fmt: skip
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model or HF tokenizer.json with the chat tokens")
    parser.add_argument("--prompt", help="answer this one message and exit")
    parser.add_argument("--system", help="the system message (default: the template's)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from dotsllm.convert.checkpoint_io import load_checkpoint_model
    from dotsllm.inference import SamplingParams
    from dotsllm.inference.chat import ChatSession
    from dotsllm.parallel import ParallelConfig
    from dotsllm.parallel.setup import init_distributed
    from dotsllm.chat_template import DEFAULT_SYSTEM, ChatTemplate
    from dotsllm.tokenizer import Tokenizer

    template = ChatTemplate(Tokenizer(args.tokenizer), DEFAULT_SYSTEM if args.system is None else args.system)
    init_distributed(ParallelConfig())
    chunks, _ = load_checkpoint_model(args.checkpoint)
    params = SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, max_new_tokens=args.max_new_tokens
    )
    answer = ChatSession(chunks, template, params, seed=args.seed).answer

    if args.prompt is not None:
        print(answer(args.prompt))
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        print(f"{'model> ' if interactive else ''}{answer(line.rstrip(chr(10)))}", flush=True)
