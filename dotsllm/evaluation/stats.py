"""The uncertainty of an evaluation over P prompts: standard errors and the unbiased pass@k estimator.

Every standard error here is that of a mean over prompts, the prompts taken as a random sample of the
task's population: ``sqrt(v / P)`` with ``v`` the variance of the per-prompt values about their mean
(divided by P, not P − 1). On 0/1 values (greedy correctness) it is ``sqrt(p(1 − p) / P)``; on a
prompt's share of correct samples ``c_i / N`` it holds both the spread between prompts and each
prompt's sampling noise. With one prompt it is 0: no spread seen, no error claimed.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): with N samples of a
prompt of which c are correct, ``1 − C(N − c, k) / C(N, k)`` is the unbiased estimate of the
probability that at least one of k samples is correct. The ratio is Chen et al.'s product
``Π_{i=N−c+1}^{N} (1 − k / i)``, taken in exact integer arithmetic (``Π (i − k) / Π i``) and rounded
once: no float binomial overflows (C(2000, 1000) ≈ 2e600), no rounding piles up, and pass@1 is
exactly the float c/N, pass@N exactly 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of a prompt with ``c`` of ``n`` samples correct (see the module doc)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    # C(n - c, k) / C(n, k) = Π_{i=n-c+1}^{n} (i - k) / i
    missed = Fraction(math.prod(range(n - c + 1 - k, n + 1 - k)), math.prod(range(n - c + 1, n + 1)))
    return float(1 - missed)


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean of per-prompt ``values`` and its standard error over prompts (see the module doc)."""
    if not values:
        raise ValueError("mean_and_se: no values")
    count = len(values)
    mean = math.fsum(values) / count
    variance = math.fsum((v - mean) ** 2 for v in values) / count
    return mean, math.sqrt(variance / count)


def proportion_se(correct: int, total: int) -> float:
    """``sqrt(p(1 − p) / total)`` with ``p = correct / total``: the standard error of an accuracy."""
    if not 0 <= correct <= total or total < 1:
        raise ValueError(f"proportion_se: need 0 <= correct <= total and total >= 1, got {correct}/{total}")
    p = correct / total
    return math.sqrt(p * (1 - p) / total)
