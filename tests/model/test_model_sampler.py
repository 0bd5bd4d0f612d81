"""DPM-Solver++ 2S with stochastic churn: schedules, network-evaluation counts, exactness on a
Gaussian problem, jit/vmap.

The Gaussian test: data x0 ~ N(mu_c, s_c^2) independently per dimension, so the exact denoiser is
``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)``. Every sampler operation is then affine in x
plus independent noise, so the sampler's output mean and variance can be propagated exactly in
float64 (`_propagate_moments`, written independently of the implementation). Empirical moments of
the sampler must match the propagated ones within 5 standard errors, and the propagated moments
must be close to the data's (the solver's discretisation error, stated per config).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gencast_rmmd.model import dpm_solver
from gencast_rmmd.model.configs import SamplerConfig
from gencast_rmmd.model.grid import equiangular_latitudes, latitude_weights
from gencast_rmmd.model.sh_noise import gaussian_noise, make_sh_noise_fn

MU = np.array([0.0, 0.5, -1.0, 2.0])
S = np.array([1.0, 0.5, 2.0, 0.1])


def gaussian_denoiser(params, x, sigma, cond):
    mu, s = params
    k = s**2 / (s**2 + sigma[:, None, None, None] ** 2)
    return mu + k * (x - mu)


def _propagate_moments(cfg: SamplerConfig, mu: float, s: float) -> tuple[float, float]:
    """Exact mean/variance of the sampler's output for the Gaussian problem (float64 reference).

    Re-derives the schedule from the formulas (not from the module) and walks the algorithm:
    x_0 = sigma_0 eps; per step: churn (add variance (S_noise^2)(sigma_hat^2 - sigma^2)), then the
    2S update (two affine maps), and the final step returns D(x, sigma_hat).
    """
    n = cfg.num_noise_levels
    lo, hi = cfg.min_noise_level ** (1 / cfg.rho), cfg.max_noise_level ** (1 / cfg.rho)
    sig = [(lo + u * (hi - lo)) ** cfg.rho for u in np.linspace(1, 0, n)] + [0.0]
    rate = min(cfg.stochastic_churn_rate / n, np.sqrt(2) - 1)

    def k(sg):
        return s**2 / (s**2 + sg**2)

    m, v = 0.0, sig[0] ** 2
    for i in range(n):
        sg = sig[i]
        gamma = rate if cfg.churn_min_noise_level <= sg <= cfg.churn_max_noise_level else 0.0
        sh = sg * (1 + gamma)
        v += cfg.noise_level_inflation_factor**2 * (sh**2 - sg**2)
        if i == n - 1:  # D(x, sh) = k x + (1 - k) mu
            return k(sh) * m + (1 - k(sh)) * mu, k(sh) ** 2 * v
        nxt = sig[i + 1]
        mid = np.sqrt(sh * nxt)
        r = mid / sh
        a1, b1 = r + (1 - r) * k(sh), (1 - r) * (1 - k(sh)) * mu  # x_mid = a1 x + b1
        r2 = nxt / sh
        # x' = r2 x + (1 - r2) (mu + k_mid (x_mid - mu))
        a2 = r2 + (1 - r2) * k(mid) * a1
        b2 = (1 - r2) * (mu + k(mid) * (b1 - mu))
        m, v = a2 * m + b2, a2**2 * v
    raise AssertionError("unreachable")


def _gaussian_sampler(cfg: SamplerConfig, shape: tuple[int, ...]):
    """The jitted sampler with the exact Gaussian denoiser and i.i.d. noise: fn(params, key)."""
    return jax.jit(
        functools.partial(
            dpm_solver.sample,
            gaussian_denoiser,
            shape=shape,
            noise_fn=gaussian_noise,
            cfg=cfg,
            cond=None,
        )
    )


def test_default_schedule_and_churn():
    cfg = SamplerConfig()
    sig = dpm_solver.noise_schedule(cfg)
    assert sig.shape == (21,)
    assert np.all(np.diff(sig) < 0) and sig[-1] == 0.0
    np.testing.assert_allclose(sig[0], 80.0, rtol=1e-12)
    np.testing.assert_allclose(sig[-2], 0.03, rtol=1e-12)
    gam = dpm_solver.churn_schedule(cfg)
    assert gam.shape == (20,)
    np.testing.assert_allclose(gam[sig[:-1] >= 0.75], 0.125)
    np.testing.assert_array_equal(gam[sig[:-1] < 0.75], 0.0)
    assert 0 < (sig[:-1] < 0.75).sum() < 20  # both regimes occur
    # The cap sqrt(2) - 1 applies for large churn rates.
    big = dpm_solver.churn_schedule(dataclasses.replace(cfg, stochastic_churn_rate=100.0))
    np.testing.assert_allclose(big.max(), np.sqrt(2) - 1)


@pytest.mark.parametrize("levels, nfe", [(20, 39), (30, 59), (4, 7), (1, 1)])
def test_num_evaluations_counts_real_calls(levels, nfe):
    cfg = SamplerConfig(num_noise_levels=levels)
    assert dpm_solver.num_evaluations(cfg) == nfe
    calls = []

    def counting(params, x, sigma, cond):
        jax.debug.callback(lambda: calls.append(1))
        return gaussian_denoiser(params, x, sigma, cond)

    params = (jnp.asarray(MU[:1]), jnp.asarray(S[:1]))
    fn = jax.jit(
        functools.partial(
            dpm_solver.sample,
            counting,
            shape=(1, 2, 2, 1),
            noise_fn=gaussian_noise,
            cfg=cfg,
            cond=None,
        )
    )
    jax.block_until_ready(fn(params, jax.random.key(0)))
    jax.effects_barrier()
    assert len(calls) == nfe


CONFIGS = {
    # name: (config, max relative error of the propagated variance vs the ideal variance).
    # Measured: the churn with S_noise = 1.05 over-disperses by ~6% (20 levels) / ~8% (30 levels,
    # more churned steps); without churn the 2S discretisation under-disperses by 2.6-4%.
    "gencast_default": (SamplerConfig(), 0.08),
    "rmmd_30_levels": (SamplerConfig(num_noise_levels=30), 0.10),
    "no_churn": (SamplerConfig(stochastic_churn_rate=0.0, noise_level_inflation_factor=1.0), 0.05),
    "few_levels": (SamplerConfig(num_noise_levels=6), 0.35),
}


def _ideal_variance(cfg: SamplerConfig, s: float) -> float:
    """Variance after an exact ODE solve down to sigma_min and the final denoising step.

    The last step returns E[x0 | x] at sigma_min, whose variance is s^2 k = s^4 / (s^2 + sigma^2),
    slightly below s^2 (the posterior mean removes the residual noise and a bit of signal)."""
    return s**4 / (s**2 + cfg.min_noise_level**2)


def test_solver_is_second_order():
    """Without churn, doubling the levels cuts the variance error ~4x (second order)."""
    errs = []
    for n in (20, 40, 80):
        cfg = SamplerConfig(
            num_noise_levels=n, stochastic_churn_rate=0.0, noise_level_inflation_factor=1.0
        )
        _, v = _propagate_moments(cfg, 0.0, 1.0)
        errs.append(abs(v / _ideal_variance(cfg, 1.0) - 1))
    assert errs[0] / errs[1] > 3.0 and errs[1] / errs[2] > 3.0, errs


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exact_gaussian_denoiser_gives_right_moments(name):
    cfg, solver_tol = CONFIGS[name]
    shape = (16, 32, 64, len(MU))
    params = (jnp.asarray(MU, jnp.float32), jnp.asarray(S, jnp.float32))
    fn = _gaussian_sampler(cfg, shape)
    x = np.asarray(fn(params, jax.random.key(42)), np.float64)
    n = np.prod(shape[:-1])
    for c in range(len(MU)):
        m_ref, v_ref = _propagate_moments(cfg, MU[c], S[c])
        xc = x[..., c]
        # Sampler vs exact propagation: 5 standard errors of the sample mean / variance.
        assert abs(xc.mean() - m_ref) < 5 * np.sqrt(v_ref / n), (c, xc.mean(), m_ref)
        assert abs(xc.var() - v_ref) < 5 * v_ref * np.sqrt(2 / n), (c, xc.var(), v_ref)
        # Propagated moments vs the data distribution: the solver's own error.
        ratio = v_ref / _ideal_variance(cfg, S[c])
        assert abs(ratio - 1) < solver_tol, (name, c, ratio)
        assert abs(m_ref - MU[c]) < 0.02 * S[c] + 1e-3


def test_spherical_noise_sampler_area_weighted_moments():
    """Same Gaussian check with SH noise on the 32x64 grid (spatially correlated samples).

    The area-weighted mean of x^2 over one field of flat-spectrum unit noise has variance
    2 sum_l P_l^2 / (2l + 1) = 2 / L^2 sum_l 1 / (2l + 1) (~0.0055 for L = 32); we average 64
    fields, so the standard error of the variance ratio is sqrt(0.0055 / 64) ~ 0.009; tolerance 5x.
    """
    lat = equiangular_latitudes(32, False)
    lon = np.arange(64) * 5.625
    noise_fn = make_sh_noise_fn(lat, lon)
    cfg = SamplerConfig()
    shape = (16, 32, 64, len(MU))
    params = (jnp.asarray(MU, jnp.float32), jnp.asarray(S, jnp.float32))
    x = np.asarray(
        jax.jit(
            functools.partial(
                dpm_solver.sample,
                gaussian_denoiser,
                shape=shape,
                noise_fn=noise_fn,
                cfg=cfg,
                cond=None,
            )
        )(params, jax.random.key(7)),
        np.float64,
    )
    w = latitude_weights(lat)[None, :, None] / (64 * 32)
    n_l = 32
    se = np.sqrt(2 / n_l**2 * np.sum(1 / (2 * np.arange(n_l) + 1)) / 16)  # per channel: 16 fields
    for c in range(len(MU)):
        m_ref, v_ref = _propagate_moments(cfg, MU[c], S[c])
        dev = x[..., c] - m_ref
        ratio = np.mean(np.sum(w * dev**2, axis=(1, 2))) / v_ref
        assert abs(ratio - 1) < 5 * se, (c, ratio)


def test_jit_vmap_over_members_and_determinism():
    cfg = SamplerConfig(num_noise_levels=5)
    shape = (2, 4, 8, 4)
    params = (jnp.asarray(MU, jnp.float32), jnp.asarray(S, jnp.float32))
    cond = jnp.zeros(())  # any pytree is passed through

    def den(p, x, sigma, c):
        return gaussian_denoiser(p, x, sigma, None) + c

    run = functools.partial(dpm_solver.sample, den, shape=shape, noise_fn=gaussian_noise, cfg=cfg)
    one = jax.jit(lambda k, c: run(params, k, c))
    keys = jax.random.split(jax.random.key(0), 3)
    many = jax.jit(jax.vmap(lambda k: run(params, k, cond)))(keys)
    assert many.shape == (3,) + shape and many.dtype == jnp.float32
    for i in range(3):
        np.testing.assert_allclose(many[i], one(keys[i], cond), rtol=1e-5, atol=1e-5)
    assert not np.allclose(many[0], many[1])
    np.testing.assert_array_equal(one(keys[0], cond), one(keys[0], cond))
    # Conditioning is passed through (shifts the denoised mean).
    shifted = one(keys[0], jnp.ones(()))
    assert float(jnp.mean(shifted - one(keys[0], cond))) > 0.5


def _reference_2s(params, rng, shape, cfg):
    """The algorithm written as the module docstring states it, in a Python loop with both of a
    step's calls in one iteration (the same keys: initial noise, then churn noise folded by step)."""
    sig = dpm_solver.noise_schedule(cfg).astype(np.float32)
    gam = dpm_solver.churn_schedule(cfg).astype(np.float32)
    n = len(sig) - 1
    k_init, k_churn = jax.random.split(rng)
    x = sig[0] * gaussian_noise(k_init, shape)
    for i in range(n):
        s = sig[i]
        if gam[i] > 0:
            s_hat = s * (1 + gam[i])
            std = cfg.noise_level_inflation_factor * np.sqrt(s_hat**2 - s**2)
            x = x + std * gaussian_noise(jax.random.fold_in(k_churn, i), shape)
            s = s_hat
        sigma = jnp.full((shape[0],), s, jnp.float32)
        if i == n - 1:
            return gaussian_denoiser(params, x, sigma, None)
        mid = np.sqrt(s * sig[i + 1])
        x_mid = (mid / s) * x + (1 - mid / s) * gaussian_denoiser(params, x, sigma, None)
        d_mid = gaussian_denoiser(params, x_mid, jnp.full((shape[0],), mid, jnp.float32), None)
        x = (sig[i + 1] / s) * x + (1 - sig[i + 1] / s) * d_mid
    raise AssertionError("unreachable")


@pytest.mark.parametrize("levels, churn_rate", [(30, 2.5), (7, 2.5), (6, 0.0)])
def test_sampler_matches_the_two_calls_per_step_reference(levels, churn_rate):
    """The one-call-per-iteration loops give the reference's sample path (float32 rounding only):
    the same evaluation points, noise and keys, so a mixed-up half-step or a churn drawn at the
    midpoint would show as an O(1) difference."""
    cfg = SamplerConfig(num_noise_levels=levels, stochastic_churn_rate=churn_rate)
    shape = (2, 4, 8, len(MU))
    params = (jnp.asarray(MU, jnp.float32), jnp.asarray(S, jnp.float32))
    key = jax.random.key(3)
    got = _gaussian_sampler(cfg, shape)(params, key)
    want = _reference_2s(params, key, shape, cfg)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
