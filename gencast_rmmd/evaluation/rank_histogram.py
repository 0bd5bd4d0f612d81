"""Rank histograms (Talagrand diagrams) with random tie-breaking, and reliability measures.

The rank of the observation y among M members is the number of members below it, r in {0..M}, so
there are M + 1 bins; for a calibrated ensemble and exchangeable truth P(r = k) = 1/(M+1)
(Anderson 1996; Hamill 2001). When t members equal y the rank is drawn uniformly among the t + 1
tied positions (the standard randomization; counting only strict "<" would pile tied cases into
the low bins). A U shape means under-dispersion, a dome over-dispersion, a slope a bias.
"""

from __future__ import annotations

import numpy as np


def observation_ranks(
    ensemble: np.ndarray, truth: np.ndarray, rng: np.random.Generator, axis: int = 0
) -> np.ndarray:
    """Rank of `truth` among the members along `axis`, ties broken at random.

    Args:
      ensemble: members along `axis`; truth: the ensemble's shape without `axis`.
      rng: numpy Generator used only where ties occur (draws one uniform per point).
    Returns:
      int64 ranks in [0, M], `truth`'s shape.
    """
    x = np.moveaxis(np.asarray(ensemble), axis, 0)
    y = np.asarray(truth)
    below = (x < y).sum(axis=0)
    ties = (x == y).sum(axis=0)
    jitter = np.floor(rng.random(y.shape) * (ties + 1)).astype(np.int64)
    return below.astype(np.int64) + np.minimum(jitter, ties)


def reliability_index(hist: np.ndarray, axis: int = -1) -> np.ndarray:
    """Delle Monache et al. (2006) reliability index: sum_k |p_k - 1/(M+1)|; 0 for a flat histogram.

    Args:
      hist: rank histogram(s) along `axis` (counts or frequencies; normalized here to sum 1).
    """
    h = np.asarray(hist, dtype=np.float64)
    p = h / h.sum(axis=axis, keepdims=True)
    return np.abs(p - 1.0 / h.shape[axis]).sum(axis=axis)


def outlier_rate(hist: np.ndarray, axis: int = -1) -> np.ndarray:
    """Fraction of observations outside the ensemble range (first + last bin); ideal 2/(M+1)."""
    h = np.moveaxis(np.asarray(hist, dtype=np.float64), axis, -1)
    return (h[..., 0] + h[..., -1]) / h.sum(axis=-1)
