"""Generation on the live megatron model, in any TP/PP/EP/DP layout: eval and GRPO rollouts call it."""

from dotsllm.inference.data_parallel import data_parallel_share, gather_from_data_parallel, generate_data_parallel
from dotsllm.inference.generate import GenerationRequest, GenerationResult, completion_ids, generate
from dotsllm.inference.sampling import SamplingParams

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "SamplingParams",
    "completion_ids",
    "data_parallel_share",
    "gather_from_data_parallel",
    "generate",
    "generate_data_parallel",
]
