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
