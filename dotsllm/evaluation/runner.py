"""One evaluation of a model on named tasks: what ``dotsllm eval`` runs and writes as JSON.

The model is a dotsllm checkpoint, loaded into the layout of a :class:`~dotsllm.parallel.ParallelConfig`
(under torchrun each rank reads its own shards), or an exported HF folder run by transformers in one
process (generation tasks only). The tasks are ``"perplexity"`` (on held-out Megatron shards) and JSONL
files of ``{"prompt", "answer"}`` lines, each named by its file's stem. The results::

    {"checkpoint": str, "step": int | None, "tokens_seen": int | None,
     "tasks": {"perplexity": {"tokens", "mean_loss", "perplexity", "seq_len", "data"},
               STEM: {"score", "samples", "correct", "accuracy", "accuracy_se", "predictions",
                      "sampled"?}, ...}}

(``step`` and ``tokens_seen`` are None for a HF folder). Every rank gets them. A generation task's
``samples`` counts its prompts; ``accuracy_se`` is the greedy accuracy's standard error
``sqrt(p(1 - p) / samples)``; each of ``predictions`` is the task line with ``"prediction"`` and
``"correct"`` added. With sampled evaluation (``sampling``) each prediction also has
``"sampled_correct"`` (c_i, of N) and ``"sampled_predictions"`` (its N texts), and the task has::

    "sampled": {"samples": N, "temperature": T, "top_p": P, "seed": S, "correct": Σc_i,
                "accuracy": mean c_i/N, "accuracy_se": SE, "pass_at_k": {"K": {"value", "se"}, ...}}

(see :mod:`dotsllm.evaluation.generation` and :mod:`dotsllm.evaluation.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dotsllm.evaluation.generation import SampledEval
from dotsllm.parallel import ParallelConfig
from dotsllm.training.checkpoint import META_FILE

PERPLEXITY = "perplexity"


class EvaluationError(ValueError):
    """Tasks and inputs that do not go together (a task needing an input not given, or a model kind)."""


def evaluate(
    checkpoint: str | Path,
    tasks: Sequence[str],
    *,
    data: Sequence[str] = (),
    seq_len: int | None = None,
    max_samples: int | None = None,
    tokenizer: str | None = None,
    eod_token: str | None = None,
    max_new_tokens: int | None = None,
    chat: bool = False,
    score: str = "exact",
    batch_size: int = 8,
    parallel: ParallelConfig | None = None,
    sampling: SampledEval | None = None,
) -> dict[str, Any]:
    """The results (see the module doc) of ``tasks`` on ``checkpoint``.

    ``data``, ``seq_len`` (default: the checkpoint's training ``seq_length``, else 2048) and
    ``max_samples``: the perplexity task's shards (.bin/.idx prefixes), window length and window
    limit. ``tokenizer`` (a SentencePiece .model or HF tokenizer.json; ``eod_token`` names a
    tokenizer.json's end-of-document token), ``max_new_tokens``, ``chat`` (prompts as user turns of the
    dots chat template) and ``score`` ("exact" or "math"): the generation tasks', see
    :func:`~dotsllm.evaluation.generation.exact_match`; ``sampling``: their sampled evaluation besides
    the greedy one (:class:`~dotsllm.evaluation.generation.SampledEval`). ``batch_size``: windows,
    prompts or samples per data-parallel rank. ``parallel``: the layout a dotsllm checkpoint is loaded into (default: one
    process); this function initializes ``torch.distributed`` and megatron's parallel state with it.

    Inputs that do not fit the tasks raise :class:`EvaluationError` before any model is loaded, and a
    bad task file its ``ValueError`` (naming file:line).
    """
    from dotsllm.evaluation.generation import exact_match, read_tasks
    from dotsllm.evaluation.perplexity import perplexity, token_windows

    checkpoint = Path(checkpoint)
    files = [t for t in tasks if t != PERPLEXITY]
    if PERPLEXITY in tasks and not data:
        raise EvaluationError("the perplexity task needs --data PREFIX...")
    if files and not tokenizer:
        raise EvaluationError("generation tasks need --tokenizer")
    if sampling is not None and not files:
        raise EvaluationError("--samples needs a generation task (a JSONL file)")
    samples = {Path(f).stem: read_tasks(f) for f in files}  # fail early on a bad file
    if is_hf_folder(checkpoint):
        if PERPLEXITY in tasks:
            raise EvaluationError("perplexity needs a dotsllm checkpoint, not a HF folder")
        model, meta = load_hf_model(checkpoint), {"step": None, "tokens_seen": None}
    else:
        model, meta = _load_checkpoint(checkpoint, parallel or ParallelConfig())
    results: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "step": meta["step"],
        "tokens_seen": meta["tokens_seen"],
        "tasks": {},
    }
    if PERPLEXITY in tasks:
        length = seq_len or meta.get("seq_length") or 2048
        result = perplexity(model, token_windows(data, length, max_samples), batch_size)
        results["tasks"][PERPLEXITY] = {**result.as_dict(), "seq_len": length, "data": list(data)}
    if samples:
        from dotsllm.chat_template import ChatTemplate
        from dotsllm.tokenizer import Tokenizer

        text_tokenizer = Tokenizer(tokenizer, eod_token=eod_token)
        template = ChatTemplate(text_tokenizer) if chat else None
        for name, task in samples.items():
            results["tasks"][name] = exact_match(
                model, text_tokenizer, task, max_new_tokens, batch_size, chat=template, score=score, sampling=sampling
            )
    return results


def is_hf_folder(path: str | Path) -> bool:
    """Whether ``path`` is an exported HF folder (config.json) rather than a dotsllm checkpoint."""
    path = Path(path)
    return (path / "config.json").is_file() and not (path / META_FILE).is_file()


def load_hf_model(path: str | Path):
    """The HF folder's causal LM in fp32, on CUDA when there is one."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()


def _load_checkpoint(path: Path, parallel: ParallelConfig) -> tuple[list, dict[str, Any]]:
    """This rank's model chunks of a dotsllm checkpoint in ``parallel``'s layout, and its metadata."""
    from dotsllm.convert.checkpoint_io import load_checkpoint_model
    from dotsllm.parallel.setup import init_distributed
    from dotsllm.training.checkpoint import read_meta

    init_distributed(parallel)
    meta = read_meta(path)
    chunks, _ = load_checkpoint_model(path)
    return chunks, meta
