"""`tools/skill_vs_climatology.py` on small synthetic stores: a forecast that is skilful only in
the tropics beats climatology there and loses in the extratropics, and the overall CRPS ratio lies
between the two regions' ratios."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import xarray as xr

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "skill_vs_climatology.py"


def _stores(tmp_path: pathlib.Path) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    lat = np.linspace(-90 + 11.25, 90 - 11.25, 8)
    lon = np.arange(16) * 22.5
    times = np.datetime64("2000-01-01T00", "ns") + np.arange(60) * np.timedelta64(12, "h")
    levels = np.array([500, 850])
    shape = (times.size, levels.size, lat.size, lon.size)
    temp = 250 + 5 * rng.standard_normal(shape)
    truth = xr.Dataset(
        {"temperature": (("time", "level", "lat", "lon"), temp)},
        coords={"time": times, "level": levels, "lat": lat, "lon": lon},
    )
    t_path = str(tmp_path / "truth.zarr")
    truth.to_zarr(t_path, zarr_format=2)

    inits = times[40:44]
    leads = np.arange(1, 4) * np.timedelta64(12, "h")
    members = 4
    tropics = np.abs(lat) < 20
    fc = np.empty((inits.size, leads.size, members, levels.size, lat.size, lon.size))
    for i, t0 in enumerate(inits):
        for j, lead in enumerate(leads):
            y = truth["temperature"].sel(time=t0 + lead.astype("timedelta64[ns]")).values
            # tropics: truth + small noise (skilful); extratropics: also 3 climatological
            # standard deviations off (a drift)
            bias = np.where(tropics[:, None], 0.0, 15.0)
            fc[i, j] = y + bias + 0.5 * rng.standard_normal((members,) + y.shape)
    forecast = xr.Dataset(
        {
            "temperature": (
                ("time", "prediction_timedelta", "realization", "level", "latitude", "longitude"),
                fc.astype(np.float32),
            )
        },
        coords={
            "time": inits,
            "prediction_timedelta": leads.astype("timedelta64[ns]"),
            "realization": np.arange(members),
            "level": levels,
            "latitude": lat,
            "longitude": lon,
        },
    )
    f_path = str(tmp_path / "forecast.zarr")
    forecast.to_zarr(f_path, zarr_format=2)
    return f_path, t_path


def test_regions_show_where_skill_is_lost(tmp_path):
    f_path, t_path = _stores(tmp_path)
    argv = [sys.executable, str(TOOL), f_path, t_path, "2000-01-01", "2000-01-20"]
    res = subprocess.run(argv + ["--vars", "temperature:850"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])["temperature:850"]
    ratio = np.array(out["crps"]) / np.array(out["crps_climatology"])
    trop = np.array(out["crps_ratio_tropics"])
    assert out["lead_hours"] == [12, 24, 36]
    assert np.all(trop < 0.3), trop
    for side in ("northern", "southern"):
        extra = np.array(out[f"crps_ratio_{side}_extratropics"])
        assert np.all(extra > 1.5), (side, extra)
        assert np.all((trop < ratio) & (ratio < extra)), (side, trop, ratio, extra)
    assert out["beats_climatology_up_to_hours"] == 0
    # members 3 standard deviations off in the extratropics: activity well above the truth's
    assert np.all(np.array(out["activity"]) > 3 * np.array(out["activity_truth"]))
