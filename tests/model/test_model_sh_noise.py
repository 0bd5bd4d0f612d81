"""Spherical-harmonic white noise: basis normalisation, unit variance, flat spectrum, isotropy.

Statistical tests use fixed seeds and tolerances of 5 standard errors of the estimator under the
null hypothesis (stated next to each assertion), so they fail for a wrong scale/spectrum, not by
chance (false-alarm rate < 1e-5 per check).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import eval_legendre, sph_harm_y

from gencast_rmmd.errors import DataError
from gencast_rmmd.model import sh_noise
from gencast_rmmd.model.grid import equiangular_latitudes, gauss_latitudes, grid_spec

GRIDS = {
    # name: (lat, lon)
    "equiangular_32x64": (equiangular_latitudes(32, False), np.arange(64) * 5.625),
    "with_poles_19x36": (equiangular_latitudes(19, True), np.arange(36) * 10.0),
    "gauss_16x32": (gauss_latitudes(16), np.arange(32) * 11.25),
    "equiangular_16x32": (equiangular_latitudes(16, False), np.arange(32) * 11.25),
}
STAT_GRIDS = ["equiangular_16x32", "with_poles_19x36", "gauss_16x32"]


def _basis_matrix(lat, lon):
    """Real SH basis on the grid from dinosaur: rows = valid modes (|m| <= l), cols = lat*lon."""
    grid = sh_noise.dinosaur_grid(grid_spec(lat, lon))
    m, ell = grid.modal_mesh
    valid = np.abs(m) <= ell
    n_modes = int(valid.sum())
    eye = np.zeros((n_modes,) + grid.modal_shape, np.float32)
    idx = np.argwhere(valid)
    eye[np.arange(n_modes), idx[:, 0], idx[:, 1]] = 1.0
    nodal = np.asarray(grid.to_nodal(jnp.asarray(eye)), np.float64)  # [modes, lon, lat]
    basis = np.transpose(nodal, (0, 2, 1)).reshape(n_modes, -1)
    return basis, m[valid], ell[valid], grid.total_wavenumbers


def test_dinosaur_basis_is_orthonormal_real_sh():
    """Cross-check the transform the noise relies on against scipy's complex harmonics.

    Each dinosaur mode must equal +-sqrt(2) Re/Im of scipy's orthonormal Y_l^|m| (or Y_l^0), i.e.
    have unit L2 norm on the unit sphere, which is what the coefficient scale assumes.
    """
    lat, lon = GRIDS["equiangular_32x64"]
    basis, ms, ls, _ = _basis_matrix(lat, lon)
    theta = np.deg2rad(90.0 - lat)[:, None]  # polar angle
    phi = np.deg2rad(lon)[None, :]
    for k in [0, 1, 2, 5, 40, 300, len(ms) - 1]:
        m, ell = int(ms[k]), int(ls[k])
        y = sph_harm_y(ell, abs(m), theta, phi)
        if m == 0:
            ref = y.real
        elif m > 0:
            ref = np.sqrt(2.0) * y.real
        else:
            ref = np.sqrt(2.0) * y.imag
        ours = basis[k].reshape(len(lat), len(lon))
        sign = np.sign(np.sum(ours * ref))
        np.testing.assert_allclose(ours, sign * ref, atol=2e-5, err_msg=f"mode m={m} l={ell}")


@pytest.mark.parametrize("name", STAT_GRIDS)
def test_unit_variance_and_flat_spectrum(name):
    lat, lon = GRIDS[name]
    noise_fn = sh_noise.make_sh_noise_fn(lat, lon)
    n = 2048  # independent fields (8 x 256 channels)
    x = np.asarray(noise_fn(jax.random.key(1), (8, len(lat), len(lon), 256)), np.float64)
    assert x.dtype == np.float64 and np.all(np.isfinite(x))
    fields = np.moveaxis(x, -1, 1).reshape(n, -1)  # [n, lat*lon]

    # Unit variance at every latitude (isotropy: no extra variance near the poles). Per-row
    # estimate of E[x^2] from n fields x nlon points; conservative standard error sqrt(2/n)
    # (treats the points of a row as one sample). Tolerance 5 standard errors.
    row_var = np.mean(x**2, axis=(0, 2, 3))
    assert np.all(np.abs(row_var - 1.0) < 5 * np.sqrt(2.0 / n)), row_var
    # Global variance: std error <= sqrt(2 / n) as well; and zero mean.
    assert abs(np.mean(x**2) - 1.0) < 5 * np.sqrt(2.0 / n)
    assert abs(np.mean(x)) < 5 * np.sqrt(1.0 / n)

    # The fields lie in the span of the band-limited harmonics (l < nlon/2): least-squares residual
    # ~ 0. I.i.d. grid noise would leave about half its variance in the residual.
    basis, ms, ls, n_l = _basis_matrix(lat, lon)
    coef = np.linalg.solve(basis @ basis.T, basis @ fields.T)  # least squares, [modes, n]
    resid = fields.T - basis.T @ coef
    assert np.mean(resid**2) < 1e-8

    # Flat spectrum: E[sum_m a_lm^2] = 4 pi / L for every total wavenumber l. The normalised
    # estimate p_l has standard error sqrt(2 / ((2l + 1) n)) (chi-square with (2l+1) n dof).
    power = np.array([np.mean(np.sum(coef[ls == ell] ** 2, axis=0)) for ell in range(n_l)])
    p = power * n_l / (4 * np.pi)
    se = np.sqrt(2.0 / ((2 * np.arange(n_l) + 1) * n))
    assert np.all(np.abs(p - 1.0) < 5 * se), np.round(p, 3)


def test_spatial_correlation_matches_flat_spectrum_theory():
    """Correlation of zonal neighbours at the equator = sum_l P_l(cos gamma) / L (addition theorem)."""
    lat, lon = GRIDS["equiangular_32x64"]
    noise_fn = sh_noise.make_sh_noise_fn(lat, lon)
    x = np.asarray(noise_fn(jax.random.key(2), (4, 32, 64, 256)), np.float64)
    row = x[:, 16]  # lat 2.8125 deg, [4, 64, 256]
    a, b = row, np.roll(row, -1, axis=1)
    corr = np.mean(a * b) / np.sqrt(np.mean(a**2) * np.mean(b**2))
    gamma = np.arccos(
        np.sin(np.deg2rad(lat[16])) ** 2
        + np.cos(np.deg2rad(lat[16])) ** 2 * np.cos(np.deg2rad(5.625))
    )
    theory = np.mean([eval_legendre(ell, np.cos(gamma)) for ell in range(32)])  # ~0.43
    # 1024 fields; standard error of a correlation estimate <= 1/sqrt(1024) (points in a row add
    # information, so this is conservative). Tolerance 5 standard errors.
    assert abs(corr - theory) < 5 / np.sqrt(1024), (corr, theory)
    # Channels and batch elements are independent.
    c01 = np.mean(x[..., 0] * x[..., 1])
    assert abs(c01) < 5 * np.sqrt(1.0 / (4 * 32))  # conservative: one sample per row


def test_jit_vmap_determinism_and_shapes():
    lat, lon = GRIDS["equiangular_32x64"]
    noise_fn = sh_noise.make_sh_noise_fn(lat, lon)
    f = jax.jit(noise_fn, static_argnums=1)
    a = f(jax.random.key(0), (2, 32, 64, 3))
    b = f(jax.random.key(0), (2, 32, 64, 3))
    c = f(jax.random.key(1), (2, 32, 64, 3))
    assert a.shape == (2, 32, 64, 3) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    keys = jax.random.split(jax.random.key(3), 5)
    v = jax.vmap(lambda k: noise_fn(k, (1, 32, 64, 2)))(keys)
    assert v.shape == (5, 1, 32, 64, 2)
    assert not np.allclose(v[0], v[1])
    # Extra leading dims are independent draws too.
    w = noise_fn(jax.random.key(4), (2, 3, 32, 64, 1))
    assert w.shape == (2, 3, 32, 64, 1) and not np.allclose(w[0, 0], w[1, 2])
    with pytest.raises(ValueError, match=r"\[\.\.\., 32, 64, C\]"):
        noise_fn(jax.random.key(0), (2, 64, 32, 1))


@pytest.mark.parametrize("order", ["dinosaur", "shuffled"])
def test_pack_triangle_puts_each_normal_on_exactly_one_mode(order):
    """The L^2 drawn values cover the L^2 valid modes one to one, whatever the row order."""
    lat, lon = GRIDS["equiangular_32x64"]
    grid = sh_noise.dinosaur_grid(grid_spec(lat, lon))
    m, ell = grid.modal_mesh
    n_l = grid.total_wavenumbers
    perm = np.arange(m.shape[0])
    if order == "shuffled":  # the generic path (a row gather), for another modal row order
        perm = np.random.default_rng(0).permutation(perm)
    m_rows, valid = m[perm, 0], (np.abs(m) <= ell)[perm]
    ids = jnp.arange(1, n_l * n_l + 1, dtype=jnp.float32).reshape(n_l, n_l)
    square = jnp.stack([ids, -ids])  # with a leading dim
    packed = np.asarray(sh_noise.pack_triangle(square, m_rows))
    assert packed.shape == (2,) + m.shape
    used = packed[0][valid]
    assert valid.sum() == n_l * n_l
    np.testing.assert_array_equal(np.sort(used), np.arange(1, n_l * n_l + 1))
    np.testing.assert_array_equal(packed[1][valid], -used)
    # Row m = 0 takes square row 0 as it is; row m = -1 takes square row L - 1 reversed.
    np.testing.assert_array_equal(packed[0][m_rows == 0][0], np.asarray(square[0, 0]))
    np.testing.assert_array_equal(packed[0][m_rows == -1][0], np.asarray(square[0, -1, ::-1]))


def test_bad_grids_are_rejected():
    lat, lon = GRIDS["equiangular_32x64"]
    with pytest.raises(DataError, match="ascending"):
        sh_noise.make_sh_noise_fn(lat[::-1], lon)
    with pytest.raises(DataError, match="needs 64 longitudes"):
        sh_noise.make_sh_noise_fn(lat, np.arange(48) * 7.5)
    with pytest.raises(DataError, match="longitudes"):
        sh_noise.make_sh_noise_fn(lat, np.arange(64) * 5.625 - 180.0)
    with pytest.raises(DataError, match="match none"):
        sh_noise.make_sh_noise_fn(np.sort(np.random.default_rng(0).uniform(-80, 80, 32)), lon)


def test_gaussian_noise():
    x = sh_noise.gaussian_noise(jax.random.key(0), (4, 8, 16, 32))
    assert x.shape == (4, 8, 16, 32) and x.dtype == jnp.float32
    n = x.size
    assert abs(float(jnp.var(x)) - 1.0) < 5 * np.sqrt(2.0 / n)
