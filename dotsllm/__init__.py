"""dotsllm: the dots.llm1 MoE recipe on Megatron-Core."""

__version__ = "0.1.0"
