"""Evaluation of dots1 models: perplexity on held-out token shards, greedy generation tasks."""

from dotsllm.evaluation.generation import exact_match, read_tasks
from dotsllm.evaluation.perplexity import PerplexityResult, perplexity, token_windows

__all__ = ["PerplexityResult", "exact_match", "perplexity", "read_tasks", "token_windows"]
