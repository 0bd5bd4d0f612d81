"""Opening ERA5-style stores and normalizing them on read."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from data_synthetic import SMALL_TASK, arco_style_ds

from gencast_rmmd.data import era5
from gencast_rmmd.data.config import GridConfig
from gencast_rmmd.errors import DataError


def test_progress_forcings_match_gencast_formulas():
    t = np.array(["1970-01-01T00", "2020-06-15T12", "2021-03-01T06"], dtype="datetime64[ns]")
    lon = np.array([0.0, 90.0, 270.0])
    secs = t.astype("datetime64[s]").astype(np.int64).astype(float)
    yp = np.mod(secs / 86400 / 365.24219, 1)
    np.testing.assert_allclose(era5.year_progress(t), yp)
    dp = era5.day_progress(t, lon)
    np.testing.assert_allclose(dp[1], np.mod(0.5 + lon / 360, 1))
    np.testing.assert_allclose(dp[2], np.mod(0.25 + lon / 360, 1))
    f = era5.progress_forcings(t, lon)
    assert f["year_progress_sin"].dims == ("time",) and f["day_progress_cos"].dims == (
        "time",
        "lon",
    )
    np.testing.assert_allclose(f["day_progress_sin"].values, np.sin(2 * np.pi * dp), atol=1e-6)
    np.testing.assert_allclose(f["year_progress_cos"].values, np.cos(2 * np.pi * yp), atol=1e-6)


def test_normalize_coords_arco_style():
    ds = arco_style_ds()
    out = era5.normalize_coords(ds)
    assert "lat" in out.dims and "lon" in out.dims and "latitude" not in out.dims
    assert np.all(np.diff(out.lat.values) > 0)
    # values move with their latitude
    np.testing.assert_array_equal(
        out["2m_temperature"].sel(lat=90).values, ds["2m_temperature"].sel(latitude=90).values
    )


def test_normalize_coords_pa_levels_and_negative_lons():
    ds = xr.Dataset(
        {"x": (("level", "lon"), np.arange(6.0).reshape(2, 3))},
        coords={"level": [50000.0, 85000.0], "lon": [-90.0, 0.0, 90.0]},
    )
    out = era5.normalize_coords(ds)
    assert out.level.values.tolist() == [500, 850]
    assert out.lon.values.tolist() == [0.0, 90.0, 270.0]
    assert out["x"].sel(lon=270.0).values.tolist() == [0.0, 3.0]


def test_the_climate_data_stores_netcdf_layout_reads_as_era5_long_names():
    """A CDS download names ERA5 variables by ECMWF short names (t, u, t2m, sst, lsm, z, ...),
    its time dim `valid_time` and its levels `pressure_level`: canonicalized, it is the same
    store as the long-name one (was: "store lacks variable(s) ... variables found: ['t', 'z']")."""
    ds = arco_style_ds()
    short = {long: s for s, long in era5._SHORT_NAMES.items() if long in ds.data_vars}
    short["geopotential_at_surface"] = "z"  # no level dim: the orography
    cds = ds.rename({**short, "time": "valid_time", "level": "pressure_level"})
    assert {"t", "u", "t2m", "sst", "lsm", "z", "tp"} <= set(cds.data_vars)
    want = era5.canonicalize(ds, SMALL_TASK).load()
    got = era5.canonicalize(cds, SMALL_TASK).load()
    xr.testing.assert_identical(got, want)
    # z on pressure levels is geopotential; a long name already there is left alone
    lev = xr.Dataset(
        {"z": (("pressure_level", "latitude"), np.ones((2, 3))), "t": ("latitude", np.ones(3))},
        coords={"pressure_level": [500, 850], "latitude": [0.0, 10.0, 20.0]},
    )
    assert set(era5.normalize_coords(lev).data_vars) == {"geopotential", "temperature"}
    both = lev.assign(temperature=lev["t"])
    assert set(era5.normalize_coords(both).data_vars) == {"geopotential", "t", "temperature"}


def test_gencasts_example_data_layout_reads_as_the_store():
    """GenCast's example-data files (`source-era5_date-..._steps-...nc`) hold times as offsets
    with the dates in a `datetime` (batch, time) coordinate and a `batch` dim of one: read as
    the plain store (was: `data prepare` wrote a "complete" store with a timedelta time axis,
    a batch dim and progress forcings of 1970)."""
    ds = arco_style_ds(hours=36)
    t = ds["time"].values
    example = ds.assign_coords(time=t - t[0]).expand_dims(batch=1)
    example = example.assign_coords(datetime=(("batch", "time"), t[None]))
    want = era5.canonicalize(ds, SMALL_TASK).load()
    xr.testing.assert_identical(era5.canonicalize(example, SMALL_TASK).load(), want)
    two = xr.concat([example, example], "batch")
    with pytest.raises(DataError, match=r"the data has 2 batches .* expected one"):
        era5.canonicalize(two, SMALL_TASK)


def test_a_time_axis_of_offsets_or_fields_with_extra_dims_are_refused():
    ds = arco_style_ds(hours=24)
    offsets = ds.assign_coords(time=ds["time"].values - ds["time"].values[0])
    with pytest.raises(DataError, match=r"time axis holds timedelta64\[ns\] values, not dates"):
        era5.canonicalize(offsets, SMALL_TASK)
    members = xr.concat([ds, ds], "number")  # an ensemble (ERA5's EDA, say)
    with pytest.raises(DataError, match=r"variable '.*' has dims .*\['number'\] beside time"):
        era5.canonicalize(members, SMALL_TASK)


def _cds_download(ds: xr.Dataset, where, engine="h5netcdf") -> None:
    """`ds` as the Climate Data Store delivers it: short names, `valid_time`, `pressure_level`;
    one file per period and per kind (surface, levels), the statics at one time in their own."""
    short = {long: s for s, long in era5._SHORT_NAMES.items() if long in ds.data_vars}
    short["geopotential_at_surface"] = "z"  # named like the geopotential on levels
    cds = ds.rename({**short, "time": "valid_time", "level": "pressure_level"})
    statics = ["z", "lsm"]
    levels = [v for v in cds.data_vars if "pressure_level" in cds[v].dims]
    surface = [v for v in cds.data_vars if v not in levels and v not in statics]
    cds[statics].isel(valid_time=[0]).to_netcdf(where / "static.nc", engine=engine)
    n = cds.sizes["valid_time"]
    for i, part in enumerate((slice(0, n // 3), slice(n // 3, n))):  # two "months"
        cds[surface].isel(valid_time=part).to_netcdf(where / f"sfc_{i}.nc", engine=engine)
        cds[levels].isel(valid_time=part).to_netcdf(where / f"pl_{i}.nc", engine=engine)


def test_a_pattern_of_cds_netcdf_files_reads_as_the_one_store(tmp_path):
    """`era5/*.nc`: the files a local glob matches are one store, each in long names first (the
    surface and level geopotentials are both `z` in a CDS file), the statics' single time
    dropped, periods concatenated and kinds merged; canonicalized, it equals the store."""
    ds = arco_style_ds(hours=36)
    _cds_download(ds, tmp_path)
    pattern = str(tmp_path / "*.nc")
    assert era5.is_pattern(pattern) and not era5.is_pattern(str(tmp_path / "sfc_0.nc"))
    got = era5.open_store(pattern)
    assert got.sizes["time"] == 36 and "geopotential_at_surface" in got
    want = era5.canonicalize(ds, SMALL_TASK).load()
    xr.testing.assert_identical(era5.canonicalize(got, SMALL_TASK).load(), want)
    # Any file re-written, added or removed is another version of the store.
    before = era5.metadata_version(pattern)
    assert before == era5.metadata_version(pattern) and before.startswith("files:")
    (tmp_path / "sfc_1.nc").unlink()
    assert era5.metadata_version(pattern) != before


def test_a_store_whose_name_has_pattern_characters_is_that_store(tmp_path):
    """`era5[v2].zarr`, `run*.nc`: a path that exists as written is opened, not globbed (the
    glob `era5[v2].zarr` matches `era5v.zarr` and `era52.zarr` only)."""
    ds = arco_style_ds(hours=6)
    for name in ("era5[v2].zarr", "run*1?.nc"):
        path = tmp_path / name
        assert era5.is_pattern(str(path))  # not there yet: a pattern
        ds.to_zarr(path, zarr_format=2, consolidated=True) if name.endswith(
            ".zarr"
        ) else ds.to_netcdf(path)
        assert not era5.is_pattern(str(path))
        got = era5.open_store(str(path))
        assert got.sizes["time"] == 6 and set(ds.data_vars) <= set(got.data_vars)


def test_a_pattern_that_does_not_make_one_store_is_a_clear_error(tmp_path):
    ds = arco_style_ds(hours=24)
    with pytest.raises(DataError, match=r"store pattern '.*/\*\.nc' matches no file"):
        era5.open_store(str(tmp_path / "*.nc"))
    (tmp_path / "a.nc").write_bytes(b"not netcdf")
    with pytest.raises(DataError, match=r"matches '.*a\.nc', which is not a NetCDF file"):
        era5.open_store(str(tmp_path / "*.nc"))
    (tmp_path / "a.nc").unlink()
    (tmp_path / "d.nc").mkdir()
    with pytest.raises(DataError, match=r"matches directory .*NetCDF files only"):
        era5.open_store(str(tmp_path / "*.nc"))
    (tmp_path / "d.nc").rmdir()
    # two files on other grids would align with NaN: refused
    ds[["2m_temperature"]].to_netcdf(tmp_path / "a.nc", engine="h5netcdf")
    other = ds[["temperature"]].isel(latitude=slice(0, -1))
    other.to_netcdf(tmp_path / "b.nc", engine="h5netcdf")
    with pytest.raises(DataError, match=r"its 2 files do not combine into one store"):
        era5.open_store(str(tmp_path / "*.nc"))


def test_precipitation_is_sum_of_12_hourly_values_ending_at_valid_time():
    ds = era5.normalize_coords(arco_style_ds(hours=60))
    valid = ds.time.values[::12]
    acc = era5.precipitation_accumulation(ds["total_precipitation"], valid)
    # first valid time (00 UTC day 1) lacks history; the next ones exist
    assert acc.time.values[0] == ds.time.values[12]
    t = acc.time.values[1]
    i = int(np.nonzero(ds.time.values == t)[0][0])
    brute = ds["total_precipitation"].values[i - 11 : i + 1].sum(axis=0)
    np.testing.assert_allclose(acc.sel(time=t).values, brute, rtol=1e-6)


def test_canonicalize_arco_style_store():
    ds = arco_style_ds(hours=72).chunk({"time": 1})
    out = era5.canonicalize(ds, SMALL_TASK)
    hours = (out.time.values.astype("datetime64[h]").astype(int)) % 24
    assert set(hours.tolist()) <= {0, 12}
    assert out.time.values[0] == np.datetime64("2020-01-01T12")  # 00 UTC lacks precip history
    assert out.level.values.tolist() == [500, 850]
    assert "specific_humidity" not in out and "toa_incident_solar_radiation" not in out
    assert out["land_sea_mask"].dims == ("lat", "lon")
    assert out["temperature"].dims == ("time", "level", "lat", "lon")
    assert out["day_progress_sin"].dims == ("time", "lon")
    assert all(v.dtype == np.float32 for v in out.data_vars.values())
    assert np.all(np.diff(out.lat.values) > 0)
    # lazy: dask-backed until computed
    assert out["temperature"].chunks is not None
    src = era5.normalize_coords(ds)
    np.testing.assert_array_equal(
        out["temperature"].sel(time="2020-01-02T00", level=500).values,
        src["temperature"].sel(time="2020-01-02T00", level=500).values,
    )


def test_canonicalize_subsample_and_conservative():
    ds = arco_style_ds(hours=30, n_lat=9, n_lon=16)
    sub = era5.canonicalize(ds, SMALL_TASK, grid=GridConfig(method="subsample", subsample_factor=4))
    assert sub.lat.values.tolist() == [-90.0, 0.0, 90.0] and sub.sizes["lon"] == 4
    cons = era5.canonicalize(
        ds, SMALL_TASK, grid=GridConfig(method="conservative", lat_points=4, lon_points=8)
    )
    np.testing.assert_allclose(cons.lat.values, [-67.5, -22.5, 22.5, 67.5])
    assert cons.sizes["lon"] == 8 and cons["day_progress_sin"].sizes["lon"] == 8


def test_canonical_time_ascends_whatever_the_source_order():
    """A source whose time axis runs backwards gives the same canonical store."""
    ds = arco_style_ds(hours=72)
    want = era5.canonicalize(ds, SMALL_TASK).compute()
    got = era5.canonicalize(ds.isel(time=slice(None, None, -1)), SMALL_TASK).compute()
    assert np.all(np.diff(got.time.values) > np.timedelta64(0))
    xr.testing.assert_identical(got, want)


@pytest.mark.parametrize("step_hours, first", [(6, "2020-01-01T12"), (24, "2020-01-02T00")])
def test_precipitation_is_a_12_hour_sum_whatever_the_step(step_hours, first):
    """`total_precipitation_12hr` is its name's 12 h accumulation, not one over the task step."""
    import dataclasses

    raw = arco_style_ds(hours=72)
    task = dataclasses.replace(SMALL_TASK, step_hours=step_hours)
    out = era5.canonicalize(raw, task)
    hourly = era5.normalize_coords(raw)["total_precipitation"]
    assert out.time.values[0] == np.datetime64(first)  # the first with 12 h of history
    for t in out.time.values:
        i = int(np.nonzero(hourly.time.values == t)[0][0])
        np.testing.assert_allclose(
            out["total_precipitation_12hr"].sel(time=t).values,
            hourly.values[i - 11 : i + 1].sum(axis=0),
            rtol=1e-5,
        )
    assert out["total_precipitation_12hr"].attrs["long_name"].endswith("over 12 h")


def test_time_window_is_sliced_as_xarray_slices_it():
    """A date alone covers its whole day (as in xarray's slicing and `open_store`'s trimming to
    `valid_time_stop`); a window outside the store names the window, not precipitation."""
    raw = arco_style_ds(hours=72)  # 2020-01-01T00 .. 2020-01-03T23
    out = era5.canonicalize(raw, SMALL_TASK, time_start="2020-01-01", time_stop="2020-01-02")
    want = np.array(["2020-01-01T12", "2020-01-02T00", "2020-01-02T12"], dtype="datetime64[ns]")
    np.testing.assert_array_equal(out.time.values, want)
    out = era5.canonicalize(raw, SMALL_TASK, time_start="2020-01-02T00", time_stop="2020-01-02T12")
    np.testing.assert_array_equal(out.time.values, want[1:])
    with pytest.raises(DataError, match="no times on the 12 h grid between 2021-01-01 and"):
        era5.canonicalize(raw, SMALL_TASK, time_start="2021-01-01", time_stop="2021-02-01")


def test_gcs_token_defaults_to_fsspec_configuration(monkeypatch):
    """A data config without `token` reads `gs://` with the token fsspec's configuration names
    (`FSSPEC_GS_TOKEN`), else anonymously; a config's own token wins."""
    import dataclasses

    import fsspec.config

    from gencast_rmmd.data.config import DataConfig

    seen = []

    def fake_open(path, **kwargs):
        seen.append(kwargs.get("storage_options"))
        raise FileNotFoundError(path)

    monkeypatch.setattr(era5, "open_zarr_quiet", fake_open)
    monkeypatch.setattr(era5, "check_host", lambda source, opts=None: None)  # offline here
    cfg = DataConfig(task=SMALL_TASK, source="gs://private-bucket/era5.zarr")
    assert cfg.token is None
    for conf, token in (({"gs": {"token": "google_default"}}, None), ({}, "anon")):
        monkeypatch.setattr(fsspec.config, "conf", conf)
        with pytest.raises(DataError, match="does not exist"):
            era5.open_canonical(cfg)
        assert (seen.pop() or {}).get("token") == token
    with pytest.raises(DataError):
        era5.open_canonical(dataclasses.replace(cfg, token="key.json"))
    assert seen.pop() == {"token": "key.json"}


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.drop_vars("temperature"), "lacks variable"),
        (lambda d: d.sel(level=[1, 50, 100]), "lacks pressure level"),
        (lambda d: d.drop_vars(["total_precipitation"]), "total_precipitation_12hr"),
    ],
)
def test_canonicalize_errors(mutate, fragment):
    with pytest.raises(DataError, match=fragment):
        era5.canonicalize(mutate(arco_style_ds(hours=30)), SMALL_TASK)


def test_open_store_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        era5.open_store(tmp_path / "nope.zarr")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="not a Zarr store"):
        era5.open_store(tmp_path / "empty_dir")
    (tmp_path / "junk.bin").write_bytes(b"hello world")
    with pytest.raises(DataError, match="neither a Zarr store"):
        era5.open_store(tmp_path / "junk.bin")
    ds = arco_style_ds(hours=24)
    ds.to_zarr(tmp_path / "a.zarr", consolidated=False)
    small = ds.isel(time=slice(0, 5))
    small.assign_coords(level=small.level.values.astype("int32")).to_netcdf(
        tmp_path / "a.nc", engine="scipy"
    )
    z = era5.open_store(tmp_path / "a.zarr")
    assert z["temperature"].chunks is not None  # lazy
    n = era5.open_store(tmp_path / "a.nc")
    assert n.sizes["time"] == 5


def test_open_store_trims_to_valid_range(tmp_path):
    ds = arco_style_ds(hours=24)
    ds.attrs["valid_time_stop"] = "2020-01-01T09"
    ds.to_zarr(tmp_path / "a.zarr", consolidated=False)
    assert era5.open_store(tmp_path / "a.zarr").sizes["time"] == 10


def test_open_store_fsspec_memory_url():
    ds = arco_style_ds(hours=3)
    ds.to_zarr("memory://gencast_rmmd_test/a.zarr", consolidated=False, mode="w")
    out = era5.open_store("memory://gencast_rmmd_test/a.zarr")
    assert out.sizes["time"] == 3


def test_store_id_reads_urls():
    ds = arco_style_ds(hours=2).assign_attrs({era5.STORE_ID_ATTR: "by-url"})
    ds.to_zarr("memory://gencast_rmmd_test/id.zarr", consolidated=False, mode="w")
    assert era5.store_id("memory://gencast_rmmd_test/id.zarr") == "by-url"
    assert era5.store_id("memory://gencast_rmmd_test/none.zarr") is None


def test_a_url_store_without_id_is_told_apart_by_its_metadata_object():
    """A store at a URL made by another tool (no store id, such as ARCO-ERA5) is fingerprinted
    by its metadata object's version (GCS generation, HTTP ETag; the time fsspec's memory
    filesystem wrote it here), so kept work is not reused after the store was re-written there;
    before, every such store was taken as unchanged (None). Reading it again gives the same."""
    url = "memory://gencast_rmmd_test/fp.zarr"
    arco_style_ds(hours=2).to_zarr(url, consolidated=False, mode="w")
    first = era5.store_fingerprint(url)
    assert first is not None and first.startswith("object:")
    assert era5.store_fingerprint(url) == first
    arco_style_ds(hours=3).to_zarr(url, consolidated=False, mode="w")
    assert era5.store_fingerprint(url) not in (None, first)
    assert era5.store_fingerprint("memory://gencast_rmmd_test/nothing.zarr") is None
    with_id = "memory://gencast_rmmd_test/id2.zarr"
    ds = arco_style_ds(hours=2).assign_attrs({era5.STORE_ID_ATTR: "by-url"})
    ds.to_zarr(with_id, consolidated=False, mode="w")
    assert era5.store_fingerprint(with_id) == "by-url"


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("where", ["url", "local"])
def test_a_store_without_id_appended_to_or_rewritten_is_told_apart(tmp_path, where, zarr_format):
    """A store without an id and without consolidated metadata is told apart after an append
    along time and after a re-write, locally and at a URL, in Zarr v2 and v3. A plain v2
    group's `.zgroup` is its root metadata (before, such a store was keyed by its path alone,
    so kept work computed on the shorter store was resumed); xarray re-writes it, as it does a
    v3 root `zarr.json`, on an append."""
    store = (
        f"memory://gencast_rmmd_test/append{zarr_format}.zarr"
        if where == "url"
        else str(tmp_path / "a.zarr")
    )
    ds = arco_style_ds(hours=4)
    ds.isel(time=slice(0, 2)).to_zarr(store, consolidated=False, mode="w", zarr_format=zarr_format)
    first = era5.store_fingerprint(store)
    assert first is not None
    assert era5.store_fingerprint(store) == first
    ds.isel(time=slice(2, 4)).to_zarr(store, consolidated=False, append_dim="time")
    appended = era5.store_fingerprint(store)
    assert appended not in (None, first)
    ds.to_zarr(store, consolidated=False, mode="w", zarr_format=zarr_format)
    assert era5.store_fingerprint(store) not in (None, first, appended)


def test_memory_urls_are_opened_without_storage_options(monkeypatch):
    """zarr 3.4 (what Python >= 3.12 installs) refuses `storage_options`, even `{}`, for a
    `memory://` URL, and `store_id` then read every such store as id-less. The rule is enforced
    here on whichever zarr is installed, so the Python 3.11 suite catches it too."""
    import zarr

    real = zarr.open_group

    def strict(store=None, *args, storage_options=None, **kwargs):
        if isinstance(store, str) and store.startswith("memory://") and storage_options is not None:
            raise TypeError("'storage_options' was provided but unused")
        return real(store, *args, storage_options=storage_options, **kwargs)

    ds = arco_style_ds(hours=2).assign_attrs({era5.STORE_ID_ATTR: "strict"})
    ds.to_zarr("memory://gencast_rmmd_test/strict.zarr", consolidated=False, mode="w")
    monkeypatch.setattr(zarr, "open_group", strict)
    assert era5.store_id("memory://gencast_rmmd_test/strict.zarr") == "strict"
    assert era5.open_store("memory://gencast_rmmd_test/strict.zarr").sizes["time"] == 2


def test_fill_sst_with_min():
    ds = era5.normalize_coords(arco_style_ds(hours=2))
    mins = xr.Dataset({"sea_surface_temperature": 271.0})
    out = era5.fill_sst(ds, mins)
    assert not np.isnan(out["sea_surface_temperature"].values).any()
    assert (out["sea_surface_temperature"].values == 271.0).sum() == np.isnan(
        ds["sea_surface_temperature"].values
    ).sum()


def test_full_gencast_config_on_arco_schema():
    """GenCast's 1 deg config end to end on a tiny ARCO-schema store (all variables, 37 levels)."""
    from gencast_rmmd.data.config import load_data_config
    from gencast_rmmd.data.examples import stack
    from gencast_rmmd.data.task import has_level, variable_kind

    cfg = load_data_config("gencast_1p0deg", overrides=["time_start=null", "time_stop=null"])
    rng = np.random.default_rng(0)
    hours = 30
    times = np.datetime64("2019-03-29T00", "ns") + np.arange(hours) * np.timedelta64(1, "h")
    lat = np.linspace(90, -90, 17)  # "0.25 deg with poles", descending
    lon = np.arange(32) * 360 / 32
    levels = np.array(
        [
            1,
            2,
            3,
            5,
            7,
            10,
            20,
            30,
            50,
            70,
            100,
            125,
            150,
            175,
            200,
            225,
            250,
            300,
            350,
            400,
            450,
            500,
            550,
            600,
            650,
            700,
            750,
            775,
            800,
            825,
            850,
            875,
            900,
            925,
            950,
            975,
            1000,
        ]
    )
    data = {}
    for v in sorted(set(cfg.task.input_variables) | set(cfg.task.target_variables)):
        if variable_kind(v) == "forcing" or v == "total_precipitation_12hr":
            continue
        if has_level(v):
            dims, shape = ("time", "level", "latitude", "longitude"), (hours, 37, 17, 32)
        else:
            dims, shape = ("time", "latitude", "longitude"), (hours, 17, 32)
        data[v] = (dims, rng.normal(size=shape).astype(np.float32))
    data["total_precipitation"] = (
        ("time", "latitude", "longitude"),
        rng.gamma(1, 1e-4, (hours, 17, 32)).astype(np.float32),
    )
    data["toa_incident_solar_radiation"] = (
        ("time", "latitude", "longitude"),
        np.zeros((hours, 17, 32), np.float32),
    )
    raw = xr.Dataset(
        data, coords={"time": times, "latitude": lat, "longitude": lon, "level": levels}
    )
    ds = era5.canonicalize(raw, cfg.task, grid=cfg.grid)
    assert ds.sizes["lat"] == 5 and ds.sizes["lon"] == 8 and ds.sizes["level"] == 13
    assert ds.lat.values.tolist() == [-90.0, -45.0, 0.0, 45.0, 90.0]
    want = np.array(["2019-03-29T12", "2019-03-30T00"], dtype="datetime64[ns]")
    np.testing.assert_array_equal(ds.time.values, want)  # 00 UTC day 1 lacks 12 h of precip
    assert "toa_incident_solar_radiation" not in ds and ds["land_sea_mask"].dims == ("lat", "lon")
    x = stack(ds.isel(time=[0, 1]), cfg.task.layout.inputs)
    assert x.shape == (5, 8, 176)  # + 88 noisy-target/forcing channels = 264


def test_content_store_id_follows_the_values_not_the_write(tmp_path):
    """A store written whole from memory (the nature run's `write_store`) is identified by its
    content: rebuilt bit-identically it keeps its id (what was made from it stays current), any
    changed value or attribute gives another, and the id survives a read and re-write."""
    from data_synthetic import canonical_store_ds

    from gencast_rmmd.data.nature_run import write_store

    ds = canonical_store_ds(n_times=4)
    first = era5.content_store_id(ds)
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert era5.content_store_id(ds.copy(deep=True)) == first
    assert era5.content_store_id(ds.assign_attrs({era5.STORE_ID_ATTR: "old"})) == first
    t2m = ds["2m_temperature"].values.copy()
    t2m[1, 2, 3] = np.nextafter(t2m[1, 2, 3], np.float32(np.inf))  # one value, one ulp
    assert (
        era5.content_store_id(ds.assign({"2m_temperature": (ds["2m_temperature"].dims, t2m)}))
        != first
    )
    assert era5.content_store_id(ds.assign_attrs(title="another run")) != first
    assert era5.content_store_id(ds.isel(time=slice(1, None))) != first

    path = write_store(ds, tmp_path / "a.zarr")
    assert era5.store_id(path) == first
    with era5.open_zarr_quiet(path) as back:
        again = write_store(back.load(), tmp_path / "b.zarr")
    assert era5.store_id(again) == first
    write_store(ds.assign(land_sea_mask=1 - ds["land_sea_mask"]), path, overwrite=True)
    assert era5.store_id(path) not in (None, first)
