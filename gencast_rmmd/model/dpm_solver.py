"""GenCast's sampler: DPM-Solver++ (2S) with EDM stochastic churn (reference notes §2.5).

DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095) integrates the probability-flow ODE in its
data-prediction form. For the variance-exploding parameterisation ``x = x0 + sigma eps`` that
GenCast uses, one second-order single-step ("2S", midpoint r = 1/2) step from sigma to sigma' is

    sigma_mid = sqrt(sigma sigma')                      (the midpoint in log sigma)
    x_mid     = (sigma_mid / sigma) x + (1 - sigma_mid / sigma) D(x, sigma)
    x'        = (sigma' / sigma) x     + (1 - sigma' / sigma)     D(x_mid, sigma_mid)

where ``D`` is the denoiser (an estimate of E[x0 | x]). Before each step, EDM's stochastic churn
(Karras et al. 2022, Alg. 2) raises the noise level to ``sigma_hat = sigma (1 + gamma_i)`` by adding
fresh noise of std ``S_noise sqrt(sigma_hat^2 - sigma^2)`` (S_noise = 1.05, slightly over-noising,
which counters the denoiser's tendency to remove too much), and the step starts from sigma_hat.

The last step goes to sigma' = 0, where the update reduces to ``x' = D(x, sigma_hat)`` (a plain
Euler step: the midpoint would be at sigma_mid = 0). We evaluate it as one denoiser call, so a run
with N noise levels costs ``2 (N - 1) + 1 = 2 N - 1`` network evaluations: 39 for GenCast's 20
levels, 59 for the 30-level teacher of the RMMD paper. (The public code also computes, and
discards, the midpoint evaluation of the last step: 40 calls of which 39 are used.)

Every noise draw (initial noise and churn) uses `noise_fn` (spherical white noise for GenCast) with a
key folded from the caller's `rng` by step index, so a run is a pure function of `rng`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.model.noise_schedule import churn_gammas, sampling_noise_levels

DenoiseFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
NoiseFn = Callable[[jax.Array, Sequence[int]], jax.Array]


def noise_schedule(cfg: Any) -> np.ndarray:
    """The sampler's noise levels: [num_noise_levels + 1] descending from max to min, then 0."""
    return sampling_noise_levels(cfg)


def churn_schedule(cfg: Any) -> np.ndarray:
    """Per-step churn rates gamma_i, [num_noise_levels] (0.125 for sigma >= 0.75 by default)."""
    return churn_gammas(cfg)


def num_evaluations(cfg: Any) -> int:
    """Denoiser evaluations of one `sample` call: ``2 N - 1`` for N noise levels (20 -> 39)."""
    n = int(cfg.num_noise_levels)
    return 2 * n - 1


def sample(
    denoise_fn: DenoiseFn,
    params: Any,
    rng: jax.Array,
    cond: Any,
    shape: Sequence[int],
    noise_fn: NoiseFn,
    cfg: Any,
) -> jax.Array:
    """Draw x0 ~ p(x0 | cond) with DPM-Solver++ 2S and stochastic churn.

    Args:
      denoise_fn: ``denoise_fn(params, x_noisy, sigma, cond) -> x0_hat`` with ``x_noisy = x0 +
        sigma eps``, ``sigma: [B]`` (the generic denoiser contract, docs/contracts.md).
      params: the denoiser's parameters (passed through).
      rng: a JAX key; the whole run is a deterministic function of it.
      cond: conditioning pytree passed through to `denoise_fn`.
      shape: static sample shape ``[B, ...]`` (GenCast: ``[B, lat, lon, C_out]``).
      noise_fn: ``noise_fn(rng, shape)`` unit-variance noise (SH noise for GenCast).
      cfg: a `SamplerConfig` (max/min_noise_level, num_noise_levels, rho,
        stochastic_churn_rate, churn_min/max_noise_level, noise_level_inflation_factor).
    Returns x0 of `shape`, float32. Pure JAX: works under `jit` (static shape, cfg and functions)
    and `vmap` (e.g. over member keys and conditioning).
    """
    shape = tuple(int(s) for s in shape)
    sig_np = noise_schedule(cfg)
    gam_np = churn_schedule(cfg)
    n = len(sig_np) - 1
    if n < 1:
        raise ValueError(f"sampler: num_noise_levels must be >= 1, found {n}")
    sigmas = jnp.asarray(sig_np, dtype=jnp.float32)
    gammas = jnp.asarray(gam_np, dtype=jnp.float32)
    inflation = float(cfg.noise_level_inflation_factor)
    batch = shape[0]
    k_init, k_churn = jax.random.split(rng)

    def denoise(x, s):
        return denoise_fn(params, x, jnp.full((batch,), s, dtype=jnp.float32), cond)

    def churn(i, x, churned: bool, draw: jax.Array | None = None):
        """Raise sigma_i to sigma_hat = sigma_i (1 + gamma_i) by adding fresh noise (`churned`:
        a static flag, True exactly where gamma_i > 0, so churn-free steps draw no noise; `draw`:
        None to add it, or a traced flag: added only where True, through a cond on the draw)."""
        s = sigmas[i]
        if not churned:
            return x, s
        s_hat = s * (1.0 + gammas[i])
        std = inflation * jnp.sqrt(jnp.maximum(s_hat**2 - s**2, 0.0))
        key = jax.random.fold_in(k_churn, i)
        if draw is None:
            return x + std * noise_fn(key, shape), s_hat
        return jax.lax.cond(draw, lambda x: x + std * noise_fn(key, shape), lambda x: x, x), s_hat

    def make_body(churned: bool):
        """One denoiser call per iteration: half-step j of step i = j // 2 evaluates D at the
        (churned) step start when j is even, at the midpoint when j is odd. The carry is (the
        point the next call evaluates, the step start). A loop body with both of a step's calls
        ran each call ~20% slower on XLA:CPU (benchmarks/step_breakdown.py, docs/distill.md)."""

        def body(j, carry):
            y, x = carry
            i = j // 2
            even = j % 2 == 0
            x, s = churn(i, x, churned, draw=even)  # the noise is added at the step start only
            s_next = sigmas[i + 1]
            s_mid = jnp.sqrt(s * s_next)
            a = jnp.where(even, s_mid / s, s_next / s)
            out = a * x + (1.0 - a) * denoise(jnp.where(even, x, y), jnp.where(even, s, s_mid))
            return out, jnp.where(even, x, out)  # x_mid (the step start kept) or x_next

        return body

    x = sigmas[0] * noise_fn(k_init, shape).astype(jnp.float32)
    # One loop per run of consecutive steps with the same churn flag (GenCast's schedule: churn
    # while sigma >= 0.75, then none), so churn-free steps carry no cond at all.
    churned = np.asarray(gam_np[: n - 1] > 0)
    start = 0
    while start < n - 1:
        stop = start + 1
        while stop < n - 1 and churned[stop] == churned[start]:
            stop += 1
        x, _ = jax.lax.fori_loop(2 * start, 2 * stop, make_body(bool(churned[start])), (x, x))
        start = stop
    # Final step to sigma = 0: the 2S update collapses to the denoised estimate (Euler step).
    x, s = churn(n - 1, x, bool(gam_np[n - 1] > 0))
    return denoise(x, s).astype(jnp.float32)
