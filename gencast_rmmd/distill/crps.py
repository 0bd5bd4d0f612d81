"""The one differentiable fair (unbiased) ensemble CRPS, in JAX.

For an ensemble `x_1..x_M` and an observation `y` (Ferro 2014; rmmd.md §2.6):

    CRPS_fair = (1/M) sum_i |x_i - y|  -  1/(2 M (M-1)) sum_{i != j} |x_i - x_j|

which is unbiased for the CRPS of the distribution the members are drawn from (scoringrules'
`crps_ensemble(..., estimator="fair")`). The pair term is computed with the sorted-ensemble
identity `sum_{i,j} |x_i - x_j| = 2 sum_i (2i - M - 1) x_(i)` (i = 1..M in sorted order), which is
O(M log M), exact, and differentiable almost everywhere (jnp.sort has a gradient). For M = 1 the
spread term is undefined and taken as 0 (the score is the absolute error).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def fair_crps(ensemble: jax.Array, truth: jax.Array, axis: int = 0) -> jax.Array:
    """Fair CRPS per point.

    Args:
      ensemble: members along `axis`, e.g. `[M, B, lat, lon, C]`.
      truth: the observation, shaped like `ensemble` without `axis` (broadcastable).
      axis: the member axis of `ensemble`.
    Returns: the CRPS with `axis` removed, in the units of the inputs.
    """
    ens = jnp.moveaxis(jnp.asarray(ensemble), axis, 0)
    m = ens.shape[0]
    skill = jnp.mean(jnp.abs(ens - truth), axis=0)
    if m == 1:
        return skill
    srt = jnp.sort(ens, axis=0)
    ranks = jnp.arange(1, m + 1, dtype=srt.dtype).reshape((m,) + (1,) * (ens.ndim - 1))
    pair_sum = 2.0 * jnp.sum((2.0 * ranks - m - 1.0) * srt, axis=0)  # sum_{i,j} |x_i - x_j|
    return skill - pair_sum / (2.0 * m * (m - 1))


def weighted_mean(values: jax.Array, weights: jax.Array | None, batch_axes: int = 1) -> jax.Array:
    """Mean over all but the leading `batch_axes` axes of `weights * values`.

    `weights` broadcasts against `values.shape[batch_axes:]` (e.g. latitude x level x variable
    weights of shape `[lat, 1, C]` normalized to mean 1); None means uniform.
    """
    v = values if weights is None else values * weights
    axes = tuple(range(batch_axes, v.ndim))
    return jnp.mean(v, axis=axes) if axes else v


def crps_reward(target_fn, weights: jax.Array | None = None):
    """A reward function `reward(samples [M, B, ...], cond, batch) -> [B]` = minus the weighted
    mean fair CRPS of the M members against `target_fn(batch)` `[B, ...]`."""

    def reward(samples: jax.Array, cond, batch) -> jax.Array:
        crps = fair_crps(samples, target_fn(batch), axis=0)
        return -weighted_mean(crps, weights)

    return reward


__all__ = ["crps_reward", "fair_crps", "weighted_mean"]
