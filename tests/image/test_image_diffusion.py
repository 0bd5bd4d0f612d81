"""VP schedule, v-parametrisation, and the exact VP <-> VE reparametrisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.distill import student_sampler as ss
from gencast_rmmd.image import diffusion as d
from gencast_rmmd.image.config import ScheduleConfig


def test_cosine_schedule_endpoints_monotone_inverse():
    for shift in (1.0, 0.25, 4.0):
        sch = d.CosineSchedule(ScheduleConfig(shift=shift, logsnr_min=-12.0, logsnr_max=10.0))
        t = jnp.linspace(0.0, 1.0, 101)
        ls_ = sch.logsnr(t)
        np.testing.assert_allclose([ls_[0], ls_[-1]], [10.0, -12.0], atol=1e-3)
        assert bool(jnp.all(jnp.diff(ls_) < 0))
        np.testing.assert_allclose(sch.t_of_logsnr(ls_), t, atol=2e-5)
    # Shift adds 2 log(shift) to logSNR away from the clip (Simple Diffusion).
    plain = d.CosineSchedule(ScheduleConfig(shift=1.0, logsnr_min=-40, logsnr_max=40))
    shifted = d.CosineSchedule(ScheduleConfig(shift=0.5, logsnr_min=-40, logsnr_max=40))
    tm = jnp.array([0.3, 0.5, 0.7])
    np.testing.assert_allclose(shifted.logsnr(tm) - plain.logsnr(tm), 2 * np.log(0.5), atol=2e-3)
    # plain cosine: logSNR(t) = -2 log tan(pi t / 2)
    np.testing.assert_allclose(plain.logsnr(tm), -2 * np.log(np.tan(np.pi * tm / 2)), atol=2e-3)


def test_v_parametrisation_roundtrip():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    x0 = jax.random.normal(k[0], (4, 8, 8, 1))
    eps = jax.random.normal(k[1], x0.shape)
    logsnr = jnp.array([-6.0, -1.0, 2.0, 8.0])
    a, s = d.alpha_sigma(logsnr)
    np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-6)
    np.testing.assert_allclose(jnp.log(a**2 / s**2), logsnr, atol=1e-4)
    z = d.diffuse(x0, logsnr, eps)
    v = d.v_target(x0, eps, logsnr)
    np.testing.assert_allclose(d.x0_from_v(z, v, logsnr), x0, atol=1e-5)


def test_ve_wrapper_is_exact_reparametrisation():
    """denoise_fn(x_VE = z/alpha, sigma_VE = sigma/alpha) equals the VP x0 prediction."""

    def net_apply(params, rng, z, logsnr, labels):  # a fixed nonlinear "network"
        return (
            jnp.tanh(params * z + logsnr[:, None, None, None] / 7.0) + labels[:, None, None, None]
        )

    ve = d.make_ve_denoise_fn(net_apply)
    k = jax.random.split(jax.random.PRNGKey(1), 2)
    x0 = jax.random.normal(k[0], (3, 4, 4, 1))
    eps = jax.random.normal(k[1], x0.shape)
    logsnr = jnp.array([-4.0, 0.5, 6.0])
    labels = jnp.array([0.0, 1.0, 2.0])
    z = d.diffuse(x0, logsnr, eps)
    a, s = d.alpha_sigma(logsnr)
    x_ve = z / a[:, None, None, None]
    sigma_ve = s / a
    np.testing.assert_allclose(sigma_ve, d.ve_sigma(logsnr), rtol=1e-5)
    np.testing.assert_allclose(x_ve, x0 + sigma_ve[:, None, None, None] * eps, rtol=1e-4, atol=1e-4)
    want = d.x0_from_v(z, net_apply(0.7, None, z, logsnr, labels), logsnr)
    got = ve(0.7, x_ve, sigma_ve, labels)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_vp_posterior_step_matches_distill_ve_step():
    """The distill area's VE DDIM-eta step is the VP step divided by alpha (rmmd.md §0)."""
    k = jax.random.split(jax.random.PRNGKey(2), 3)
    z_t = jax.random.normal(k[0], (2, 4, 4, 1))
    x0 = jax.random.normal(k[1], z_t.shape)
    noise = jax.random.normal(k[2], z_t.shape)
    lt, ls = jnp.array([-3.0, 1.0]), jnp.array([-1.0, 4.0])
    for eta in (0.0, 0.5, 1.0):
        z_s = d.posterior_step(z_t, x0, lt, ls, eta, noise)
        a_t, _ = d.alpha_sigma(lt)
        a_s, _ = d.alpha_sigma(ls)
        y_s = ss.ddim_eta_step(
            z_t / a_t[:, None, None, None], x0, d.ve_sigma(lt), d.ve_sigma(ls), eta, noise
        )
        np.testing.assert_allclose(y_s, z_s / a_s[:, None, None, None], rtol=1e-4, atol=1e-4)
