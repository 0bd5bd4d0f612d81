"""Streaming statistics against brute-force numpy."""

from __future__ import annotations

import numpy as np
import pytest
from data_synthetic import canonical_store_ds

from gencast_rmmd.data import stats as st
from gencast_rmmd.errors import DataError


def _brute(ds, name, level=None):
    x = ds[name]
    if level is not None:
        x = x.sel(level=level)
    return np.asarray(x.values, np.float64)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_stats_match_brute_force(chunk_size):
    ds = canonical_store_ds(n_times=11)
    # a gap: drop one time so that the pair across it does not count
    ds = ds.isel(time=[i for i in range(11) if i != 6])
    s = st.compute_stats(ds, chunk_size=chunk_size)
    t = _brute(ds, "temperature", 850)
    np.testing.assert_allclose(s["mean"]["temperature"].sel(level=850), t.mean(), rtol=1e-10)
    np.testing.assert_allclose(s["stddev"]["temperature"].sel(level=850), t.std(), rtol=1e-8)
    np.testing.assert_allclose(s["min"]["temperature"].sel(level=850), t.min())
    times = ds.time.values
    ok = np.nonzero(np.diff(times) == np.timedelta64(12, "h"))[0]
    assert len(ok) == 8  # 9 consecutive pairs minus the gap
    d = t[ok + 1] - t[ok]
    np.testing.assert_allclose(s["diffs_stddev"]["temperature"].sel(level=850), d.std(), rtol=1e-8)
    # SST: NaNs skipped
    sst = _brute(ds, "sea_surface_temperature")
    np.testing.assert_allclose(s["mean"]["sea_surface_temperature"], np.nanmean(sst), rtol=1e-10)
    np.testing.assert_allclose(s["min"]["sea_surface_temperature"], np.nanmin(sst))
    # forcings get stats over (time, lon); statics have zero diffs stddev
    dps = _brute(ds, "day_progress_sin")
    np.testing.assert_allclose(s["stddev"]["day_progress_sin"], dps.std(), rtol=1e-6)
    assert float(s["diffs_stddev"]["land_sea_mask"]) == 0.0
    assert s["mean"]["temperature"].dims == ("level",) and s["mean"]["2m_temperature"].dims == ()


def test_merge_is_order_independent():
    ds = canonical_store_ds(n_times=9)
    parts = [st.chunk_moments(ds.isel(time=slice(i, i + 3))) for i in (0, 3, 6)]
    a = st.merge_moments(st.merge_moments(parts[0], parts[1]), parts[2])
    b = st.merge_moments(parts[2], st.merge_moments(parts[1], parts[0]))
    for k in a.mean:
        np.testing.assert_allclose(a.mean[k], b.mean[k], rtol=1e-12)
        np.testing.assert_allclose(a.m2[k], b.m2[k], rtol=1e-10)


def test_save_load_roundtrip(tmp_path):
    s = st.compute_stats(canonical_store_ds(n_times=5))
    st.save_stats(s, tmp_path / "stats")
    back = st.load_stats(tmp_path / "stats")
    assert set(back) == {"mean", "stddev", "diffs_stddev", "min"}
    for k in s:
        for v in s[k].data_vars:
            np.testing.assert_allclose(back[k][v].values, s[k][v].values)
    assert back["mean"]["temperature"].level.dtype == np.int64
    assert sorted(p.name for p in (tmp_path / "stats").iterdir()) == sorted(st.STATS_FILES.values())


def test_load_stats_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        st.load_stats(tmp_path / "none")
    (tmp_path / "partial").mkdir()
    with pytest.raises(DataError, match="lacks"):
        st.load_stats(tmp_path / "partial")


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("layout", ["6-hourly", "descending"])
def test_diffs_pair_times_by_timestamp(layout, chunk_size):
    """x(t + 12 h) - x(t) over the pairs of times 12 h apart, whatever the store's spacing or
    order: a 6-hourly store pairs times two apart, a descending one neighbours in reverse."""
    ds = canonical_store_ds(n_times=14)
    if layout == "6-hourly":
        t6 = ds.time.values[0] + np.arange(14) * np.timedelta64(6, "h")
        ds = ds.assign_coords(time=t6)
    else:
        ds = ds.isel(time=slice(None, None, -1))
    s = st.compute_stats(ds, chunk_size=chunk_size)
    t = ds.sortby("time")["temperature"].sel(level=500).values.astype(np.float64)
    d = t[2:] - t[:-2] if layout == "6-hourly" else t[1:] - t[:-1]
    assert len(d) == (12 if layout == "6-hourly" else 13)
    np.testing.assert_allclose(s["diffs_stddev"]["temperature"].sel(level=500), d.std(), rtol=1e-8)
    np.testing.assert_allclose(s["stddev"]["temperature"].sel(level=500), t.std(), rtol=1e-8)


def test_diff_windows_count_every_pair_once():
    """Blocks read from `difference_windows` and cut at `block_start` give every pair once."""
    times = np.datetime64("2020-01-01T00", "ns") + np.timedelta64(6, "h") * np.array(
        [0, 1, 2, 3, 5, 6, 8, 9, 10, 12]
    )
    earlier, later = st.difference_pairs(times, 12)
    pairs = [(int(a), int(b)) for a, b in zip(earlier, later)]
    assert pairs == [(0, 2), (1, 3), (3, 4), (5, 6), (6, 8), (8, 9)]
    ds = canonical_store_ds(n_times=len(times)).assign_coords(time=times)
    whole = st.time_differences(ds)
    for block in (1, 2, 3, 4):
        parts = []
        windows = st.difference_windows(times, block, 12)
        assert [a for a, _ in windows] == list(range(0, len(times), block))
        for start, lo in windows:
            window = ds.isel(time=slice(lo, start + block))
            parts.append(st.time_differences(window, block_start=start - lo))
        np.testing.assert_array_equal(
            np.concatenate([p["temperature"].values for p in parts]), whole["temperature"].values
        )


def test_stats_without_a_pair_of_times_one_step_apart_are_an_error():
    """Times 24 h apart have no 12 h difference: not a stddev of 0 (silently unit scale). It is
    refused when the blocks are planned (`difference_windows`, also the Beam path's), naming the
    step and the store's spacing; it was the same error only after every block had been read."""
    ds = canonical_store_ds(n_times=6).isel(time=[0, 2, 4])
    with pytest.raises(
        DataError, match=r"no two times of the store are 12 h apart .*spacing: 24 h$"
    ):
        st.compute_stats(ds)
    assert float(st.compute_stats(ds, step_hours=24)["diffs_stddev"]["2m_temperature"]) > 0
    with pytest.raises(DataError, match=r"are 7 h apart .*spacing: 24 h$"):
        st.difference_windows(ds["time"].values, 4, 7)
    with pytest.raises(DataError, match=r"12 h apart .*spacing: none \(1 time\)$"):
        st.difference_windows(ds["time"].values[:1], 4, 12)
