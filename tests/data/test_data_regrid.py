"""Regridding: point subsampling and area-conservative averaging."""

from __future__ import annotations

import numpy as np
import xarray as xr

from gencast_rmmd.data import regrid


def _field(lat, lon):
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    return np.cos(la) ** 2 * np.sin(2 * lo) + np.sin(la) + 2.0


def _area_mean(x, grid):
    w = np.diff(np.sin(np.deg2rad(grid.lat_edges)))[:, None] * np.diff(grid.lon_edges)[None, :]
    return (x * w).sum() / w.sum()


def test_equiangular_grid_5p625():
    g = regrid.equiangular_grid(32, 64)
    np.testing.assert_allclose(g.lat, -87.1875 + 5.625 * np.arange(32))
    np.testing.assert_allclose(g.lon, 5.625 * np.arange(64))
    g1 = regrid.equiangular_grid(181, 360, with_poles=True)
    assert g1.lat[0] == -90 and g1.lat[-1] == 90 and g1.lat_edges[0] == -90


def test_subsample_every_4th_point_is_1deg():
    lat = np.linspace(-90, 90, 721)
    lon = np.arange(1440) * 0.25
    ds = xr.Dataset(
        {"x": (("lat", "lon"), np.zeros((721, 1440), np.float32))}, coords={"lat": lat, "lon": lon}
    )
    out = regrid.subsample(ds, 4)
    np.testing.assert_allclose(out.lat.values, np.linspace(-90, 90, 181))
    np.testing.assert_allclose(out.lon.values, np.arange(360.0))


def test_conservative_preserves_area_mean_and_constants():
    src = regrid.equiangular_grid(91, 180, with_poles=True)  # 2 deg with poles
    dst = regrid.equiangular_grid(32, 64)
    x = _field(src.lat, src.lon)
    ds = xr.Dataset(
        {"x": (("lat", "lon"), x), "c": (("lat", "lon"), np.full_like(x, 3.5))},
        coords={"lat": src.lat, "lon": src.lon},
    )
    out = regrid.conservative(ds, dst)
    np.testing.assert_allclose(out["c"].values, 3.5, rtol=1e-12)
    src_grid = regrid.grid_from_centres(src.lat, src.lon)
    np.testing.assert_allclose(
        _area_mean(out["x"].values, dst), _area_mean(x, src_grid), rtol=1e-10
    )


def test_conservative_matches_brute_force_cell_average():
    # fine source grid; each target value must equal the exact area average of a smooth field
    src = regrid.equiangular_grid(360, 720)  # 0.5 deg, no poles
    dst = regrid.equiangular_grid(8, 16)
    x = _field(src.lat, src.lon)
    ds = xr.DataArray(x, dims=("lat", "lon"), coords={"lat": src.lat, "lon": src.lon})
    out = regrid.conservative(ds, dst).values
    # brute force: integrate analytically-ish with a 20x finer quadrature inside each cell
    i, j = 3, 5
    la = np.linspace(dst.lat_edges[i], dst.lat_edges[i + 1], 2001)
    lo = np.linspace(dst.lon_edges[j], dst.lon_edges[j + 1], 2001)
    f = _field((la[1:] + la[:-1]) / 2, (lo[1:] + lo[:-1]) / 2)
    w = np.diff(np.sin(np.deg2rad(la)))[:, None] * np.ones(lo.size - 1)[None]
    np.testing.assert_allclose(out[i, j], (f * w).sum() / w.sum(), rtol=2e-4)


def test_conservative_skips_nans_and_is_lazy():
    src = regrid.equiangular_grid(16, 32)
    dst = regrid.equiangular_grid(4, 8)
    x = np.full((3, 16, 32), 5.0, np.float32)
    # target cell (0, 0) spans lat [-90, -45] x lon [-22.5, 22.5]: source rows 0-3, columns 29..3
    x[:, :4, [29, 30, 31, 0, 1, 2, 3]] = np.nan
    x[:, 4, 8] = np.nan  # partial NaN elsewhere: skipped
    da = xr.DataArray(
        x, dims=("time", "lat", "lon"), coords={"lat": src.lat, "lon": src.lon}
    ).chunk({"time": 1})
    out = regrid.conservative(da, dst)
    assert out.chunks is not None
    v = out.values
    assert np.isnan(v[:, 0, 0]).all()
    keep = np.ones((4, 8), bool)
    keep[0, 0] = False
    np.testing.assert_allclose(v[:, keep], 5.0)
    assert out.dtype == np.float32 and out.dims == ("time", "lat", "lon")
