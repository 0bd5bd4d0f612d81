"""GenCast's denoising loss: training sigma distribution, EDM weight, weighted MSE, the full loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from gencast_rmmd.model import losses
from gencast_rmmd.model.configs import NoiseConfig
from gencast_rmmd.model.grid import equiangular_latitudes, latitude_weights
from gencast_rmmd.model.noise_schedule import rho_inverse_cdf, sample_training_noise_levels
from gencast_rmmd.model.sh_noise import make_sh_noise_fn


def test_loss_weight_is_inverse_c_out_squared():
    sigma = jnp.array([0.02, 0.5, 1.0, 88.0])
    c_out = sigma / jnp.sqrt(sigma**2 + 1)
    np.testing.assert_allclose(losses.loss_weight(sigma), 1 / c_out**2, rtol=1e-6)
    np.testing.assert_allclose(losses.loss_weight(jnp.array(1.0)), 2.0)


def test_training_sigma_distribution():
    """sigma^(1/7) is uniform on [0.02^(1/7), 88^(1/7)]: Kolmogorov-Smirnov at the 1e-3 level."""
    cfg = NoiseConfig()
    s = np.asarray(sample_training_noise_levels(jax.random.key(0), 20000, cfg), np.float64)
    assert s.shape == (20000,) and s.min() >= 0.02 * (1 - 1e-6) and s.max() <= 88 * (1 + 1e-6)
    lo, hi = 0.02 ** (1 / 7), 88 ** (1 / 7)
    u = (s ** (1 / 7) - lo) / (hi - lo)
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # The median is rho_inverse_cdf(.., 0.5) ~ 2.3: half the sigmas are below it.
    med = rho_inverse_cdf(0.02, 88.0, 7.0, 0.5)
    assert abs(np.mean(s < med) - 0.5) < 5 * np.sqrt(0.25 / s.size)
    # Distinct per batch element.
    assert len(np.unique(s[:16])) == 16


def test_weighted_mse_brute_force():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(2, 4, 8, 3)).astype(np.float32)
    targ = rng.normal(size=(2, 4, 8, 3)).astype(np.float32)
    lw = np.array([0.5, 1.5, 1.5, 0.5], np.float32)
    cw = np.array([1.0, 0.1, 2.0], np.float32)
    got = np.asarray(losses.weighted_mse(pred, targ, lw, cw))
    ref = np.zeros(2)
    for b in range(2):
        for c in range(3):
            acc = 0.0
            for i in range(4):
                for j in range(8):
                    acc += lw[i] * (pred[b, i, j, c] - targ[b, i, j, c]) ** 2
            ref[b] += cw[c] * acc / 32
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def _setup(batch=64, ch=3):
    lat = equiangular_latitudes(16, False)
    lon = np.arange(32) * 11.25
    noise_fn = make_sh_noise_fn(lat, lon)
    x0 = jax.random.normal(jax.random.key(5), (batch, 16, 32, ch))
    return noise_fn, x0, jnp.asarray(latitude_weights(lat)), jnp.array([1.0, 0.1, 0.5])


def test_oracle_denoiser_has_zero_loss_and_identity_has_predicted_loss():
    noise_fn, x0, lw, cw = _setup()
    cfg = NoiseConfig()

    def oracle(params, x, sigma, cond):
        return cond  # the clean target, handed over as conditioning

    loss, aux = losses.denoising_loss(
        oracle, None, jax.random.key(1), x0, x0, noise_fn, cfg, lw, cw
    )
    assert float(loss) == 0.0 and aux["sigma"].shape == (64,)

    # Identity denoiser: D - x0 = sigma eps, so per example the loss is
    # (sigma^2 + 1) sum_c w_c mean(a eps_c^2), whose expectation is (sigma^2 + 1) sum_c w_c
    # (unit-variance noise, mean-1 latitude weights).
    def identity(params, x, sigma, cond):
        return x

    loss, aux = losses.denoising_loss(
        identity, None, jax.random.key(1), x0, None, noise_fn, cfg, lw, cw
    )
    ratio = np.asarray(aux["per_example"] / ((aux["sigma"] ** 2 + 1) * jnp.sum(cw)))
    # Each ratio is an area-weighted mean of squared SH noise over a field (std ~0.1 for L = 16
    # channels mixed by weights); the batch mean over 64 has std ~0.015; tolerance 0.075 (5 se).
    assert abs(ratio.mean() - 1) < 0.075, ratio.mean()
    np.testing.assert_allclose(float(loss), float(jnp.mean(aux["per_example"])), rtol=1e-6)


def test_loss_uses_given_noise_and_is_differentiable():
    noise_fn, x0, lw, cw = _setup(batch=4)
    seen = []

    def recording_noise(rng, shape):
        seen.append(tuple(shape))
        return noise_fn(rng, shape)

    def den(params, x, sigma, cond):
        return params["a"] * x / (1 + sigma[:, None, None, None] ** 2)

    def f(p):
        return losses.denoising_loss(
            den, p, jax.random.key(2), x0, None, recording_noise, NoiseConfig(), lw, cw
        )[0]

    g = jax.grad(f)({"a": jnp.array(0.5)})
    assert seen and seen[0] == x0.shape
    eps = 1e-3
    fd = (f({"a": jnp.array(0.5 + eps)}) - f({"a": jnp.array(0.5 - eps)})) / (2 * eps)
    np.testing.assert_allclose(float(g["a"]), float(fd), rtol=2e-2)
