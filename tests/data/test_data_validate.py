"""`data validate`: each bad input gives its own clear error."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from data_synthetic import SMALL_TASK, canonical_store_ds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from gencast_rmmd.config import from_dict
from gencast_rmmd.data.config import DataConfig
from gencast_rmmd.data.validate import check_store, validate_store
from gencast_rmmd.errors import ConfigError, DataError


def codes(ds, task=SMALL_TASK):
    return sorted({p.code for p in check_store(ds, task)})


def test_clean_store_has_no_problems(small_store):
    path, ds = small_store
    assert check_store(ds, SMALL_TASK) == []
    info, notes = validate_store(path, SMALL_TASK)
    assert info["times"] == ds.sizes["time"] and info["splits"] == {} and notes == []


def _retime(ds, times):
    return ds.assign_coords(time=np.asarray(times, dtype="datetime64[ns]"))


T = canonical_store_ds().time.values
H12 = np.timedelta64(12, "h")


@pytest.mark.parametrize(
    "name, mutate, code, fragment",
    [
        (
            "missing variable",
            lambda d: d.drop_vars("temperature"),
            "missing-variable",
            "'temperature'",
        ),
        (
            "missing forcing",
            lambda d: d.drop_vars("day_progress_cos"),
            "missing-variable",
            "prepare",
        ),
        ("missing level", lambda d: d.sel(level=[500]), "missing-level", "850 hPa"),
        (
            "wrong dims",
            lambda d: d.assign(temperature=d["temperature"].isel(level=0, drop=True)),
            "dims",
            "expected dims ('time', 'level', 'lat', 'lon')",
        ),
        ("missing time dim", lambda d: d.isel(time=0), "dims", "'time' dimension"),
        (
            "lat not equiangular",
            lambda d: d.assign_coords(lat=np.r_[d.lat.values[:-1], 89.9]),
            "grid",
            "not equiangular",
        ),
        ("grid not SH-usable", lambda d: d.isel(lon=slice(0, 12)), "grid", "spherical-harmonic"),
        (
            "time not monotonic",
            lambda d: _retime(d, T[[1, 0, *range(2, 12)]]),
            "time-order",
            "not monotonic",
        ),
        (
            "duplicate times",
            lambda d: _retime(d, np.r_[T[:5], T[4], T[6:]]),
            "duplicate-times",
            "duplicated",
        ),
        ("gap", lambda d: _retime(d, np.r_[T[:6], T[6:] + H12]), "time-gaps", "irregular"),
        (
            "wrong dtype",
            lambda d: d.assign(land_sea_mask=d["land_sea_mask"].astype(np.int32)),
            "dtype",
            "expected float32, found int32",
        ),
        (
            "NaN",
            lambda d: d.assign(temperature=d["temperature"].where(d.time != T[3])),
            "non-finite",
            "'temperature'",
        ),
        (
            "Inf",
            lambda d: d.assign(
                u_component_of_wind=d["u_component_of_wind"].where(d.lat < 70, np.inf)
            ),
            "non-finite",
            "NaN/Inf",
        ),
        (
            "static varies",
            lambda d: d.assign(
                land_sea_mask=d["land_sea_mask"].expand_dims(time=d.time).copy()
                + (d.time - d.time[0]).astype(float) * 0
                + xr.DataArray(np.arange(12.0), dims="time", coords={"time": d.time})
            ),
            "static-varies",
            "changes over time",
        ),
    ],
)
def test_each_problem_has_its_own_error(name, mutate, code, fragment):
    ds = mutate(canonical_store_ds())
    problems = check_store(ds, SMALL_TASK)
    assert code in {p.code for p in problems}, (name, problems)
    assert any(fragment in p.message for p in problems if p.code == code), problems


def test_sst_nan_is_allowed_but_constant_static_with_time_is_fine():
    ds = canonical_store_ds(sst_nan=True)
    assert np.isnan(ds["sea_surface_temperature"].values).any()
    ds = ds.assign(land_sea_mask=ds["land_sea_mask"].expand_dims(time=ds.time))
    assert codes(ds) == []


def test_arco_names_and_descending_latitude_are_accepted():
    ds = (
        canonical_store_ds()
        .rename(lat="latitude", lon="longitude")
        .isel(latitude=slice(None, None, -1))
    )
    assert codes(ds) == []


def test_store_path_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        validate_store(tmp_path / "nope.zarr", SMALL_TASK)
    (tmp_path / "x.txt").write_text("not a store")
    with pytest.raises(DataError, match="neither a Zarr store"):
        validate_store(tmp_path / "x.txt", SMALL_TASK)


def test_validate_store_lists_all_problems(tmp_path):
    ds = canonical_store_ds().drop_vars("temperature").sel(level=[500])
    ds.to_zarr(tmp_path / "bad.zarr", consolidated=False)
    with pytest.raises(DataError) as e:
        validate_store(tmp_path / "bad.zarr", SMALL_TASK)
    assert "[missing-variable]" in str(e.value) and "[missing-level]" in str(e.value)


def test_incomplete_prepare_store_is_reported(small_store):
    import zarr

    path, _ = small_store
    zarr.open_group(path, mode="r+").attrs["gencast_rmmd_prepare"] = "in-progress"
    with pytest.raises(DataError, match="incomplete"):
        validate_store(path, SMALL_TASK)
    zarr.open_group(path, mode="r+").attrs["gencast_rmmd_prepare"] = "complete"
    assert validate_store(path, SMALL_TASK)[1] == []  # no note, no problem


def test_config_naming_unknown_variable():
    with pytest.raises(ConfigError, match="unknown variable 'not_a_variable'"):
        from_dict(
            DataConfig,
            {
                "task": {
                    "input_variables": ["not_a_variable"],
                    "target_variables": ["2m_temperature"],
                }
            },
        )


# Property: a valid store with one random corruption applied is reported with that corruption's
# code (and possibly others caused by it), never silently accepted.
CORRUPTIONS = {
    "missing-variable": lambda d, r: d.drop_vars(
        r.choice(["temperature", "2m_temperature", "land_sea_mask"])
    ),
    "missing-level": lambda d, r: d.sel(level=[int(r.choice([500, 850]))]),
    "time-gaps": lambda d, r: d.drop_isel(time=int(r.integers(1, d.sizes["time"] - 1))),
    "duplicate-times": lambda d, r: d.isel(
        time=np.r_[np.arange(d.sizes["time"]), r.integers(0, d.sizes["time"])]
    ),
    "non-finite": lambda d, r: d.assign(
        temperature=d["temperature"].where(
            ~(
                (d.time == d.time[r.integers(0, d.sizes["time"])])
                & (d.lat == d.lat[r.integers(0, d.sizes["lat"])])
            ),
            [np.nan, np.inf, -np.inf][r.integers(0, 3)],
        )
    ),
    "dtype": lambda d, r: d.assign(
        **{"2m_temperature": d["2m_temperature"].astype(r.choice(["int32", "int64", "bool"]))}
    ),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_lat=hst.sampled_from([4, 6, 8]),
    n_times=hst.integers(4, 9),
    corruption=hst.sampled_from([None, *sorted(CORRUPTIONS)]),
    seed=hst.integers(0, 2**16),
)
def test_validator_property(n_lat, n_times, corruption, seed):
    ds = canonical_store_ds(n_times=n_times, n_lat=n_lat, n_lon=2 * n_lat, seed=seed)
    if corruption is None:
        assert check_store(ds, SMALL_TASK) == []
        return
    bad = CORRUPTIONS[corruption](ds, np.random.default_rng(seed))
    assert corruption in {p.code for p in check_store(bad, SMALL_TASK)}
