"""Stacking in GenCast's channel order, the example source and the grain loader."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from data_synthetic import SMALL_TASK, canonical_store_ds

from gencast_rmmd.data import examples as ex
from gencast_rmmd.data import normalization as nz
from gencast_rmmd.data import stats as st
from gencast_rmmd.data.task import gencast_task
from gencast_rmmd.errors import DataError


def _full_task_ds(n_lat=4, n_lon=8, seed=0):
    """Random data for GenCast's full task (13 levels), two input frames."""
    task = gencast_task()
    rng = np.random.default_rng(seed)
    times = np.array(["2020-01-01T00", "2020-01-01T12"], dtype="datetime64[ns]")
    coords = {
        "time": times,
        "level": np.array(task.pressure_levels),
        "lat": np.arange(n_lat) * 1.0,
        "lon": np.arange(n_lon) * 45.0,
    }
    data = {}
    for v in sorted(set(task.input_variables) | set(task.target_variables)):
        from gencast_rmmd.data.task import has_level, variable_kind

        kind = variable_kind(v)
        if kind == "static":
            data[v] = (("lat", "lon"), rng.normal(size=(n_lat, n_lon)).astype(np.float32))
        elif v.startswith("year_"):
            data[v] = (("time",), rng.normal(size=2).astype(np.float32))
        elif v.startswith("day_"):
            data[v] = (("time", "lon"), rng.normal(size=(2, n_lon)).astype(np.float32))
        elif has_level(v):
            data[v] = (
                ("time", "level", "lat", "lon"),
                rng.normal(size=(2, 13, n_lat, n_lon)).astype(np.float32),
            )
        else:
            data[v] = (
                ("time", "lat", "lon"),
                rng.normal(size=(2, n_lat, n_lon)).astype(np.float32),
            )
    return task, xr.Dataset(data, coords=coords)


def test_stack_full_gencast_inputs_order_and_roundtrip():
    task, ds = _full_task_ds()
    lay = task.layout
    x = ex.stack(ds, lay.inputs)
    assert x.shape == (4, 8, 176) and x.dtype == np.float32
    sl = lay.input_slices()
    # GenCast order: geopotential channels are time-major then level
    g = sl["geopotential"]
    np.testing.assert_array_equal(
        x[..., g.start], ds["geopotential"].isel(time=0).sel(level=50).values
    )
    np.testing.assert_array_equal(
        x[..., g.start + 13], ds["geopotential"].isel(time=1).sel(level=50).values
    )
    np.testing.assert_array_equal(
        x[..., g.start + 14], ds["geopotential"].isel(time=1).sel(level=100).values
    )
    # first channel is 10m_u at the older frame; statics once; year progress broadcast
    np.testing.assert_array_equal(x[..., 0], ds["10m_u_component_of_wind"].isel(time=0).values)
    np.testing.assert_array_equal(x[..., sl["land_sea_mask"].start], ds["land_sea_mask"].values)
    ys = sl["year_progress_sin"]
    assert np.all(x[..., ys.start] == ds["year_progress_sin"].values[0])
    dps = sl["day_progress_sin"]
    np.testing.assert_array_equal(x[0, :, dps.start + 1], ds["day_progress_sin"].values[1])
    back = ex.unstack(x, lay.inputs, ds.lat.values, ds.lon.values, times=ds.time.values)
    for v in ds.data_vars:
        if v == "total_precipitation_12hr":
            assert v not in back
            continue
        exp = ds[v]
        if v.startswith(("year_", "day_")):
            exp = exp.broadcast_like(ds["2m_temperature"]).transpose("time", "lat", "lon")
        np.testing.assert_array_equal(back[v].values, exp.values, err_msg=v)
    # the merged noisy-target block has 88 channels in sorted-name order (reference §3.4)
    assert lay.n_targets + lay.n_forcings == 88


def test_unstack_stack_targets_with_batch():
    task, ds = _full_task_ds()
    lay = task.layout
    rng = np.random.default_rng(1)
    y = rng.normal(size=(3, 4, 8, lay.n_targets)).astype(np.float32)
    d = ex.unstack(y, lay.targets, ds.lat.values, ds.lon.values)
    assert d["temperature"].dims == ("batch", "time", "level", "lat", "lon")
    for b in range(3):
        np.testing.assert_array_equal(ex.stack(d.isel(batch=b), lay.targets), y[b])


@pytest.fixture
def store_and_stats(tmp_path):
    ds = canonical_store_ds(n_times=12)
    ds = ds.isel(time=[i for i in range(12) if i != 8])  # a gap
    path = tmp_path / "s.zarr"
    ds.to_zarr(
        path,
        consolidated=False,
        encoding={
            v: {"chunks": tuple(1 if d == "time" else ds[v].sizes[d] for d in ds[v].dims)}
            for v in ds.data_vars
        },
    )
    stats = st.compute_stats(ds)
    st.save_stats(stats, tmp_path / "stats")
    return path, ds, stats, tmp_path / "stats"


def test_valid_init_times_respect_gaps(store_and_stats):
    _, ds, _, _ = store_and_stats
    t = ex.valid_init_times(ds.time.values, SMALL_TASK)
    # times 0..11 without 8: init t needs t-12h and t+12h -> 1..6 and 10 (9 lacks 8; 7 lacks 8)
    idx = [int((x - ds.time.values[0]) / np.timedelta64(12, "h")) for x in t]
    assert idx == [1, 2, 3, 4, 5, 6, 10]


def test_example_source_matches_manual_normalization(store_and_stats):
    path, ds, stats, stats_dir = store_and_stats
    src = ex.ExampleSource(path, SMALL_TASK, stats_dir)
    assert len(src) == 7
    item = src[2]
    lay = SMALL_TASK.layout
    assert item["inputs"].shape == (8, 16, lay.n_inputs) and item["inputs"].dtype == np.float32
    assert item["forcings"].shape == (8, 16, lay.n_forcings)
    assert item["targets"].shape == (8, 16, lay.n_targets)
    t0 = src.init_times[2]
    assert item["time"] == t0.astype(np.int64)
    sst_min = float(stats["min"]["sea_surface_temperature"])
    inp, forc, tgt = ex.physical_window(ds, SMALL_TASK, t0, 1, sst_fill=sst_min)
    norm = nz.NormalizationArrays.from_stats(stats, lay)
    np.testing.assert_allclose(item["inputs"], nz.normalize_inputs(norm, inp), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        item["forcings"], nz.normalize_forcings(norm, forc[0]), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        item["targets"], nz.residual_targets(norm, tgt[0], inp), rtol=1e-4, atol=1e-4
    )
    assert np.all(np.isfinite(item["inputs"])) and np.all(np.isfinite(item["targets"]))
    # the residual of temperature at 850: (T(t+12h) - T(t)) / diffs_std
    k = lay.targets.index(("temperature", 0, 850))
    t_next = ds["temperature"].sel(time=t0 + np.timedelta64(12, "h"), level=850).values
    t_now = ds["temperature"].sel(time=t0, level=850).values
    exp = (t_next - t_now) / float(stats["diffs_stddev"]["temperature"].sel(level=850))
    np.testing.assert_allclose(item["targets"][..., k], exp, rtol=1e-4, atol=1e-4)


def test_physical_window_lead_steps(store_and_stats):
    _, ds, _, _ = store_and_stats
    t0 = ds.time.values[1]
    inp, forc, tgt = ex.physical_window(ds, SMALL_TASK, t0, 3)
    assert forc.shape[0] == 3 and tgt.shape[0] == 3
    k = SMALL_TASK.layout.targets.index(("2m_temperature", 0, None))
    np.testing.assert_array_equal(tgt[2, ..., k], ds["2m_temperature"].values[4])
    with pytest.raises(DataError, match="not in the store"):
        ex.physical_window(ds, SMALL_TASK, ds.time.values[5], 4)  # crosses the gap


def test_loader_deterministic_resumable_and_sharded(store_and_stats):
    path, _, _, stats_dir = store_and_stats
    src = ex.ExampleSource(path, SMALL_TASK, stats_dir)
    loader = ex.make_loader(src, batch_size=2, seed=7, num_threads=2)
    it = iter(loader)
    first = [next(it)["time"].tolist() for _ in range(6)]
    assert all(len(b) == 2 for b in first)
    again = iter(ex.make_loader(src, batch_size=2, seed=7, num_threads=2))
    assert [next(again)["time"].tolist() for _ in range(6)] == first
    other = iter(ex.make_loader(src, batch_size=2, seed=8, num_threads=2))
    assert [next(other)["time"].tolist() for _ in range(6)] != first
    # each epoch of 7 examples covers every init time once (first 3 batches = 6 distinct)
    assert len(set(sum(first[:3], []))) == 6
    # resume from a saved state gives exactly the same continuation
    it = iter(ex.make_loader(src, batch_size=2, seed=7, num_threads=2))
    for _ in range(3):
        next(it)
    state = it.get_state()
    cont = [next(it)["time"].tolist() for _ in range(3)]
    it2 = iter(ex.make_loader(src, batch_size=2, seed=7, num_threads=2))
    it2.set_state(state)
    assert [next(it2)["time"].tolist() for _ in range(3)] == cont == first[3:6]
    b = next(it2)
    assert b["inputs"].shape == (2, 8, 16, SMALL_TASK.layout.n_inputs)


def test_example_source_by_url_reads_the_same_examples(store_and_stats):
    """A store by URL (memory:// here) serves the examples the same store on disk does, its
    variables fetched concurrently (each read is a round trip to an object store), also after
    pickling into a loader worker."""
    import pickle

    path, ds, _, stats_dir = store_and_stats
    url = "memory://gencast_rmmd_examples_test/s.zarr"
    xr.open_zarr(path, consolidated=False).to_zarr(url, consolidated=False, mode="w")
    local = ex.ExampleSource(path, SMALL_TASK, stats_dir)
    remote = pickle.loads(pickle.dumps(ex.ExampleSource(url, SMALL_TASK, stats_dir)))
    assert remote.store == url and len(remote) == len(local) > 2
    for i in range(len(local)):
        a, b = local[i], remote[i]
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{i}/{k}")
    assert remote._executor is not None and local._executor is None


def test_example_source_errors(store_and_stats, tmp_path):
    path, ds, _, stats_dir = store_and_stats
    with pytest.raises(DataError, match="does not exist"):
        ex.ExampleSource(tmp_path / "missing.zarr", SMALL_TASK, stats_dir)
    with pytest.raises(DataError, match="does not exist or is not readable"):
        ex.ExampleSource("memory://gencast_rmmd_missing/a.zarr", SMALL_TASK, stats_dir)
    ds.isel(time=slice(0, 4)).to_netcdf(tmp_path / "a.nc")
    with pytest.raises(DataError, match="is a file; training reads a canonical Zarr store"):
        ex.ExampleSource(tmp_path / "a.nc", SMALL_TASK, stats_dir)
    with pytest.raises(DataError, match="lack their input/target"):
        ex.ExampleSource(path, SMALL_TASK, stats_dir, times=[ds.time.values[7]])


def test_loader_shards_are_disjoint_and_cover(store_and_stats):
    path, _, _, stats_dir = store_and_stats
    src = ex.ExampleSource(path, SMALL_TASK, stats_dir)
    seen = []
    for i in range(2):
        it = iter(ex.make_loader(src, 1, seed=3, num_epochs=1, shard=(i, 2), num_threads=1))
        seen.append([int(b["time"][0]) for b in it])
    assert len(seen[0]) == len(seen[1]) == 3  # 7 examples, remainder dropped
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) <= set(src.init_times.astype(np.int64).tolist())


def test_local_cache_gives_identical_examples(store_and_stats, tmp_path):
    path, _, _, stats_dir = store_and_stats
    plain = ex.ExampleSource(path, SMALL_TASK, stats_dir)
    cached = ex.ExampleSource(path, SMALL_TASK, stats_dir, local_cache=tmp_path / "cache")
    for i in (0, 3, 6):
        a, b = plain[i], cached[i]
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert len(list((tmp_path / "cache").glob("examples-*/*.npy"))) == 5  # timed, lat-having vars
    again = ex.ExampleSource(path, SMALL_TASK, stats_dir, local_cache=tmp_path / "cache")
    np.testing.assert_array_equal(again[2]["targets"], plain[2]["targets"])


def test_a_store_re_made_replaces_its_local_copy(store_and_stats, tmp_path):
    """The copy of a store's earlier state is deleted when a copy of its new state is made (no
    key names it again); copies of other stores stay; a source still reading the old copy keeps
    its memory maps."""
    import json
    import shutil

    from gencast_rmmd.data.era5 import STORE_ID_ATTR

    path, ds, _, stats_dir = store_and_stats
    cache = tmp_path / "cache"
    old = ex.ExampleSource(path, SMALL_TASK, stats_dir, local_cache=cache)
    before = old[3]
    (first,) = cache.glob("examples-*")
    record = json.loads((first / ex.EXAMPLES_RECORD).read_text())
    assert record["store"] == str(path.absolute()) and record["store_id"] is None
    other_path = tmp_path / "other.zarr"
    shutil.copytree(path, other_path)
    ex.ExampleSource(other_path, SMALL_TASK, stats_dir, local_cache=cache)[0]  # copies it
    assert len(list(cache.glob("examples-*"))) == 2

    remade = (ds + 1.0).assign_attrs({STORE_ID_ATTR: "remade"})
    shutil.rmtree(path)
    remade.to_zarr(path, consolidated=False)
    new = ex.ExampleSource(path, SMALL_TASK, stats_dir, local_cache=cache)
    new[0]
    copies = sorted(cache.glob("examples-*"))
    assert first not in copies and len(copies) == 2  # the new state's copy and other.zarr's
    records = [json.loads((c / ex.EXAMPLES_RECORD).read_text()) for c in copies]
    assert sorted((r["store"], r["store_id"]) for r in records) == sorted(
        [(str(path.absolute()), "remade"), (str(other_path.absolute()), None)]
    )
    plain_new = ex.ExampleSource(path, SMALL_TASK, stats_dir)
    np.testing.assert_array_equal(new[3]["inputs"], plain_new[3]["inputs"])
    assert not np.array_equal(new[3]["inputs"], before["inputs"])
    for k, v in old[3].items():  # the deleted copy's memory maps still read
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_store_without_id_re_written_is_copied_again(store_and_stats, tmp_path, zarr_format):
    """A store made by another tool (no store id) and re-written at the same path with other
    values is copied again, in Zarr v2 (consolidated `.zmetadata`) as in v3. Before, a copy's key
    held the v3 `zarr.json` time only, so a v2 store's old copy was read silently."""
    import shutil

    _, ds, _, stats_dir = store_and_stats
    other = tmp_path / f"v{zarr_format}.zarr"
    ds.to_zarr(other, consolidated=zarr_format == 2, zarr_format=zarr_format)
    cache = tmp_path / "cache"
    before = ex.ExampleSource(other, SMALL_TASK, stats_dir, local_cache=cache)[3]
    shutil.rmtree(other)
    (ds + 1.0).to_zarr(other, consolidated=zarr_format == 2, zarr_format=zarr_format)
    after = ex.ExampleSource(other, SMALL_TASK, stats_dir, local_cache=cache)[3]
    plain = ex.ExampleSource(other, SMALL_TASK, stats_dir)[3]
    np.testing.assert_array_equal(after["inputs"], plain["inputs"])
    assert not np.array_equal(after["inputs"], before["inputs"])
    assert len(list(cache.glob("examples-*"))) == 1  # the earlier state's copy was removed


def test_resolve_local_cache_auto_off_and_path(store_and_stats, tmp_path, monkeypatch):
    path, _, _, stats_dir = store_and_stats
    src = ex.ExampleSource(path, SMALL_TASK, stats_dir)
    copy = ex.ExampleSource(path, SMALL_TASK, stats_dir, local_cache=tmp_path / "copy")
    copy[0]  # writes the memory-mapped copy
    written = sum(np.load(f, mmap_mode="r").nbytes for f in tmp_path.glob("copy/examples-*/*.npy"))
    assert src.cache_bytes() == written > 0
    monkeypatch.delenv("GENCAST_RMMD_EXAMPLES_CACHE", raising=False)
    monkeypatch.setenv("GENCAST_RMMD_CACHE", str(tmp_path / "c"))
    assert ex.resolve_local_cache("auto", src) == str(tmp_path / "c" / "examples")
    monkeypatch.setenv("GENCAST_RMMD_EXAMPLES_CACHE", str(tmp_path / "e"))
    assert ex.resolve_local_cache("auto", src) == str(tmp_path / "e")
    assert ex.resolve_local_cache("off", src) is None
    assert ex.resolve_local_cache(None, src) is None
    assert ex.resolve_local_cache(str(tmp_path / "mine"), src) == str(tmp_path / "mine")
    monkeypatch.setattr(ex, "LOCAL_CACHE_AUTO_MAX_BYTES", src.cache_bytes() - 1)
    assert ex.resolve_local_cache("auto", src) is None  # too big for an automatic copy


@pytest.mark.parametrize("layout", ["6-hourly", "descending"])
def test_examples_read_the_times_of_their_init_time(layout, tmp_path):
    """Inputs at t - 12 h and t, forcings and targets at t + 12 h, found by timestamp: on a
    6-hourly store they are not neighbouring positions, on a descending one they run backwards."""
    ds = canonical_store_ds(n_times=10)
    if layout == "6-hourly":
        ds = ds.assign_coords(time=ds.time.values[0] + np.arange(10) * np.timedelta64(6, "h"))
    else:
        ds = ds.isel(time=slice(None, None, -1))
    path = tmp_path / "s.zarr"
    ds.to_zarr(path, consolidated=False)
    st.save_stats(st.compute_stats(ds), tmp_path / "stats")
    plain = ex.ExampleSource(path, SMALL_TASK, tmp_path / "stats")
    copy = ex.ExampleSource(path, SMALL_TASK, tmp_path / "stats", local_cache=tmp_path / "c")
    assert len(plain) == (6 if layout == "6-hourly" else 8)
    for k in range(len(plain)):
        want = ex.physical_window(ds, SMALL_TASK, plain.init_times[k], 1, plain.sst_fill)
        for src in (plain, copy):
            inputs, forcings, targets = src.read_physical(k)
            np.testing.assert_array_equal(inputs, want[0], err_msg=f"{k}")
            np.testing.assert_array_equal(forcings, want[1][0], err_msg=f"{k}")
            np.testing.assert_array_equal(targets, want[2][0], err_msg=f"{k}")


def test_stats_lacking_a_level_of_the_task_name_it(tmp_path):
    """Statistics made for other levels: one DataError naming the stats dir, the variable and
    the level (the same lookup serves the forecast's normalization)."""
    import dataclasses

    path = tmp_path / "s.zarr"
    canonical_store_ds(levels=(500, 700, 850)).to_zarr(path, consolidated=False)
    st.save_stats(st.compute_stats(canonical_store_ds(levels=(500, 850))), tmp_path / "stats")
    task = dataclasses.replace(SMALL_TASK, pressure_levels=(500, 700, 850))
    with pytest.raises(DataError, match=r"no level 700 hPa for 'temperature' \(levels found: "):
        ex.ExampleSource(path, task, tmp_path / "stats")
    with pytest.raises(DataError, match=f"stats dir '{tmp_path / 'stats'}' does not cover the"):
        ex.ExampleSource(path, task, tmp_path / "stats")


def test_statistics_of_another_step_are_refused(store_and_stats, tmp_path):
    """12 h differences normalise a 24 h task's residuals about twice too small; the stats record
    their step (`data stats --step-hours`) and a task of another step is refused by name, in
    training (ExampleSource) and forecasting (norm_from_stats_dir) alike. Files without the
    record (DeepMind's) are taken as made for the task."""
    import dataclasses

    import xarray as xr

    from gencast_rmmd.forecast.model import norm_from_stats_dir

    path, _, stats, stats_dir = store_and_stats
    assert xr.open_dataset(stats_dir / "diffs_stddev_by_level.nc").attrs == {st.DIFF_STEP_ATTR: 12}
    task24 = dataclasses.replace(SMALL_TASK, step_hours=24)
    want = r"holds 12 h differences, but the task steps 24 h; .*data stats --step-hours 24"
    with pytest.raises(DataError, match=want):
        ex.ExampleSource(path, task24, stats_dir)
    with pytest.raises(DataError, match=want):
        norm_from_stats_dir(str(stats_dir), task24)
    stats24 = st.compute_stats(xr.open_zarr(path, consolidated=False), step_hours=24)
    assert stats24["diffs_stddev"].attrs[st.DIFF_STEP_ATTR] == 24
    assert ex.ExampleSource(path, task24, stats24).norm is not None
    unrecorded = {k: v.copy() for k, v in stats.items()}
    unrecorded["diffs_stddev"].attrs = {}
    assert ex.ExampleSource(path, task24, unrecorded).norm is not None


def test_a_store_with_no_example_of_the_task_names_its_spacing(store_and_stats):
    """A 6 h task on a 12-hourly store (statistics without a step record): no init time has its
    frames 6 h apart; named with the store's spacing (was "holds 0 init times" from the trainer)."""
    import dataclasses

    path, _, stats, _ = store_and_stats
    unrecorded = {k: v.copy() for k, v in stats.items()}
    unrecorded["diffs_stddev"].attrs = {}
    task6 = dataclasses.replace(SMALL_TASK, step_hours=6)
    want = r"holds no example of the task: none of its 11 times .* 6 h apart .*spacing: 12 h, 24 h"
    with pytest.raises(DataError, match=want):
        ex.ExampleSource(path, task6, unrecorded)


def test_data_in_other_units_than_the_statistics_are_refused(store_and_stats, tmp_path):
    """A store whose fields are in other units than its statistics (deg C for K, hPa for Pa):
    the trainers' and the forecast's check (`normalization.units_problem`) names the field; the
    store the statistics describe passes (its fields lie within a few stddevs). (hPa: the
    temperature divided by 100 stands in, this store has no pressure field.)"""
    from gencast_rmmd.errors import DataError

    path, ds, _, stats_dir = store_and_stats
    ex.ExampleSource(str(path), SMALL_TASK, stats_dir).check_units()
    for name, change in (("2m_temperature", -273.15), ("temperature", None)):
        other = ds.copy()
        other[name] = other[name] + change if change is not None else other[name] / 100.0
        out = tmp_path / f"{name}.zarr"
        other.to_zarr(out, consolidated=False)
        source = ex.ExampleSource(str(out), SMALL_TASK, stats_dir)
        with pytest.raises(
            DataError, match=rf"'{name}'( at \d+ hPa)? has a global mean of .* other units"
        ):
            source.check_units()
