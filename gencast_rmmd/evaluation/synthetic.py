"""Synthetic forecast/truth stores with known calibration, for tests, benchmarks and demos.

Members and truth are drawn around a common centre mu: truth = mu + sigma e_0, member_i =
mu + spread_factor sigma e_i with e iid N(0, 1). `spread_factor = 1` is a perfectly calibrated
ensemble (flat rank histogram, corrected spread/skill = 1); < 1 is under-dispersed (U shape).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr


def synthetic_pair(
    n_init: int = 4,
    n_lead: int = 3,
    members: int = 5,
    n_lat: int = 16,
    n_lon: int = 32,
    levels: tuple[int, ...] = (500, 850),
    spread_factor: float = 1.0,
    bias: float = 0.0,
    seed: int = 0,
    step_hours: int = 12,
    start: str = "2020-01-01",
    truth_lat_name: str = "lat",
    ensemble_dim: str = "realization",
) -> tuple[xr.Dataset, xr.Dataset]:
    """(forecast, truth) datasets on an equiangular grid without poles.

    forecast: `temperature` (time, prediction_timedelta, ensemble_dim, level, latitude, longitude)
    and `2m_temperature` (no level); truth: same variables with dims (time, [level], lat, lon)
    (names per `truth_lat_name`), covering every valid time, latitude descending to exercise the
    flip. Units K.
    """
    rng = np.random.default_rng(seed)
    dlat = 180.0 / n_lat
    lat = -90 + dlat / 2 + dlat * np.arange(n_lat)
    lon = 360.0 / n_lon * np.arange(n_lon)
    step = np.timedelta64(step_hours, "h")
    inits = pd.date_range(start, periods=n_init, freq=f"{step_hours}h").values
    leads = (np.arange(1, n_lead + 1) * step).astype("timedelta64[ns]")
    times = pd.date_range(start, periods=n_init + n_lead, freq=f"{step_hours}h").values
    n_t, n_l = len(times), len(levels)
    base = 250 + 30 * np.cos(np.deg2rad(lat))[None, None, :, None]
    truth_t = base + 3.0 * rng.standard_normal((n_t, n_l, n_lat, n_lon))
    truth_s = base[:, 0] + 3.0 * rng.standard_normal((n_t, n_lat, n_lon))

    def ensemble(truth_valid: np.ndarray) -> np.ndarray:
        # truth_valid [I, K, ...] -> members [I, K, M, ...]; sigma grows with lead.
        sig = (0.5 + 0.5 * np.arange(1, n_lead + 1))[None, :].reshape(
            (1, n_lead) + (1,) * (truth_valid.ndim - 2)
        )
        e0 = rng.standard_normal(truth_valid.shape)
        mu = truth_valid - sig * e0 + bias
        e = rng.standard_normal(truth_valid.shape[:2] + (members,) + truth_valid.shape[2:])
        return mu[:, :, None] + spread_factor * sig[:, :, None] * e

    idx = np.arange(n_init)[:, None] + np.arange(1, n_lead + 1)[None, :]
    fc_t = ensemble(truth_t[idx]).astype(np.float32)
    fc_s = ensemble(truth_s[idx]).astype(np.float32)
    fdims = ("time", "prediction_timedelta", ensemble_dim)
    forecast = xr.Dataset(
        {
            "temperature": (fdims + ("level", "latitude", "longitude"), fc_t, {"units": "K"}),
            "2m_temperature": (fdims + ("latitude", "longitude"), fc_s, {"units": "K"}),
        },
        coords={
            "time": inits,
            "prediction_timedelta": leads,
            ensemble_dim: np.arange(members),
            "level": np.array(levels, dtype=np.int64),
            "latitude": lat,
            "longitude": lon,
        },
        attrs={"model": f"synthetic(spread_factor={spread_factor})"},
    )
    la, lo = truth_lat_name, "lon" if truth_lat_name == "lat" else "longitude"
    truth = xr.Dataset(
        {
            "temperature": (("time", "level", la, lo), truth_t.astype(np.float32), {"units": "K"}),
            "2m_temperature": (("time", la, lo), truth_s.astype(np.float32), {"units": "K"}),
        },
        coords={"time": times, "level": np.array(levels, dtype=np.int64), la: lat, lo: lon},
    ).isel({la: slice(None, None, -1)})
    return forecast, truth


def write_synthetic_pair(
    forecast_path: str, truth_path: str, **kwargs
) -> tuple[xr.Dataset, xr.Dataset]:
    """`synthetic_pair` written as Zarr stores (forecast chunked one init time per chunk)."""
    fc, tr = synthetic_pair(**kwargs)
    ens = kwargs.get("ensemble_dim", "realization")
    chunks = {"time": 1, "prediction_timedelta": 1, ens: -1}
    fc.chunk(chunks).to_zarr(forecast_path, mode="w", consolidated=True, zarr_format=2)
    tr.chunk({"time": 1}).to_zarr(truth_path, mode="w", consolidated=True, zarr_format=2)
    return fc, tr


def synthetic_canonical_store(
    path: str,
    task,
    n_times: int = 12,
    n_lat: int = 8,
    n_lon: int = 16,
    start: str = "2021-01-01",
    seed: int = 0,
) -> xr.Dataset:
    """A small data store in the canonical schema (time, level, lat, lon; ERA5 names, SI units).

    Every input/target variable of `task` is a smooth travelling wave plus noise around a
    plausible climatological value; statics are fixed fields; the progress forcings are computed
    from time and longitude (as the data layer does). For forecast tests and benchmarks.
    """
    from gencast_rmmd.data.era5 import add_progress_forcings
    from gencast_rmmd.data.task import has_level, variable_kind

    rng = np.random.default_rng(seed)
    dlat = 180.0 / n_lat
    lat = -90 + dlat / 2 + dlat * np.arange(n_lat)
    lon = 360.0 / n_lon * np.arange(n_lon)
    times = pd.date_range(start, periods=n_times, freq=f"{task.step_hours}h").values
    levels = np.asarray(task.pressure_levels, dtype=np.int64)
    base = {
        "temperature": 250.0,
        "geopotential": 5e4,
        "u_component_of_wind": 5.0,
        "v_component_of_wind": 0.0,
        "vertical_velocity": 0.0,
        "specific_humidity": 3e-3,
        "2m_temperature": 285.0,
        "mean_sea_level_pressure": 101325.0,
        "10m_u_component_of_wind": 2.0,
        "10m_v_component_of_wind": 0.0,
        "total_precipitation_12hr": 1e-3,
        "sea_surface_temperature": 290.0,
        "geopotential_at_surface": 500.0,
        "land_sea_mask": 0.3,
    }
    t_days = (times - times[0]) / np.timedelta64(1, "D")
    phase = 2 * np.pi * (t_days[:, None, None] / 4.0) + np.deg2rad(lon)[None, None, :]
    wave = np.cos(phase) * np.cos(np.deg2rad(lat))[None, :, None]  # [time, lat, lon]
    names = sorted(set(task.input_variables) | set(task.target_variables))
    data = {}
    for v in names:
        kind = variable_kind(v)
        if kind == "forcing":
            continue
        b = base.get(v, 1.0)
        amp = abs(b) * 0.02 + 1e-4
        if kind == "static":
            field = b + amp * rng.standard_normal((n_lat, n_lon))
            if v == "land_sea_mask":
                field = (rng.random((n_lat, n_lon)) < 0.3).astype(np.float64)
            data[v] = (("lat", "lon"), field.astype(np.float32))
        elif has_level(v):
            scale = (levels / 1000.0)[None, :, None, None]
            x = b * (1 + 0.1 * scale) + amp * (
                wave[:, None] + 0.2 * rng.standard_normal((n_times, len(levels), n_lat, n_lon))
            )
            data[v] = (("time", "level", "lat", "lon"), x.astype(np.float32))
        else:
            x = b + amp * (wave + 0.2 * rng.standard_normal((n_times, n_lat, n_lon)))
            data[v] = (("time", "lat", "lon"), x.astype(np.float32))
    ds = xr.Dataset(data, coords={"time": times, "level": levels, "lat": lat, "lon": lon})
    ds = add_progress_forcings(ds, task.forcing_variables)
    ds.to_zarr(path, mode="w", zarr_format=2, consolidated=True)
    return ds
