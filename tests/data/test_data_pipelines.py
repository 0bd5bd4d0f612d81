"""Prepare and stats pipelines (Beam, in-process runner) on small synthetic stores."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
from data_synthetic import SMALL_TASK, arco_style_ds, canonical_store_ds

from gencast_rmmd.data import stats as st
from gencast_rmmd.data.config import DataConfig, GridConfig
from gencast_rmmd.data.era5 import store_id
from gencast_rmmd.data.validate import validate_store
from gencast_rmmd.errors import DataError, OutputError
from pipelines.prepare import prepare
from pipelines.stats import compute_stats_beam


@pytest.fixture
def arco_store(tmp_path):
    ds = arco_style_ds(hours=96, n_lat=9, n_lon=16)
    path = tmp_path / "arco.zarr"
    ds.chunk({"time": 24}).to_zarr(path, consolidated=False)
    return str(path), ds


def _cfg(**kw):
    return DataConfig(task=SMALL_TASK, source="unused", **kw)


def test_prepare_arco_style_store(arco_store, tmp_path):
    src, raw = arco_store
    out = tmp_path / "canon.zarr"
    summary = prepare(
        src, _cfg(grid=GridConfig(method="subsample", subsample_factor=2)), out, steps_per_item=3
    )
    assert summary["status"] == "complete"
    validate_store(out, SMALL_TASK)
    # The finished store carries consolidated metadata: a plain open_zarr needs no fallback
    # (which xarray announces with a RuntimeWarning) and sees the final attributes.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ds = xr.open_zarr(out, consolidated=True)
    assert ds.attrs["gencast_rmmd_prepare"] == "complete"
    assert ds["temperature"].encoding["chunks"][0] == 1  # one time step per chunk
    assert ds.sizes["time"] == 7  # 12 UTC day 1 .. 12 UTC day 4 (00 UTC day 1 lacks precip history)
    assert ds.lat.values.tolist() == [-90.0, -45.0, 0.0, 45.0, 90.0]
    assert "specific_humidity" not in ds and "total_precipitation_12hr" in ds
    t = np.datetime64("2020-01-02T12", "ns")
    src_n = raw.rename(latitude="lat", longitude="lon").isel(lat=slice(None, None, -1))
    np.testing.assert_array_equal(
        ds["temperature"].sel(time=t, level=850).values,
        src_n["temperature"].sel(time=t, level=850).values[::2, ::2],
    )
    i = int(np.nonzero(src_n.time.values == t)[0][0])
    np.testing.assert_allclose(
        ds["total_precipitation_12hr"].sel(time=t).values,
        src_n["total_precipitation"].values[i - 11 : i + 1].sum(0)[::2, ::2],
        rtol=1e-5,
    )
    # a second run is a no-op, except that it consolidates a store whose run crashed just after
    # marking it complete (simulated by dropping the consolidated metadata)
    meta = json.loads((out / "zarr.json").read_text())
    assert meta.pop("consolidated_metadata")
    (out / "zarr.json").write_text(json.dumps(meta))
    assert (
        prepare(src, _cfg(grid=GridConfig(method="subsample", subsample_factor=2)), out)["status"]
        == "already complete"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert xr.open_zarr(out, consolidated=True).attrs["gencast_rmmd_prepare"] == "complete"


def test_prepare_resumes_after_crash_without_rewriting(arco_store, tmp_path):
    src, _ = arco_store
    out = tmp_path / "canon.zarr"
    cfg = _cfg()
    first = prepare(src, cfg, out, steps_per_item=2, max_items=2)
    assert first["status"] == "incomplete"
    made = store_id(out)
    assert made is not None
    with pytest.raises(DataError, match="incomplete"):
        validate_store(out, SMALL_TASK)
    chunk = next((out / "temperature").rglob("c/0/*/*/*"))
    mtime = chunk.stat().st_mtime_ns
    second = prepare(src, cfg, out, steps_per_item=2)
    assert second["status"] == "complete" and second["resumed"]
    assert second["blocks_skipped"] == 2 and second["blocks_written"] == 2
    assert chunk.stat().st_mtime_ns == mtime  # finished chunks were not rewritten
    assert store_id(out) == made  # resumed: the same store
    validate_store(out, SMALL_TASK)
    full = xr.open_zarr(out).load()
    fresh = tmp_path / "fresh.zarr"
    prepare(src, cfg, fresh, steps_per_item=8)
    xr.testing.assert_identical(full.drop_attrs(), xr.open_zarr(fresh).load().drop_attrs())
    assert store_id(fresh) not in (None, made)  # made anew: another id


def test_prepare_resumed_with_other_blocks_writes_every_time(arco_store, tmp_path):
    """Markers name the times they cover: a run resumed with another `steps_per_item` writes
    every block not wholly written (a larger block that an old, shorter one only began) and
    skips the ones that are, so the completed store has every time."""
    src, _ = arco_store
    fresh = tmp_path / "fresh.zarr"
    prepare(src, _cfg(), fresh)
    want = xr.open_zarr(fresh).load().drop_attrs()
    larger = tmp_path / "larger.zarr"
    assert prepare(src, _cfg(), larger, steps_per_item=2, max_items=1)["status"] == "incomplete"
    resumed = prepare(src, _cfg(), larger, steps_per_item=4)  # [0, 4) only half written
    assert resumed["status"] == "complete" and resumed["blocks_written"] == 2
    xr.testing.assert_identical(xr.open_zarr(larger).load().drop_attrs(), want)
    smaller = tmp_path / "smaller.zarr"
    assert prepare(src, _cfg(), smaller, steps_per_item=4, max_items=1)["status"] == "incomplete"
    resumed = prepare(src, _cfg(), smaller, steps_per_item=2)  # [0, 2) and [2, 4) are written
    assert resumed["blocks_skipped"] == 2 and resumed["blocks_written"] == 2
    xr.testing.assert_identical(xr.open_zarr(smaller).load().drop_attrs(), want)


def test_prepare_resumes_a_store_begun_when_token_defaulted_to_anon(arco_store, tmp_path):
    """A config without `token` (now: fsspec's configuration, else anonymous) has the key that
    it had when `token` defaulted to "anon", so a store begun then is resumed, not refused."""
    import dataclasses

    from pipelines.prepare import KEY_ATTR, PrepareSpec, _fingerprint, _open

    src, _ = arco_store
    out = tmp_path / "canon.zarr"
    assert _cfg().token is None
    old = PrepareSpec(src, dataclasses.replace(_cfg(), token="anon"), str(out), 2)
    assert prepare(src, _cfg(), out, steps_per_item=2, max_items=1)["status"] == "incomplete"
    assert xr.open_zarr(out, consolidated=False).attrs[KEY_ATTR] == _fingerprint(old, _open(old))
    assert prepare(src, _cfg(), out, steps_per_item=2)["status"] == "complete"


def test_prepare_writes_and_resumes_a_store_by_url(arco_store, tmp_path, monkeypatch):
    """`--out` may be a URL (gs:// on Dataflow, where workers share no disk; memory:// here): the
    store and its progress markers go through fsspec, a crashed run resumes there, and the
    result equals the store prepared on disk."""
    import fsspec

    src, _ = arco_store
    monkeypatch.chdir(tmp_path)
    url = "memory://gencast_rmmd_prepare_test/canon.zarr"
    fs = fsspec.filesystem("memory")
    first = prepare(src, _cfg(), url, steps_per_item=2, max_items=2)
    assert first["status"] == "incomplete"
    assert len(fs.ls(url + ".prepare-progress")) == 2
    assert not (tmp_path / "memory:").exists()  # nothing landed on local disk
    second = prepare(src, _cfg(), url, steps_per_item=2)
    assert second["resumed"] and second["blocks_skipped"] == 2 and second["blocks_written"] == 2
    assert second["status"] == "complete" and not fs.exists(url + ".prepare-progress")
    validate_store(url, SMALL_TASK)
    assert prepare(src, _cfg(), url, steps_per_item=2)["status"] == "already complete"
    local = tmp_path / "local.zarr"
    prepare(src, _cfg(), local, steps_per_item=8)
    xr.testing.assert_identical(
        xr.open_zarr(url).load().drop_attrs(), xr.open_zarr(local).load().drop_attrs()
    )


def test_prepare_refuses_foreign_output(arco_store, tmp_path):
    src, _ = arco_store
    out = tmp_path / "other.zarr"
    canonical_store_ds().to_zarr(out, consolidated=False)
    with pytest.raises(OutputError, match="overwrite"):
        prepare(src, _cfg(), out)
    assert store_id(out) is None  # not a store gencast-rmmd made
    assert prepare(src, _cfg(), out, overwrite=True)["status"] == "complete"
    made = store_id(out)
    assert made is not None
    prepare(src, _cfg(), out, overwrite=True)
    assert store_id(out) not in (None, made)  # re-made at the same path: another id


def test_stats_pipeline_matches_in_process(small_store, tmp_path):
    path, ds = small_store
    ds = ds.isel(time=[i for i in range(12) if i != 4])
    path = tmp_path / "gap.zarr"
    ds.to_zarr(path, consolidated=False)
    _assert_same_stats(compute_stats_beam(path, tmp_path / "stats", block=3), st.compute_stats(ds))
    assert sorted(p.name for p in (tmp_path / "stats").iterdir()) == sorted(st.STATS_FILES.values())


def _fails_after(real, n: int, error: Exception):
    """`real` that raises `error` from its (n + 1)-th call on, and the list its calls append to."""
    calls: list[int] = []

    def wrapper(x):
        calls.append(1)
        if len(calls) > n:
            raise error
        return real(x)

    return wrapper, calls


def test_stats_pipeline_resumes_from_its_kept_blocks(small_store, tmp_path, monkeypatch, capsys):
    """A crash lost every block reduced so far. Each block's moments are now kept beside the
    output until the files are written: the re-run reads only the other blocks, says so, writes
    the bytes of an uninterrupted run, and removes what it kept."""
    from gencast_rmmd.safety import file_sha256

    path, ds = small_store  # 12 times: 4 value blocks and 4 difference windows of 3
    compute_stats_beam(path, tmp_path / "ref", block=3)
    real = st.chunk_moments
    crashing, calls = _fails_after(real, 3, RuntimeError("simulated crash"))
    monkeypatch.setattr(st, "chunk_moments", crashing)
    with pytest.raises(Exception, match="simulated crash"):
        compute_stats_beam(path, tmp_path / "stats", block=3)
    (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith(".stats.stats-blocks-")]
    done = len(list(kept.glob("*.npz")))
    assert 1 <= done <= 3
    calls.clear()
    monkeypatch.setattr(st, "chunk_moments", lambda x: (calls.append(1), real(x))[1])
    capsys.readouterr()
    compute_stats_beam(path, tmp_path / "stats", block=3)
    assert len(calls) == 8 - done + 1  # + the statics, reduced as the files are written
    assert f"data stats: resuming, {done} of 8 blocks already reduced" in capsys.readouterr().err
    for name in st.STATS_FILES.values():
        assert file_sha256(tmp_path / "stats" / name) == file_sha256(tmp_path / "ref" / name)
    assert not kept.exists()


def test_stats_input_error_mid_run_says_what_is_kept(small_store, tmp_path, monkeypatch):
    from gencast_rmmd.errors import DataError

    path, _ = small_store
    failing, _ = _fails_after(st.chunk_moments, 3, DataError("block cannot be decoded"))
    monkeypatch.setattr(st, "chunk_moments", failing)
    with pytest.raises(
        DataError, match=r"^block cannot be decoded.* \(\d blocks done so far are kept"
    ):
        compute_stats_beam(path, tmp_path / "stats", block=3)


def test_pipelines_default_to_the_in_process_runner(small_store, tmp_path, monkeypatch):
    """With no `--runner`, a pipeline runs on Beam's in-process FnApiRunner and never tries the
    Prism runner, which Beam's DirectRunner starts by downloading from GitHub (offline: a failed
    download and a temporary directory left behind; online: another runner than the tested one).
    The probe does see the DirectRunner's attempt when that runner is asked for."""
    from apache_beam.runners.portability import prism_runner

    tried = []

    def no_prism(self, *args, **kwargs):
        tried.append(type(self).__name__)
        raise RuntimeError("the Prism runner is not available in this test")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", no_prism)
    path, ds = small_store
    _assert_same_stats(compute_stats_beam(path, tmp_path / "a", block=4), st.compute_stats(ds))
    assert tried == []
    direct = compute_stats_beam(path, tmp_path / "b", block=4, beam_args=["--runner=DirectRunner"])
    assert tried == ["PrismRunner"]  # ... and fell back
    _assert_same_stats(direct, st.compute_stats(ds))


def test_stats_pipeline_pairs_times_by_timestamp(small_store, tmp_path):
    """A store whose time axis runs backwards gives the statistics of the same data in order
    (its 12 h differences are pairs of neighbours in reverse, not none)."""
    path, ds = small_store
    backwards = tmp_path / "backwards.zarr"
    ds.isel(time=slice(None, None, -1)).to_zarr(backwards, consolidated=False)
    _assert_same_stats(
        compute_stats_beam(backwards, tmp_path / "stats", block=3), st.compute_stats(ds)
    )


def _assert_same_stats(got: dict, ref: dict) -> None:
    for k in ("mean", "stddev", "diffs_stddev", "min"):
        for v in ref[k].data_vars:
            np.testing.assert_allclose(
                got[k][v].values, ref[k][v].values, rtol=1e-9, atol=1e-12, err_msg=f"{k}/{v}"
            )


@pytest.mark.parametrize("block", [1, 3, 5])
def test_stats_pipeline_pairs_six_hourly_times_across_blocks(small_store, tmp_path, block):
    """On a 6-hourly store the 12 h pairs are two positions apart, so a block's first pairs reach
    back past the previous time: the Beam blocks count every pair once, as in-process does."""
    path, ds = small_store
    half = ds.copy(deep=True)
    half = half.assign_coords(time=ds["time"].values + np.timedelta64(6, "h"))
    rng = np.random.default_rng(0)
    for v in half.data_vars:
        if "time" in half[v].dims:
            half[v] = half[v] + rng.normal(0.0, 1.0, half[v].shape).astype(half[v].dtype)
    six = xr.concat([ds, half], "time", data_vars="minimal").sortby("time")
    store = tmp_path / "six.zarr"
    six.to_zarr(store, consolidated=False)
    got = compute_stats_beam(store, tmp_path / "stats", block=block)
    ref = st.compute_stats(six)
    for v in ref["diffs_stddev"].data_vars:
        np.testing.assert_allclose(
            got["diffs_stddev"][v].values, ref["diffs_stddev"][v].values, rtol=1e-6, err_msg=v
        )


def test_stats_pipeline_reads_a_store_by_url_lazily(small_store, tmp_path):
    """A store by URL (memory:// here, gs:// in production) gives the same statistics as on disk
    and is read chunk by chunk, never loaded whole (decades of ERA5 do not fit in memory)."""
    from pipelines import stats as stats_pipe

    path, ds = small_store
    url = "memory://gencast_rmmd_stats_test/small.zarr"
    ds.drop_encoding().to_zarr(url, consolidated=False, mode="w")
    opened = stats_pipe._open(url)
    assert not any(v._in_memory for v in opened.data_vars.values())
    a = compute_stats_beam(path, tmp_path / "local", block=3)
    b = compute_stats_beam(url, tmp_path / "url", block=3)
    for k in ("mean", "stddev", "diffs_stddev", "min"):
        xr.testing.assert_identical(a[k], b[k])
    # The output too may be a URL (on Dataflow the last step writes it from a worker): the same
    # bytes, so the same digest that forecasts and students record.
    import fsspec

    out_url = "memory://gencast_rmmd_stats_test/stats"
    compute_stats_beam(url, out_url, block=3)
    fs = fsspec.filesystem("memory")
    names = sorted(st.STATS_FILES.values())
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(out_url, detail=False)) == names
    for n in names:
        assert fs.cat_file(f"{out_url}/{n}") == (tmp_path / "local" / n).read_bytes(), n
    assert st.stats_sha256(out_url) == st.stats_sha256(tmp_path / "local")


def test_stats_combine_is_independent_of_delivery_order(small_store):
    """Partials merged in any order or grouping give the same bits as merging in block order:
    a runner's scheduling cannot change the statistics' bytes (and so their SHA-256)."""
    import random

    from pipelines.stats import _MomentsCombine

    _, ds = small_store
    items = [(lo, st.chunk_moments(ds.isel(time=slice(lo, lo + 2)))) for lo in range(0, 12, 2)]
    fn = _MomentsCombine()
    ref = None
    for _, m in items:
        ref = m if ref is None else st.merge_moments(ref, m)
    rng = random.Random(0)
    for _ in range(5):
        shuffled = rng.sample(items, len(items))
        cut = rng.randrange(1, len(items))
        accs = []
        for part in (shuffled[:cut], shuffled[cut:]):
            acc = fn.create_accumulator()
            for item in part:
                acc = fn.add_input(acc, item)
            accs.append(acc)
        got = fn.extract_output(fn.merge_accumulators(accs[::-1]))
        for field in ("count", "mean", "m2", "minimum"):
            for name, v in getattr(ref, field).items():
                assert np.array_equal(getattr(got, field)[name], v), (field, name)
    # A plain left fold in delivery order gives other last bits for some orders: the reason
    # for merging in block order.
    folds = set()
    for _ in range(20):
        out = None
        for _, m in rng.sample(items, len(items)):
            out = m if out is None else st.merge_moments(out, m)
        folds.add(b"".join(np.asarray(v).tobytes() for v in out.m2.values()))
    assert len(folds) > 1
