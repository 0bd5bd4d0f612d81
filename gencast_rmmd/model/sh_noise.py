"""Noise for diffusion on the sphere: isotropic spherical-harmonic white noise, and plain Gaussian.

GenCast corrupts targets, and draws every sampler noise, with *isotropic* white noise on the sphere
instead of i.i.d. grid-point noise (reference notes §2.6). On a lat/lon grid, i.i.d. noise would be
anisotropic (grid points crowd near the poles, so the noise has more small-scale power there) and
would put power above the grid's resolvable wavenumbers. Instead we draw real spherical-harmonic
coefficients ``a_lm ~ N(0, s_l^2)`` for total wavenumbers ``l < L`` (``L = nlon / 2``), with

    s_l^2 = 4 pi P_l / (2 l + 1),   P_l = 1 / L,

and transform them to the grid with dinosaur's `RealSphericalHarmonics` (orthonormal real harmonics
on the unit sphere). Exactly one normal is drawn per coefficient: the ``L^2`` real coefficients are
packed from one ``[L, L]`` square of normals (`pack_triangle`), not drawn for all ``(2L - 1) L``
slots of dinosaur's modal array and half thrown away (drawing the normals is most of the cost).
By the addition theorem the point variance is ``sum_l s_l^2 (2l + 1) / (4 pi) = sum_l P_l = 1``
everywhere, each total wavenumber carries the same power ``P_l`` (flat spectrum), and the field is
statistically invariant under rotations.

Both noise functions follow the contract ``noise_fn(rng, shape) -> float32 array`` with
``shape = [..., lat, lon, C]`` (channels last); channels and leading dims are independent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from dinosaur import spherical_harmonic

from gencast_rmmd.model.grid import GridSpec, grid_spec

NoiseFn = Callable[[jax.Array, Sequence[int]], jax.Array]


def gaussian_noise(rng: jax.Array, shape: Sequence[int]) -> jax.Array:
    """I.i.d. standard normal noise of `shape` (float32); the noise of non-spherical domains."""
    return jax.random.normal(rng, tuple(shape), dtype=jnp.float32)


def dinosaur_grid(spec: GridSpec) -> spherical_harmonic.Grid:
    """The dinosaur spectral grid whose nodes are exactly `spec`'s lat/lon points.

    Wavenumbers ``m, l < L = nlon / 2`` (max wavenumber ``nlon / 2 - 1``); longitude nodes start at
    0 and latitude nodes ascend from the south, as our arrays do.
    """
    n_wave = spec.max_wavenumber + 1
    return spherical_harmonic.Grid(
        longitude_wavenumbers=n_wave,
        total_wavenumbers=n_wave,
        longitude_nodes=spec.nlon,
        latitude_nodes=spec.nlat,
        latitude_spacing=spec.spacing,
        spherical_harmonics_impl=spherical_harmonic.RealSphericalHarmonics,
    )


def sh_coefficient_scale(grid: spherical_harmonic.Grid) -> np.ndarray:
    """Std of each real SH coefficient for flat-spectrum unit-variance noise, [2M-1, L] float32.

    ``s_l = sqrt(4 pi / (L (2 l + 1)))`` where the mode exists (``|m| <= l``), 0 elsewhere.
    """
    m, ell = grid.modal_mesh
    n_l = grid.total_wavenumbers
    scale = np.sqrt(4.0 * np.pi / (n_l * (2.0 * ell + 1.0)))
    return np.where(np.abs(m) <= ell, scale, 0.0).astype(np.float32)


def pack_triangle(square: jax.Array, m_rows: np.ndarray) -> jax.Array:
    """Place an ``[..., L, L]`` square of values on the ``L^2`` real SH modes ``|m| <= l < L``.

    Returns ``[..., 2L - 1, L]`` in dinosaur's modal layout, whose row ``r`` has wavenumber
    ``m_rows[r]``. Row ``m = +a`` takes ``square[a, l]`` (upper triangle with the diagonal, used
    where ``l >= a``); row ``m = -a`` (``a >= 1``) takes ``square[L - a, L - 1 - l]``, the strict
    lower triangle read backwards (``L - 1 - l < L - a`` exactly when ``l >= a``). Every entry of
    `square` lands on exactly one mode; slots with ``|m| > l`` hold leftovers that the caller
    multiplies by a zero scale. Built from slices, a flip and an interleave (no gather: an
    element gather costs more than the normals it would save).
    """
    n_l = square.shape[-1]
    m_rows = np.asarray(m_rows)
    pos = square  # rows m = 0, 1, ..., L - 1
    neg = square[..., ::-1, ::-1][..., : n_l - 1, :]  # rows m = -1, ..., -(L - 1)
    interleaved = np.concatenate(
        [[0], np.stack([np.arange(1, n_l), -np.arange(1, n_l)], 1).ravel()]
    )
    if np.array_equal(m_rows, interleaved):  # dinosaur's order: 0, 1, -1, 2, -2, ...
        pairs = jnp.stack([pos[..., 1:, :], neg], axis=-2)
        pairs = pairs.reshape(square.shape[:-2] + (2 * (n_l - 1), n_l))
        return jnp.concatenate([pos[..., :1, :], pairs], axis=-2)
    rows = jnp.concatenate([pos, neg], axis=-2)  # any other order: one row gather
    index = np.where(m_rows >= 0, m_rows, n_l - 1 - m_rows)
    return jnp.take(rows, index, axis=-2)


def make_sh_noise_fn(lat: np.ndarray, lon: np.ndarray) -> NoiseFn:
    """Build a jit-able sampler of isotropic unit-variance spherical white noise on a lat/lon grid.

    Args:
      lat: [nlat] latitudes in degrees, ascending (equiangular with/without poles, or Gaussian).
      lon: [nlon] longitudes in degrees, ``0, 360/nlon, ...``; ``nlon = 2 nlat`` (or
        ``2 (nlat - 1)`` with poles). Other grids raise `DataError`.
    Returns ``noise_fn(rng, shape)`` with ``shape = [..., nlat, nlon, C]`` returning float32 noise of
    that shape: unit variance at every point, flat SH spectrum up to wavenumber ``nlon/2 - 1``,
    independent across leading dims and channels. The basis is built once here (numpy), so the
    returned function is cheap to trace and can be called under `jit`/`vmap`.
    """
    spec = grid_spec(lat, lon)
    grid = dinosaur_grid(spec)
    scale = sh_coefficient_scale(grid)  # [2M-1, L]
    # Build the (cached) numpy basis now, outside any trace.
    _ = grid.spherical_harmonics.basis
    m_rows = np.asarray(grid.modal_mesh[0])[:, 0]
    n_l = grid.total_wavenumbers

    def noise_fn(rng: jax.Array, shape: Sequence[int]) -> jax.Array:
        shape = tuple(int(s) for s in shape)
        if len(shape) < 3 or shape[-3:-1] != (spec.nlat, spec.nlon):
            raise ValueError(
                f"SH noise: expected shape [..., {spec.nlat}, {spec.nlon}, C], found {list(shape)}"
            )
        lead, n_ch = shape[:-3], shape[-1]
        square = jax.random.normal(rng, lead + (n_ch, n_l, n_l), dtype=jnp.float32)
        coeffs = pack_triangle(square, m_rows) * scale
        nodal = grid.to_nodal(coeffs)  # [..., C, lon, lat]
        nd = nodal.ndim
        perm = tuple(range(nd - 3)) + (nd - 1, nd - 2, nd - 3)  # -> [..., lat, lon, C]
        return jnp.transpose(nodal, perm).astype(jnp.float32)

    noise_fn.grid_spec = spec  # type: ignore[attr-defined]
    return noise_fn
