"""`gencast-rmmd data cache`: what the local caches hold, which entries are stale, --prune."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import time

import fsspec
import numpy as np
from data_synthetic import SMALL_TASK, canonical_store_ds

from gencast_rmmd import remote
from gencast_rmmd.cli import main
from gencast_rmmd.data import examples as ex
from gencast_rmmd.data import nature_run
from gencast_rmmd.data import stats as st
from gencast_rmmd.locks import file_lock

URL = "memory://gencast_rmmd_caches_test/w/params.npz"


def _entries(capsys) -> dict[str, dict]:
    assert main(["data", "cache", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    return {e["path"]: e for e in out["entries"]}


def test_data_cache_lists_and_prunes_stale_entries(tmp_path, monkeypatch, capsys):
    root = tmp_path / "c"
    monkeypatch.setenv("GENCAST_RMMD_CACHE", str(root))
    monkeypatch.delenv("GENCAST_RMMD_EXAMPLES_CACHE", raising=False)
    monkeypatch.setenv("GENCAST_RMMD_REMOTE_CACHE", str(tmp_path / "r"))

    # Nature runs: a complete one, one built by an older nature-run version, a crashed build, a
    # build in progress (its lock held).
    cfg = nature_run.NatureRunConfig(days=60, spinup_days=30)
    for name, version in (("aaaa", nature_run.NATURE_RUN_VERSION), ("dddd", 0)):
        canonical_store_ds().assign_attrs(
            {
                nature_run.CONFIG_ATTR: json.dumps(dataclasses.asdict(cfg)),
                nature_run.VERSION_ATTR: version,
            }
        ).to_zarr(root / f"nature_run-{name}.zarr", consolidated=False)
    crashed = root / "nature_run-bbbb.zarr"
    (crashed / "temperature").mkdir(parents=True)
    building = root / "nature_run-cccc.zarr"
    building.mkdir()

    # Example copies: of a live store, of a deleted store, and one without a record.
    ds = canonical_store_ds()
    stats_dir = tmp_path / "stats"
    st.save_stats(st.compute_stats(ds), stats_dir)
    live, gone = tmp_path / "live.zarr", tmp_path / "gone.zarr"
    for p in (live, gone):
        ds.to_zarr(p, consolidated=False)
        ex.ExampleSource(p, SMALL_TASK, stats_dir, local_cache=root / "examples")[0]
    shutil.rmtree(gone)
    unrecorded = root / "examples" / "examples-0123456789abcdef"
    unrecorded.mkdir()
    (unrecorded / "complete").write_text("1")
    (unrecorded / "temperature.npy").write_bytes(b"x" * 5000)
    # A copy of the live store recorded by an earlier version (its record lacks a key now taken).
    (live_copy,) = (
        c
        for c in (root / "examples").glob("examples-*")
        if (c / ex.EXAMPLES_RECORD).exists()
        and json.loads((c / ex.EXAMPLES_RECORD).read_text())["store"] == str(live.absolute())
    )
    older = root / "examples" / "examples-fedcba9876543210"
    shutil.copytree(live_copy, older)
    record = json.loads((older / ex.EXAMPLES_RECORD).read_text())
    record["zarr_json_mtime_ns"] = record.pop("metadata_version")
    (older / ex.EXAMPLES_RECORD).write_text(json.dumps(record))

    # Remote copies: a fetched URL, an older cache layout, a stale and a fresh partial fetch.
    fs = fsspec.filesystem("memory")
    fs.pipe_file(URL, b"weights")
    copy = pathlib.Path(remote.local_file(URL))
    legacy = tmp_path / "r" / ("f" * 32)
    legacy.mkdir()
    (legacy / "params.npz").write_bytes(b"old layout")
    old_part, new_part = copy.parent / ".params.npz.1.part", copy.parent / ".params.npz.2.part"
    old_part.write_bytes(b"abandoned")
    new_part.write_bytes(b"being fetched")
    two_hours_ago = time.time() - 7200
    os.utime(old_part, (two_hours_ago, two_hours_ago))

    with file_lock(root / f".{building.name}.lock"):  # its builder is at work
        entries = _entries(capsys)
        state = {p: e["stale"] for p, e in entries.items()}
        by_source = {
            e["source"]: e
            for p, e in entries.items()
            if e["kind"] == "examples" and p != str(older)
        }
        assert state[str(root / "nature_run-aaaa.zarr")] is None
        assert entries[str(root / "nature_run-aaaa.zarr")]["source"] == (
            "embedded nature run: 60 days after 30 of spin-up, T21, seed 0"
        )
        assert state[str(root / "nature_run-dddd.zarr")].startswith("built by nature-run version 0")
        assert state[str(crashed)] == "incomplete build"
        assert state[str(building)] is None
        assert by_source[str(live.absolute())]["stale"] is None
        assert by_source[str(gone.absolute())]["stale"] == "its store is gone"
        assert state[str(unrecorded)].startswith("made before copies recorded their store")
        assert state[str(older)] == "recorded by an earlier version (made again when needed)"
        assert state[str(copy.parent)] is None and entries[str(copy.parent)]["source"] == URL
        assert state[str(legacy)] == "older cache layout"
        assert state[str(old_part)] == "interrupted fetch" and state[str(new_part)] is None
        assert all(e["bytes"] > 0 for e in entries.values())

        assert main(["data", "cache"]) == 0
        text = capsys.readouterr().out
        assert "copy of" in text and URL in text and "7 stale" in text and "--prune" in text
        assert "current" in text and "in use" not in text

        assert main(["data", "cache", "--prune"]) == 0
        assert "7 stale" in capsys.readouterr().out
        after = _entries(capsys)
        assert all(e["stale"] is None for e in after.values())
        assert set(after) == {p for p, s in state.items() if s is None}
    # Once its builder is gone, the build that never finished is stale too.
    assert _entries(capsys)[str(building)]["stale"] == "incomplete build"
    for p in (crashed, unrecorded, older, legacy, old_part, root / "nature_run-dddd.zarr"):
        assert not p.exists()
    # What was kept still serves: the copy of the URL, and the live store's example copy.
    assert remote.local_file(URL) == str(copy) and new_part.exists()
    again = ex.ExampleSource(live, SMALL_TASK, stats_dir, local_cache=root / "examples")
    plain = ex.ExampleSource(live, SMALL_TASK, stats_dir)
    np.testing.assert_array_equal(again[0]["targets"], plain[0]["targets"])
    fs.rm("memory://gencast_rmmd_caches_test", recursive=True)


def test_data_cache_on_empty_caches(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENCAST_RMMD_CACHE", str(tmp_path / "none"))
    monkeypatch.delenv("GENCAST_RMMD_EXAMPLES_CACHE", raising=False)
    monkeypatch.setenv("GENCAST_RMMD_REMOTE_CACHE", str(tmp_path / "none" / "remote"))
    assert main(["data", "cache", "--prune"]) == 0
    assert "0 entries" in capsys.readouterr().out
    assert not (tmp_path / "none").exists()  # listing creates nothing


def test_a_killed_nature_run_build_is_listed_and_pruned(tmp_path, monkeypatch, capsys):
    """`nature_run.write_store` writes into a temporary directory beside the store and renames
    it into place: a build killed in between leaves that directory (the store's size), stale
    once no builder holds the store's lock; one whose builder is at work is left alone."""
    import signal
    import subprocess
    import sys

    root = tmp_path / "c"
    monkeypatch.setenv("GENCAST_RMMD_CACHE", str(root))
    monkeypatch.delenv("GENCAST_RMMD_EXAMPLES_CACHE", raising=False)
    monkeypatch.setenv("GENCAST_RMMD_REMOTE_CACHE", str(tmp_path / "r"))
    code = f"""
import os, signal, sys
import xarray as xr
sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
from data_synthetic import canonical_store_ds
from gencast_rmmd.data import nature_run
write = xr.Dataset.to_zarr
def write_then_die(self, *args, **kwargs):
    write(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # after the data, before the rename into place
xr.Dataset.to_zarr = write_then_die
nature_run.write_store(canonical_store_ds(), {str(root / "nature_run-0123456789ab.zarr")!r})
"""
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    (killed,) = root.glob(".nature_run-*.tmp")
    assert not (root / "nature_run-0123456789ab.zarr").exists()
    building = root / ".nature_run-cccc.zarr.k2j_8x0q.tmp"
    building.mkdir()
    (building / "zarr.json").write_text("{}")
    with file_lock(root / ".nature_run-cccc.zarr.lock"):  # its builder is at work
        entries = _entries(capsys)
        assert entries[str(killed)]["stale"] == "incomplete build"
        assert entries[str(killed)]["kind"] == "nature run" and entries[str(killed)]["bytes"] > 0
        assert entries[str(building)]["stale"] is None
        assert main(["data", "cache", "--prune"]) == 0
        assert "1 stale" in capsys.readouterr().out
    assert not killed.exists() and building.exists()
