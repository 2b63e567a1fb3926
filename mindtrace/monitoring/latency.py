"""Latency histograms that add up across workers, replicas and flushes: fixed log-spaced buckets.

Each worker counts its model calls' durations into :data:`EDGES` buckets (one count per request a call
answered) and writes the counts with its prediction log flushes; a rollout adds every flush of a version up
and reads its percentiles here. The buckets grow by 10 % each, so a percentile is known to within 10 %.

>>> counts = histogram(np.array([0.001] * 98 + [0.05, 0.2]))
>>> round(quantile(counts, 0.5) * 1000, 2), round(quantile(counts, 0.99) * 1000, 1)
(1.07, 53.1)
"""

from __future__ import annotations

import numpy as np

# 10 microseconds to about 100 seconds, 10 % apart; the first and last buckets take anything beyond.
EDGES = 1e-5 * 1.1 ** np.arange(170)
BUCKETS = len(EDGES) + 1


def empty() -> np.ndarray:
    """A histogram with no observation."""
    return np.zeros(BUCKETS, dtype=np.int64)


def bucket(seconds: float) -> int:
    """The bucket of one duration.

    >>> bucket(0.0), bucket(1e9) == BUCKETS - 1
    (0, True)
    """
    return int(np.searchsorted(EDGES, seconds))


def histogram(seconds: np.ndarray) -> np.ndarray:
    """The histogram of many durations."""
    return np.bincount(np.searchsorted(EDGES, seconds), minlength=BUCKETS).astype(np.int64)


def quantile(counts: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile (0-1) of a histogram, as its bucket's upper edge; None when it is empty."""
    total = int(counts.sum())
    if total == 0:
        return None
    index = int(np.searchsorted(np.cumsum(counts), q * total))
    return float(EDGES[min(index, len(EDGES) - 1)])
