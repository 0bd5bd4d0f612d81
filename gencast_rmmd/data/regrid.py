"""Horizontal regridding of lat/lon fields: point subsampling and area-conservative averaging.

- `subsample(ds, 4)`: every 4th point along lat and lon. The 181x360 1.0 deg grid with poles is
  exactly every 4th point of ERA5's 721x1440 0.25 deg grid; DeepMind states GenCast's 1 deg data
  were made this way (reference notes §5.2).
- `conservative(ds, target)`: the area-weighted mean of the source cells over each target cell.
  On a sphere a lat/lon cell's area is R^2 * (sin(lat_north) - sin(lat_south)) * dlon, which
  factorizes, so conservative averaging is one overlap matrix along lat (in sin(lat)) and one
  along lon (in degrees, periodic): out = W_lat @ x @ W_lon^T, each row of W normalized to 1.
  NaNs (e.g. SST over land) are skipped: a target cell averages its valid source area only and is
  NaN when it has none.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr


@dataclasses.dataclass(frozen=True)
class LatLonGrid:
    """Cell centres and edges (degrees) of a rectilinear lat/lon grid.

    lat: [n_lat] ascending centres; lat_edges: [n_lat + 1] ascending, within [-90, 90];
    lon: [n_lon] centres; lon_edges: [n_lon + 1] (may extend below 0 / above 360; periodic).
    """

    lat: np.ndarray
    lon: np.ndarray
    lat_edges: np.ndarray
    lon_edges: np.ndarray


def equiangular_grid(n_lat: int, n_lon: int, with_poles: bool = False) -> LatLonGrid:
    """An equiangular grid: lat = -90 + (i + 1/2) * 180/n_lat without poles (e.g. 32x64:
    -87.1875 + 5.625 i), or lat = -90 + i * 180/(n_lat-1) with poles (polar half cells);
    lon = j * 360/n_lon with cells centred on the points."""
    dlon = 360.0 / n_lon
    lon = np.arange(n_lon) * dlon
    lon_edges = np.arange(n_lon + 1) * dlon - dlon / 2
    if with_poles:
        dlat = 180.0 / (n_lat - 1)
        lat = -90.0 + np.arange(n_lat) * dlat
        lat_edges = np.concatenate([[-90.0], lat[:-1] + dlat / 2, [90.0]])
    else:
        dlat = 180.0 / n_lat
        lat = -90.0 + (np.arange(n_lat) + 0.5) * dlat
        lat_edges = -90.0 + np.arange(n_lat + 1) * dlat
    return LatLonGrid(lat=lat, lon=lon, lat_edges=lat_edges, lon_edges=lon_edges)


def grid_from_centres(lat: np.ndarray, lon: np.ndarray) -> LatLonGrid:
    """Cell edges for given ascending centres: midpoints, outer lat edges clipped to +-90, lon
    edges extended periodically by half a spacing."""
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    mid = (lat[1:] + lat[:-1]) / 2
    first = max(-90.0, lat[0] - (mid[0] - lat[0])) if lat.size > 1 else -90.0
    last = min(90.0, lat[-1] + (lat[-1] - mid[-1])) if lat.size > 1 else 90.0
    lat_edges = np.concatenate([[first], mid, [last]])
    lon_mid = (lon[1:] + lon[:-1]) / 2
    d0 = (lon[0] + 360.0 - lon[-1]) / 2
    lon_edges = np.concatenate([[lon[0] - d0], lon_mid, [lon[-1] + d0]])
    return LatLonGrid(lat=lat, lon=lon, lat_edges=lat_edges, lon_edges=lon_edges)


def _overlap_1d(src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """Length of overlap between each dst interval and each src interval: [n_dst, n_src]."""
    lo = np.maximum(dst_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(dst_edges[1:, None], src_edges[None, 1:])
    return np.maximum(hi - lo, 0.0)


def lat_weights(src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """Row-normalized area overlap along latitude, in sin(lat) (the area measure): [n_dst, n_src]."""
    s = np.sin(np.deg2rad(np.clip(src_edges, -90, 90)))
    d = np.sin(np.deg2rad(np.clip(dst_edges, -90, 90)))
    w = _overlap_1d(s, d)
    return w / w.sum(axis=1, keepdims=True)


def lon_weights(src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """Row-normalized periodic overlap along longitude (degrees): [n_dst, n_src]."""
    w = sum(_overlap_1d(src_edges + shift, dst_edges) for shift in (-360.0, 0.0, 360.0))
    return w / w.sum(axis=1, keepdims=True)


def _apply(x: np.ndarray, wlat: np.ndarray, wlon: np.ndarray) -> np.ndarray:
    """x [..., lat, lon] -> [..., lat', lon'], NaN-skipping area-weighted means."""
    valid = np.isfinite(x)
    x0 = np.where(valid, x, 0.0).astype(np.float64)
    num = np.einsum("ij,...jk,lk->...il", wlat, x0, wlon)
    den = np.einsum("ij,...jk,lk->...il", wlat, valid.astype(np.float64), wlon)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 1e-12, num / np.maximum(den, 1e-300), np.nan)
    return out.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)


def conservative(ds: xr.Dataset | xr.DataArray, target: LatLonGrid):
    """Area-conservative regridding of every variable with (lat, lon) dims onto `target` (lazy
    under dask; each chunk must hold whole lat/lon planes, as ERA5 stores do)."""
    src = grid_from_centres(ds["lat"].values, ds["lon"].values)
    wlat = lat_weights(src.lat_edges, target.lat_edges)
    wlon = lon_weights(src.lon_edges, target.lon_edges)

    def one(da: xr.DataArray) -> xr.DataArray:
        if "lat" not in da.dims or "lon" not in da.dims:
            return da
        if da.chunks is not None:
            da = da.chunk({"lat": -1, "lon": -1})
        out = xr.apply_ufunc(
            _apply,
            da,
            kwargs={"wlat": wlat, "wlon": wlon},
            input_core_dims=[["lat", "lon"]],
            output_core_dims=[["lat_out", "lon_out"]],
            dask="parallelized",
            output_dtypes=[da.dtype],
            dask_gufunc_kwargs={
                "output_sizes": {"lat_out": target.lat.size, "lon_out": target.lon.size}
            },
        )
        out = out.rename(lat_out="lat", lon_out="lon").assign_coords(lat=target.lat, lon=target.lon)
        dims = [d for d in da.dims]
        return out.transpose(*dims).assign_attrs(da.attrs)

    if isinstance(ds, xr.DataArray):
        return one(ds)
    others = {k: v for k, v in ds.data_vars.items() if not {"lat", "lon"} <= set(v.dims)}
    regridded = {k: one(v) for k, v in ds.data_vars.items() if k not in others}
    out = xr.Dataset(regridded, attrs=ds.attrs)
    for k, v in others.items():
        out[k] = v
    return out


def subsample(ds: xr.Dataset | xr.DataArray, factor: int):
    """Every `factor`-th point along lat and lon, starting at the first (lazy)."""
    return ds.isel(lat=slice(None, None, factor), lon=slice(None, None, factor))
