"""GenCast's denoising loss (reference notes §2.4, §2.5, §2.7).

For a clean normalized residual target ``x0`` ([B, lat, lon, C]):

1. draw one ``sigma_b = rho_inverse_cdf(0.02, 88, 7, U(0, 1))`` per batch element;
2. corrupt with spherical white noise: ``x_noisy = x0 + sigma eps``;
3. denoise: ``D = denoise_fn(params, x_noisy, sigma, cond)`` (EDM-preconditioned inside);
4. per element: ``lambda(sigma) * sum_c w_c * mean_{lat,lon}(a_lat (D - x0)^2)`` with
   ``lambda(sigma) = (sigma^2 + 1) / sigma^2 = 1 / c_out^2`` (sigma_data = 1), latitude area weights
   ``a_lat`` (mean 1) and the per-channel weights `gencast_rmmd.model.grid.channel_weights`
   (per-variable x pressure-level weights, summed over variables as GenCast does);
5. mean over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gencast_rmmd.model.noise_schedule import sample_training_noise_levels


def loss_weight(sigma: jax.Array) -> jax.Array:
    """EDM loss weight for sigma_data = 1: ``(sigma^2 + 1) / sigma^2`` (= 1 / c_out(sigma)^2)."""
    return (sigma**2 + 1.0) / sigma**2


def weighted_mse(
    pred: jax.Array, target: jax.Array, lat_weights: jax.Array, chan_weights: jax.Array
) -> jax.Array:
    """Latitude- and channel-weighted squared error per batch element.

    ``sum_c w_c * mean_{lat, lon}(a_lat * (pred - target)^2)``.

    Args:
      pred, target: [B, lat, lon, C]; lat_weights: [lat] (mean 1); chan_weights: [C].
    Returns [B].
    """
    se = (pred - target) ** 2
    se = se * lat_weights[:, None, None]
    per_channel = jnp.mean(se, axis=(1, 2))  # [B, C]
    return jnp.sum(per_channel * chan_weights, axis=-1)


def denoising_loss(
    denoise_fn: Callable[[Any, jax.Array, jax.Array, Any], jax.Array],
    params: Any,
    rng: jax.Array,
    x0: jax.Array,
    cond: Any,
    noise_fn: Callable,
    noise_cfg: Any,
    lat_weights: jax.Array,
    chan_weights: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GenCast's training loss for one batch (see the module docstring).

    Args:
      denoise_fn: ``denoise_fn(params, x_noisy, sigma [B], cond) -> x0_hat``.
      params: parameters to differentiate.
      rng: JAX key (drawn: sigma per element, then the noise).
      x0: [B, lat, lon, C] clean normalized residual targets.
      cond: conditioning pytree for `denoise_fn`.
      noise_fn: ``noise_fn(rng, shape)`` unit-variance noise (SH noise for GenCast).
      noise_cfg: a `NoiseConfig` (training_min/max_noise_level, training_noise_level_rho).
      lat_weights: [lat] mean-1 area weights (`grid.latitude_weights`).
      chan_weights: [C] channel weights (`grid.channel_weights`).
    Returns (scalar loss = batch mean, aux) with aux ``{"sigma": [B], "per_example": [B]
    weighted loss, "mse": [B] unweighted-by-sigma weighted MSE}``.
    """
    k_sigma, k_noise = jax.random.split(rng)
    batch = x0.shape[0]
    sigma = sample_training_noise_levels(k_sigma, batch, noise_cfg)
    eps = noise_fn(k_noise, x0.shape)
    bshape = (batch,) + (1,) * (x0.ndim - 1)
    x_noisy = x0 + sigma.reshape(bshape) * eps
    d = denoise_fn(params, x_noisy, sigma, cond)
    mse = weighted_mse(d, x0, lat_weights, chan_weights)
    per_example = loss_weight(sigma) * mse
    return jnp.mean(per_example), {"sigma": sigma, "per_example": per_example, "mse": mse}
