"""Noise-level schedules of GenCast (EDM "rho" spacing, Karras et al. 2022; reference notes §2.5).

The same formula serves training and sampling:

    rho_inverse_cdf(lo, hi, rho, u) = (lo^(1/rho) + u (hi^(1/rho) - lo^(1/rho)))^rho,   u in [0, 1]

which is the quantile function of ``lo..hi`` spaced uniformly in ``sigma^(1/rho)``. With rho = 7
levels crowd at small sigma, where the denoiser's work is finest.

- Training: one ``sigma = rho_inverse_cdf(0.02, 88, 7, U(0, 1))`` per batch element.
- Sampling: ``rho_inverse_cdf(0.03, 80, 7, linspace(1, 0, N))`` followed by a final 0 (N + 1 values,
  descending). Stochastic churn (EDM's S_churn) raises sigma by the factor ``1 + gamma_i`` before
  step i, with ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` where ``S_min <= sigma_i <= S_max``.

The functions take any object with the fields of `SamplerConfig` / `NoiseConfig`
(`gencast_rmmd.model.configs`), so they do not depend on how the configs are stored.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def rho_inverse_cdf(min_value: float, max_value: float, rho: float, cdf):
    """EDM rho quantile: ``(min^(1/rho) + cdf (max^(1/rho) - min^(1/rho)))^rho``.

    Works on numpy or jax arrays `cdf` in [0, 1]; cdf=0 gives `min_value`, cdf=1 `max_value`.
    """
    lo = min_value ** (1.0 / rho)
    hi = max_value ** (1.0 / rho)
    return (lo + cdf * (hi - lo)) ** rho


def sampling_noise_levels(cfg: Any) -> np.ndarray:
    """The sampler's sigma schedule: `num_noise_levels` rho-spaced values from max to min, then 0.

    Args:
      cfg: a `SamplerConfig` (max_noise_level, min_noise_level, num_noise_levels, rho).
    Returns [num_noise_levels + 1] float64, strictly descending, last entry 0.
    """
    n = int(cfg.num_noise_levels)
    u = np.linspace(1.0, 0.0, n)
    sig = rho_inverse_cdf(float(cfg.min_noise_level), float(cfg.max_noise_level), float(cfg.rho), u)
    return np.concatenate([np.asarray(sig, dtype=np.float64), [0.0]])


def churn_gammas(cfg: Any) -> np.ndarray:
    """Per-step churn rates gamma_i for the first `num_noise_levels` sigmas of the schedule.

    ``gamma_i = min(stochastic_churn_rate / N, sqrt(2) - 1)`` where
    ``churn_min_noise_level <= sigma_i <= churn_max_noise_level``, else 0. With GenCast's defaults
    (2.5, 20 levels, S_min 0.75) that is 0.125 for sigma >= 0.75 and 0 below.
    Returns [num_noise_levels] float64.
    """
    sig = sampling_noise_levels(cfg)[:-1]
    n = int(cfg.num_noise_levels)
    rate = min(float(cfg.stochastic_churn_rate) / n, np.sqrt(2.0) - 1.0)
    on = (sig >= float(cfg.churn_min_noise_level)) & (sig <= float(cfg.churn_max_noise_level))
    return np.where(on, rate, 0.0)


def sample_training_noise_levels(rng: jax.Array, batch: int, cfg: Any) -> jax.Array:
    """Draw one training sigma per batch element: ``rho_inverse_cdf(min, max, rho, U(0, 1))``.

    Args:
      rng: a JAX key; batch: number of sigmas;
      cfg: a `NoiseConfig` (training_min_noise_level, training_max_noise_level,
        training_noise_level_rho). GenCast: 0.02, 88, 7.
    Returns [batch] float32.
    """
    u = jax.random.uniform(rng, (batch,), dtype=jnp.float32)
    return rho_inverse_cdf(
        float(cfg.training_min_noise_level),
        float(cfg.training_max_noise_level),
        float(cfg.training_noise_level_rho),
        u,
    ).astype(jnp.float32)
