"""The MinHash signature loop, compiled with numba (imported only by the processes that compute signatures)."""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def min_hashes(shingles: np.ndarray, a: np.ndarray, b: np.ndarray, sig: np.ndarray) -> None:
    """sig[j] = min(sig[j], min over shingles x of (a[j] * x + b[j]) mod 2^32).

    Compiled with numba because numpy needs three passes over a (shingles, bands * rows) temporary
    (multiply, add, min); one fused loop keeps `sig` in L1 cache and vectorises the 32-bit
    multiply-add-min: 7.6× the numpy version's rate at 128 × 16 (measured once, 300 documents of
    3 kB, one thread, when it replaced it; bench/bench_data_pipeline.py times the step as a whole)."""
    for i in range(shingles.shape[0]):
        x = shingles[i]
        for j in range(sig.shape[0]):
            h = np.uint32(a[j] * x + b[j])
            if h < sig[j]:
                sig[j] = h
