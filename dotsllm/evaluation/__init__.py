"""Evaluation of dots1 models: perplexity on held-out token shards, generation tasks (greedy, and sampled
with pass@k, each number with its standard error), the main job's report."""

from dotsllm.evaluation.generation import SampledEval, exact_match, read_tasks
from dotsllm.evaluation.perplexity import PerplexityResult, perplexity, token_windows
from dotsllm.evaluation.runner import EvaluationError, evaluate
from dotsllm.evaluation.stats import mean_and_se, pass_at_k, proportion_se

__all__ = [
    "EvaluationError", "PerplexityResult", "SampledEval", "evaluate", "exact_match", "mean_and_se", "pass_at_k",
    "perplexity", "proportion_se", "read_tasks", "token_windows",
]  # fmt: skip
