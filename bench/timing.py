"""Timing shared by the bench scripts (run as ``python bench/NAME.py``, so this folder is on the path)."""

import time

import torch


def best_time(fn, repeats: int):
    """Best of ``repeats`` runs of ``fn``: wall seconds on CUDA, process (CPU) seconds on CPU, where other
    processes on a shared machine would otherwise swamp the measurement."""
    clock = time.perf_counter if torch.cuda.is_available() else time.process_time
    best, result = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = clock()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, clock() - start)
    return best, result
