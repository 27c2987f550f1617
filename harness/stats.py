"""Confidence intervals and a paired test for accuracy numbers (plain Python, no SciPy).

- :func:`wilson_interval`: the Wilson score interval for a proportion (top-1, top-5, an
  agreement rate). Unlike the normal ("Wald") interval it stays inside [0, 1] and keeps its
  coverage near 0% and 100% and for small samples.
- :func:`mean_class_interval`: mean class accuracy is the mean of per-class proportions,
  not a proportion: a normal interval on that mean, each class's variance taken from its
  Agresti-Coull estimate (x + 2) / (n + 4), so a class at 0% or 100% still counts.
- :func:`mcnemar_exact`: McNemar's exact test on paired correctness (two models, the same
  videos): only the videos where exactly one is right carry information.
"""

from __future__ import annotations

import math
from statistics import NormalDist

CONFIDENCE = 0.95


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """(low, high) of the Wilson score interval; None when ``n`` is 0."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def mean_class_interval(correct: list[int], counts: list[int],
                        confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """(low, high) for the mean over classes of ``correct[c] / counts[c]`` (classes with
    ``counts[c] > 0``); None when there is none."""
    pairs = [(x, n) for x, n in zip(correct, counts) if n > 0]
    if not pairs:
        return None
    k = len(pairs)
    mean = sum(x / n for x, n in pairs) / k
    variance = sum(((x + 2) / (n + 4)) * (1 - (x + 2) / (n + 4)) / n for x, n in pairs) / (k * k)
    half = _z(confidence) * math.sqrt(variance)
    return max(0.0, mean - half), min(1.0, mean + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided p-value of McNemar's exact test: ``only_a`` videos right only under A,
    ``only_b`` right only under B. Under "no difference" each such video is a fair coin:
    p = min(1, 2 * P(Binomial(only_a + only_b, 1/2) <= min(only_a, only_b)))."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
