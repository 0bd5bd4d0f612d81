"""Student sampler: grid, DDIM-eta step algebra, NFE, exactness on a Gaussian."""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gencast_rmmd.distill import student_sampler as ss

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import distill_gaussian_helpers as G  # noqa: E402


def test_rho100_grid_matches_reference_table():
    levels = ss.noise_levels(ss.StudentSamplerConfig(num_steps=8, rho=100.0))
    np.testing.assert_allclose(
        levels, [80, 26.9, 8.94, 2.94, 0.952, 0.305, 0.0963, 0.03], rtol=6e-3
    )
    levels7 = ss.noise_levels(ss.StudentSamplerConfig(num_steps=8, rho=7.0))
    np.testing.assert_allclose(levels7, [80, 39.3, 17.8, 7.30, 2.62, 0.79, 0.186, 0.03], rtol=6e-3)
    assert ss.noise_levels(ss.StudentSamplerConfig(num_steps=1)).tolist() == [80.0]


def test_cosine_grid_is_the_image_teachers_schedule_at_k_over_k():
    """grid: cosine gives the VE levels exp(-logSNR(t)/2) of the image teacher's clipped shifted
    cosine schedule (image.diffusion.CosineSchedule) at t = K/K .. 1/K: the ImageNet 64 student
    grid of rmmd.md §2.5 (docs/image.md lists these values). An old config or checkpoint tree
    without the grid keys is the EDM grid; a cosine config survives the checkpoint tree."""
    from gencast_rmmd.image.config import ScheduleConfig
    from gencast_rmmd.image.diffusion import CosineSchedule
    from gencast_rmmd.model import checkpoint as ck

    for shift, k in ((1.0, 8), (0.5, 4), (2.0, 1)):
        cfg = ss.StudentSamplerConfig(num_steps=k, grid="cosine", cosine_shift=shift)
        cfg.validate()
        logsnr = np.asarray(CosineSchedule(ScheduleConfig(shift=shift)).grid(k), np.float64)
        # compared as logSNR: CosineSchedule's float32 tan near pi/2 is good to ~1e-4 there
        np.testing.assert_allclose(-2 * np.log(ss.noise_levels(cfg)), logsnr, atol=3e-4)
    levels = ss.noise_levels(ss.StudentSamplerConfig(grid="cosine"))
    np.testing.assert_allclose(
        levels, [1808, 5.02, 2.41, 1.50, 1.00, 0.668, 0.415, 0.199], rtol=3e-3
    )
    assert np.all(np.diff(levels) < 0) and levels[0] == pytest.approx(np.exp(7.5))
    assert ss.last_level(ss.StudentSamplerConfig(grid="cosine")) == (levels[-1], None)
    assert ss.last_level(ss.StudentSamplerConfig()) == (0.03, "min_noise_level")
    tree = ck.config_to_tree(ss.StudentSamplerConfig(grid="cosine", cosine_shift=0.5))
    back = ck.config_from_tree(ss.StudentSamplerConfig, tree)
    assert back.grid == "cosine" and back.cosine_shift == 0.5
    old = {k: v for k, v in tree.items() if not k.startswith(("grid", "cosine"))}
    assert ck.config_from_tree(ss.StudentSamplerConfig, old) == ss.StudentSamplerConfig()
    with pytest.raises(ValueError, match="grid: must be 'edm' or 'cosine', found 'linear'"):
        ss.StudentSamplerConfig(grid="linear").validate()
    with pytest.raises(ValueError, match="cosine_logsnr_min must be below"):
        ss.StudentSamplerConfig(grid="cosine", cosine_logsnr_min=15.0).validate()


@pytest.mark.parametrize("k", [1, 8])
def test_num_evaluations_is_k(k):
    cfg = ss.StudentSamplerConfig(num_steps=k)
    assert ss.num_evaluations(cfg) == k
    # count the denoiser calls of an actual (un-jitted) run
    counter = {"n": 0}

    def den_count(params, x, sigma, cond):
        counter["n"] += 1
        return 0.5 * x

    with jax.disable_jit():
        ss.sample(den_count, None, jax.random.PRNGKey(0), None, (2, 3), G.gaussian_noise, cfg)
    assert counter["n"] == k


@pytest.mark.parametrize("k,eta,draws", [(1, 0.5, 1), (8, 0.25, 8), (8, 0.0, 1)])
def test_noise_draws_skip_zero_coefficient_steps(k, eta, draws):
    # The initial noise plus one draw per step whose next level is > 0; none when eta = 0.
    cfg = ss.StudentSamplerConfig(num_steps=k, eta=eta)
    calls = {"n": 0}

    def counting_noise(rng, shape):
        calls["n"] += 1
        return G.gaussian_noise(rng, shape)

    den = lambda p, x, s, c: 0.5 * x  # noqa: E731
    key = jax.random.PRNGKey(1)
    with jax.disable_jit():
        x = ss.sample(den, None, key, None, (3, 2), counting_noise, cfg)
    assert calls["n"] == draws == ss.num_noise_draws(cfg)
    # Same sample as the plain chain that draws every step's noise (its last coefficient is 0).
    levels = list(ss.noise_levels(cfg)) + [0.0]
    y = levels[0] * G.gaussian_noise(jax.random.fold_in(key, 0), (3, 2))
    for i, (st, sn) in enumerate(zip(levels[:-1], levels[1:])):
        z = G.gaussian_noise(jax.random.fold_in(key, i + 1), (3, 2))
        y = ss.ddim_eta_step(y, 0.5 * y, st, sn, eta, z)
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5)


def test_ddim_step_marginal_and_limits():
    # If x0_hat is the true x0 and y_t = x0 + S_t eps, then y_s = x0 + S_s * (unit noise) for any eta.
    rng = np.random.default_rng(0)
    n = 200_000
    x0 = jnp.asarray(rng.normal(size=n), jnp.float32)
    eps = jnp.asarray(rng.normal(size=n), jnp.float32)
    z = jnp.asarray(rng.normal(size=n), jnp.float32)
    for eta in (0.0, 0.5, 1.0):
        y_s = ss.ddim_eta_step(x0 + 5.0 * eps, x0, 5.0, 2.0, eta, z)
        resid = np.asarray(y_s - x0) / 2.0
        assert abs(resid.std() - 1.0) < 0.01 and abs(resid.mean()) < 0.01
        # correlation with the old noise: sqrt(1 - c^2/S_s^2)
        c = eta * 2.0 * np.sqrt(1 - 4.0 / 25.0)
        assert np.corrcoef(resid, np.asarray(eps))[0, 1] == pytest.approx(
            np.sqrt(1 - c**2 / 4.0), abs=0.01
        )
    # eta = 1 is the DDPM posterior mean/variance: mean x0 + S_s^2/S_t^2 (y - x0), var S_s^2(1 - S_s^2/S_t^2)
    y_t, xh = jnp.asarray(3.0), jnp.asarray(1.0)
    out = ss.ddim_eta_step(y_t, xh, 5.0, 2.0, 1.0, jnp.asarray(0.0))
    assert float(out) == pytest.approx(1.0 + (4 / 25) * 2.0, rel=1e-6)
    # last step (S_s = 0) returns x0_hat exactly
    assert float(ss.ddim_eta_step(y_t, xh, 0.03, 0.0, 0.5, jnp.asarray(7.0))) == 1.0


def test_trajectory_consistent_with_sample_and_shapes():
    cfg = ss.StudentSamplerConfig(num_steps=4)
    den = lambda p, x, s, c: G.teacher_denoise(G.TEACHER_PARAMS, x, s, c)  # noqa: E731
    key = jax.random.PRNGKey(3)
    traj = ss.sample_trajectory(den, None, key, None, (16, 2), G.gaussian_noise, cfg)
    x = ss.sample(den, None, key, None, (16, 2), G.gaussian_noise, cfg)
    assert traj.states.shape == (4, 16, 2) and traj.predictions.shape == (4, 16, 2)
    np.testing.assert_allclose(np.asarray(traj.sample), np.asarray(x), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(traj.predictions[-1]), np.asarray(x), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(traj.sigmas), ss.noise_levels(cfg), rtol=1e-6)
    # the first state is S_max * noise from fold_in(rng, 0)
    expect = 80.0 * G.gaussian_noise(jax.random.fold_in(key, 0), (16, 2))
    np.testing.assert_allclose(np.asarray(traj.states[0]), np.asarray(expect), rtol=1e-6)


@pytest.mark.parametrize("k,eta", [(1, 0.5), (4, 0.5), (8, 1.0)])
def test_sampler_variance_follows_the_analytic_recursion(k, eta):
    # 1-D Gaussian data N(0, v0) with its exact denoiser a(S) y, a = v0 / (v0 + S^2): the chain
    # is linear, y_s = y_t (a + det/S_t (1 - a)) + c z, so Var(y_s) = Var(y_t) g^2 + c^2 exactly.
    v0 = 0.7
    cfg = ss.StudentSamplerConfig(num_steps=k, eta=eta)

    def den(p, y, s, c):
        return (v0 / (v0 + s[:, None] ** 2)) * y

    levels = list(ss.noise_levels(cfg)) + [0.0]
    var = levels[0] ** 2
    for st, sn in zip(levels[:-1], levels[1:]):
        a = v0 / (v0 + st**2)
        c = eta * sn * np.sqrt(1 - (sn / st) ** 2)
        det = np.sqrt(max(sn**2 - c**2, 0.0))
        var = var * (a + det / st * (1 - a)) ** 2 + c**2
    n = 200_000
    x = jax.jit(lambda r: ss.sample(den, None, r, None, (n, 1), G.gaussian_noise, cfg))(
        jax.random.PRNGKey(k)
    )
    # relative standard error of a variance estimate: sqrt(2/n) = 0.3%
    assert float(jnp.var(x)) == pytest.approx(var, rel=0.015)
    assert abs(float(jnp.mean(x))) < 0.01
    if k == 1:  # one evaluation at S_max: a(80)^2 * 80^2 ~ v0^2 / 80^2, almost collapsed
        assert var < 1e-3


def test_config_validation():
    with pytest.raises(ValueError, match="num_steps"):
        ss.StudentSamplerConfig(num_steps=0).validate()
    with pytest.raises(ValueError, match="eta"):
        ss.StudentSamplerConfig(eta=1.5).validate()
