"""Evaluation of dots1 models: perplexity on held-out token shards, greedy generation tasks, the main job's report."""

from dotsllm.evaluation.generation import exact_match, read_tasks
from dotsllm.evaluation.perplexity import PerplexityResult, perplexity, token_windows
from dotsllm.evaluation.runner import EvaluationError, evaluate

__all__ = ["EvaluationError", "PerplexityResult", "evaluate", "exact_match", "perplexity", "read_tasks", "token_windows"]
