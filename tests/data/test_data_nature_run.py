"""The embedded nature run: schema, physics (jets, temperatures, decorrelation), determinism."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import xarray as xr

from gencast_rmmd.data import nature_run as nr
from gencast_rmmd.data.era5 import content_store_id
from gencast_rmmd.data.validate import check_store

R, G, GAMMA = 287.04, 9.80665, 0.0065


def test_sigma_to_pressure_exact_for_lapse_rate_atmosphere():
    # T = T0 (p/ps)^a and the matching hydrostatic geopotential are exactly what the
    # below-ground extrapolation assumes; interpolation in log p must stay close.
    a = R * GAMMA / G
    sigma = (np.arange(8) + 0.5) / 8
    ps = np.full((2, 3, 4), 95000.0)
    p = sigma[None, :, None, None] * ps[:, None]
    t0 = 290.0
    temp = t0 * (p / ps[:, None]) ** a
    phi = -(G * t0 / GAMMA) * ((p / ps[:, None]) ** a - 1.0)
    u = np.log(p)  # linear in log p: interpolated exactly, held constant outside
    levels = np.array([50.0, 300.0, 500.0, 850.0, 1000.0]) * 100
    out = nr.sigma_to_pressure(
        {"temperature": temp, "geopotential": phi, "u_component_of_wind": u},
        sigma,
        ps,
        levels,
        gas_constant=R,
        gravity=G,
    )
    exp_t = t0 * (levels / 95000.0) ** a
    exp_phi = -(G * t0 / GAMMA) * ((levels / 95000.0) ** a - 1.0)
    # 1000 hPa is below the surface (95000 Pa): exact extrapolation
    np.testing.assert_allclose(out["temperature"][0, -1, 0, 0], exp_t[-1], rtol=1e-6)
    np.testing.assert_allclose(out["geopotential"][0, -1, 0, 0], exp_phi[-1], rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(out["temperature"][0, 1:4, 0, 0], exp_t[1:4], rtol=2e-3)
    np.testing.assert_allclose(out["geopotential"][0, 1:4, 0, 0], exp_phi[1:4], rtol=5e-3)
    np.testing.assert_allclose(
        out["u_component_of_wind"][0, 1:4, 0, 0], np.log(levels[1:4]), rtol=1e-6
    )
    assert out["u_component_of_wind"][0, -1, 0, 0] == pytest.approx(np.log(p[0, -1, 0, 0]))
    # geopotential decreases with pressure, everything finite
    assert np.all(np.diff(out["geopotential"], axis=1) < 0)
    assert all(np.all(np.isfinite(v)) for v in out.values())


@pytest.mark.slow
def test_short_run_schema_and_validity(short_nature_run):
    path, cfg = short_nature_run
    ds = xr.open_zarr(path)
    assert check_store(ds, cfg.task) == []
    np.testing.assert_allclose(ds.lat.values, -87.1875 + 5.625 * np.arange(32))
    np.testing.assert_allclose(ds.lon.values, 5.625 * np.arange(64))
    assert ds.sizes["time"] == 80 and ds["temperature"].encoding["chunks"][0] == 1
    assert ds["geopotential_at_surface"].dims == ("lat", "lon")
    assert ds["temperature"].attrs["units"] == "K"


@pytest.mark.slow
def test_jets_temperatures_and_eddies(short_nature_run):
    path, _ = short_nature_run
    ds = xr.open_zarr(path).load()
    lat = ds.lat.values
    u = ds["u_component_of_wind"].sel(level=250).mean(["time", "lon"]).values
    for hemi in (lat < 0, lat > 0):
        k = np.argmax(np.where(hemi, u, -np.inf))
        assert 18.0 <= u[k] <= 40.0, u  # westerly jet strength, m/s
        assert 20.0 <= abs(lat[k]) <= 50.0, (lat[k], u)
    # surface easterlies in the tropics, westerlies in mid-latitudes (momentum balance)
    us = ds["10m_u_component_of_wind"].mean(["time", "lon"]).values
    assert us[np.abs(lat) < 12].mean() < 0 < us[(np.abs(lat) > 35) & (np.abs(lat) < 60)].mean()
    t = ds["temperature"]
    assert 180.0 < float(t.min()) and float(t.max()) < 330.0
    t850 = ds["temperature"].sel(level=850).mean(["time", "lon"]).values
    assert t850[np.abs(lat) < 10].mean() - t850[np.abs(lat) > 70].mean() > 20.0  # pole-equator
    # eddies: transient meridional wind in mid-latitudes
    v = ds["v_component_of_wind"].sel(level=250)
    assert float(v.where(np.abs(v.lat) > 30).where(np.abs(v.lat) < 60).std()) > 4.0
    z = ds["geopotential"].sel(level=500)
    assert 4.5e4 < float(z.mean()) < 6.0e4  # ~5.5 km


@pytest.mark.slow
def test_autocorrelation_decays_over_days(short_nature_run):
    path, _ = short_nature_run
    ds = xr.open_zarr(path).load()
    x = ds["temperature"].sel(level=850)
    x = x.where((np.abs(x.lat) > 30) & (np.abs(x.lat) < 65), drop=True)
    anom = (x - x.mean(["time", "lon"])).values  # [time, lat, lon]
    anom = anom - anom.mean(0)

    def corr(lag):
        a, b = anom[:-lag], anom[lag:]
        return float((a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean()))

    c12h, c2d, c8d = corr(1), corr(4), corr(16)
    assert c12h > 0.8, c12h  # persistent over half a day (weather, not noise)
    assert c8d < 0.35, c8d  # decorrelated after about a week
    assert c12h > c2d > c8d


@pytest.mark.slow
def test_deterministic_per_seed():
    from gencast_rmmd.data.config import load_data_config

    cfg = load_data_config("embedded")
    base = dataclasses.replace(cfg.nature_run, spinup_days=3, days=1)
    levels = cfg.task.pressure_levels
    a = nr.simulate(base, levels, progress=False)
    b = nr.simulate(base, levels, progress=False)
    c = nr.simulate(dataclasses.replace(base, seed=1), levels, progress=False)
    xr.testing.assert_identical(a, b)
    # Identical runs get one store id (what was made from a rebuilt cache stays current).
    assert content_store_id(a) == content_store_id(b) != content_store_id(c)
    assert not np.array_equal(
        a["mean_sea_level_pressure"].values, c["mean_sea_level_pressure"].values
    )
    assert nr.cache_key(base, levels) != nr.cache_key(dataclasses.replace(base, seed=1), levels)


@pytest.mark.slow
def test_embedded_source_opens_the_cached_run(short_nature_run, monkeypatch):
    from gencast_rmmd.data.era5 import open_canonical

    path, cfg = short_nature_run
    monkeypatch.setenv("GENCAST_RMMD_CACHE", str(path.parent))
    assert nr.embedded_store(config=cfg.nature_run, levels_hpa=cfg.task.pressure_levels) == path
    ds = open_canonical(cfg)
    assert ds.sizes["time"] == 80 and check_store(ds, cfg.task) == []


def test_a_task_the_nature_run_cannot_feed_is_refused_before_it_is_built(monkeypatch):
    """`data prepare` from `source: embedded` with GenCast's full task: the missing variables are
    named before the nature run is built (it used to build, minutes, then report them)."""
    from gencast_rmmd.data.config import load_data_config
    from gencast_rmmd.data.era5 import open_canonical
    from gencast_rmmd.errors import DataError

    def build(*a, **k):
        raise AssertionError("the nature run was built")

    monkeypatch.setattr(nr, "embedded_store", build)
    assert nr.missing_variables(load_data_config("embedded").task) == []
    cfg = load_data_config("gencast_1p0deg", ["source=embedded"])
    assert nr.missing_variables(cfg.task) == [
        "sea_surface_temperature",
        "specific_humidity",
        "total_precipitation_12hr",
        "vertical_velocity",
    ]
    with pytest.raises(DataError, match="the embedded nature run has no sea_surface_temperature"):
        open_canonical(cfg)


def test_output_bytes_is_the_built_fields_and_too_large_a_run_is_refused_first(
    short_nature_run, tmp_path, monkeypatch
):
    """`output_bytes` equals the state fields of a real build; a run whose build cannot be held
    in memory (twice that), or whose store cannot fit on the disk, is refused before anything
    is simulated (`--days 100000000` simulated for hours before: 6,000 h by its own ETA)."""
    from gencast_rmmd.errors import ConfigError, OutputError

    path, cfg = short_nature_run
    levels = tuple(cfg.task.pressure_levels)
    ds = xr.open_zarr(path)
    fields = sum(ds[v].nbytes for v in nr.STATE_VARIABLES)
    assert nr.output_bytes(cfg.nature_run, levels) == fields

    def simulate(*a, **k):
        raise AssertionError("simulated before the resources were checked")

    monkeypatch.setattr(nr, "simulate", simulate)
    need = 2 * fields
    with pytest.raises(ConfigError, match=r"a nature run of 40 days holds at least .* MiB in"):
        nr.check_resources(cfg.nature_run, levels, tmp_path / "n.zarr", need - 1)
    nr.check_resources(cfg.nature_run, levels, tmp_path / "n.zarr", need)
    nr.check_resources(cfg.nature_run, levels, tmp_path / "n.zarr", None)  # not known: not checked
    monkeypatch.setattr("gencast_rmmd.runtime.available_memory", lambda: need - 1)
    with pytest.raises(ConfigError, match="build fewer --days"):
        nr.build(tmp_path / "n.zarr", cfg.nature_run, levels)
    # A cache build names the config key the days come from, not a flag it has none of.
    with pytest.raises(ConfigError, match="set fewer nature_run.days in the data config$"):
        nr.embedded_store(tmp_path / "cache", cfg.nature_run, levels)
    monkeypatch.setattr("gencast_rmmd.runtime.available_memory", lambda: None)
    real = shutil.disk_usage
    monkeypatch.setattr(
        "gencast_rmmd.remote.shutil.disk_usage", lambda p: real(p)._replace(free=fields // 2 - 1)
    )
    with pytest.raises(OutputError, match=r"no space left on the device writing .*n\.zarr"):
        nr.build(tmp_path / "n.zarr", cfg.nature_run, levels)
    assert not (tmp_path / "n.zarr").exists()
