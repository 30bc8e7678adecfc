"""The parallel layout (:class:`ParallelConfig`) and the process groups of a run (:mod:`.setup`)."""

from dotsllm.parallel.config import ParallelConfig

__all__ = ["ParallelConfig"]
