"""Synthetic stores for the data tests (imported by tests and conftest)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from gencast_rmmd.data.era5 import add_progress_forcings
from gencast_rmmd.data.task import TaskConfig

SMALL_TASK = TaskConfig(
    input_variables=(
        "2m_temperature",
        "sea_surface_temperature",
        "temperature",
        "u_component_of_wind",
        "year_progress_sin",
        "year_progress_cos",
        "day_progress_sin",
        "day_progress_cos",
        "geopotential_at_surface",
        "land_sea_mask",
    ),
    target_variables=(
        "2m_temperature",
        "sea_surface_temperature",
        "temperature",
        "u_component_of_wind",
        "total_precipitation_12hr",
    ),
    pressure_levels=(500, 850),
)


def canonical_store_ds(
    n_times: int = 12,
    n_lat: int = 8,
    n_lon: int = 16,
    levels=(500, 850),
    seed: int = 0,
    start: str = "2020-01-01T00",
    sst_nan: bool = True,
) -> xr.Dataset:
    """A small canonical dataset for SMALL_TASK (random smooth-ish values, SST NaN on 'land')."""
    rng = np.random.default_rng(seed)
    times = np.datetime64(start, "ns") + np.arange(n_times) * np.timedelta64(12, "h")
    lat = -90 + (np.arange(n_lat) + 0.5) * 180 / n_lat
    lon = np.arange(n_lon) * 360 / n_lon
    shp3 = (n_times, n_lat, n_lon)
    shp4 = (n_times, len(levels), n_lat, n_lon)
    land = np.zeros((n_lat, n_lon), np.float32)
    land[2:4, 3:7] = 1
    sst = (280 + rng.normal(size=shp3)).astype(np.float32)
    if sst_nan:
        sst[:, land.astype(bool)] = np.nan
    ds = xr.Dataset(
        {
            "2m_temperature": (
                ("time", "lat", "lon"),
                (280 + 5 * rng.normal(size=shp3)).astype(np.float32),
            ),
            "sea_surface_temperature": (("time", "lat", "lon"), sst),
            "total_precipitation_12hr": (
                ("time", "lat", "lon"),
                rng.gamma(1.0, 1e-3, size=shp3).astype(np.float32),
            ),
            "temperature": (
                ("time", "level", "lat", "lon"),
                (250 + 10 * rng.normal(size=shp4)).astype(np.float32),
            ),
            "u_component_of_wind": (
                ("time", "level", "lat", "lon"),
                (10 * rng.normal(size=shp4)).astype(np.float32),
            ),
            "geopotential_at_surface": (("lat", "lon"), (1000 * land).astype(np.float32)),
            "land_sea_mask": (("lat", "lon"), land),
        },
        coords={"time": times, "level": np.asarray(levels, np.int64), "lat": lat, "lon": lon},
    )
    return add_progress_forcings(ds)


def arco_style_ds(
    start: str = "2020-01-01T00", hours: int = 72, n_lat: int = 9, n_lon: int = 16, seed: int = 1
) -> xr.Dataset:
    """An ARCO-ERA5-like store: hourly, latitude/longitude names, descending latitude with poles,
    extra variables and levels, statics with a (constant) time dim, hourly total_precipitation."""
    rng = np.random.default_rng(seed)
    times = np.datetime64(start, "ns") + np.arange(hours) * np.timedelta64(1, "h")
    lat = np.linspace(90, -90, n_lat)
    lon = np.arange(n_lon) * 360 / n_lon
    levels = np.array([1, 50, 100, 250, 500, 700, 850, 925, 1000])
    shp3 = (hours, n_lat, n_lon)
    shp4 = (hours, levels.size, n_lat, n_lon)
    land = (rng.uniform(size=(n_lat, n_lon)) > 0.7).astype(np.float32)
    sst = (285 + rng.normal(size=shp3)).astype(np.float32)
    sst[:, land.astype(bool)] = np.nan
    static = lambda x: (("time", "latitude", "longitude"), np.broadcast_to(x, shp3).copy())  # noqa: E731
    return xr.Dataset(
        {
            "2m_temperature": (
                ("time", "latitude", "longitude"),
                (280 + rng.normal(size=shp3)).astype(np.float32),
            ),
            "sea_surface_temperature": (("time", "latitude", "longitude"), sst),
            "total_precipitation": (
                ("time", "latitude", "longitude"),
                rng.gamma(1.0, 1e-4, size=shp3).astype(np.float32),
            ),
            "toa_incident_solar_radiation": (
                ("time", "latitude", "longitude"),
                rng.uniform(size=shp3).astype(np.float32),
            ),
            "temperature": (
                ("time", "level", "latitude", "longitude"),
                (250 + rng.normal(size=shp4)).astype(np.float32),
            ),
            "u_component_of_wind": (
                ("time", "level", "latitude", "longitude"),
                rng.normal(size=shp4).astype(np.float32),
            ),
            "specific_humidity": (
                ("time", "level", "latitude", "longitude"),
                rng.uniform(size=shp4).astype(np.float32),
            ),
            "geopotential_at_surface": static(1000 * land),
            "land_sea_mask": static(land),
        },
        coords={"time": times, "latitude": lat, "longitude": lon, "level": levels},
        attrs={"valid_time_start": str(times[0])[:19], "valid_time_stop": str(times[-1])[:19]},
    )
