"""Fair (unbiased) ensemble CRPS in numpy, with its skill and spread parts.

For an ensemble x_1..x_M and an observation y (Ferro 2014; Zamo & Naveau 2018; WeatherBench 2's
`CRPS`, reference notes §0 and §1.2):

    skill  = (1/M) sum_i |x_i - y|
    spread = 1/(M(M-1)) sum_{i != j} |x_i - x_j|
           = 2/(M(M-1)) sum_i (2i - M - 1) x_(i)        (x_(i) sorted ascending, i = 1..M)
    CRPS   = skill - spread / 2

The sorted form needs one sort over members (O(M log M)) instead of M^2 pairs. The fair estimator
is unbiased for the CRPS of the distribution the members are drawn from, so ensembles of different
sizes can be compared. For M = 1 the spread is 0 (CRPS = MAE), as in WeatherBench 2.

`gencast_rmmd.distill.crps.fair_crps` is the differentiable JAX twin used as the distillation
reward; the tests check both against each other and against scoringrules (`estimator="fair"`).
"""

from __future__ import annotations

import numpy as np


def spread_from_sorted(ens_sorted: np.ndarray, axis: int = 0) -> np.ndarray:
    """Fair mean absolute member difference E|X - X'| from members sorted along `axis`.

    Args:
      ens_sorted: [..., M, ...] members sorted ascending along `axis`.
    Returns:
      the array without `axis`; 0 where M < 2.
    """
    x = np.moveaxis(np.asarray(ens_sorted), axis, 0)
    m = x.shape[0]
    if m < 2:
        return np.zeros(x.shape[1:], dtype=np.result_type(x.dtype, np.float32))
    coef = (2.0 * np.arange(1, m + 1) - m - 1).astype(np.float64)
    return np.tensordot(coef, x, axes=(0, 0)) * (2.0 / (m * (m - 1)))


def fair_crps_parts(
    ensemble: np.ndarray, truth: np.ndarray, axis: int = 0, sorted_ensemble: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Skill and spread parts of the fair CRPS, pointwise.

    Args:
      ensemble: members along `axis`; any other dims must broadcast with `truth`.
      truth: observation, the ensemble's shape without `axis`.
      sorted_ensemble: whether the members are already sorted along `axis` (skips the sort).
    Returns:
      (skill, spread), each with `truth`'s shape, in the variable's units. CRPS = skill - spread/2.
    """
    x = np.moveaxis(np.asarray(ensemble, dtype=np.float64), axis, 0)
    y = np.asarray(truth, dtype=np.float64)
    xs = x if sorted_ensemble else np.sort(x, axis=0)
    skill = np.abs(xs - y).mean(axis=0)
    return skill, spread_from_sorted(xs, axis=0)


def fair_crps(ensemble: np.ndarray, truth: np.ndarray, axis: int = 0) -> np.ndarray:
    """Pointwise fair CRPS (units of the variable); see the module docstring for the formula."""
    skill, spread = fair_crps_parts(ensemble, truth, axis=axis)
    return skill - 0.5 * spread
