"""Tests of the shared helpers in `gencast_rmmd.safety`."""

from __future__ import annotations

import os
import stat
import tempfile

import numpy as np
import pytest
import xarray as xr
from reliability_helpers import chunk_files, tiny_canonical_ds, write_store

from gencast_rmmd import safety
from gencast_rmmd.errors import DataError
from gencast_rmmd.safety import current_umask, file_sha256, load_or_data_error, publish_mode


def test_file_sha256_is_remembered_only_while_the_file_is_unchanged(tmp_path):
    import hashlib

    f = tmp_path / "ckpt.npz"
    f.write_bytes(b"a" * 1000)
    # Freshly written: hashed, not remembered (a same-size rewrite in the same tick must show).
    assert file_sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    f.write_bytes(b"b" * 1000)
    assert file_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    # Settled (mtime 10 s back): remembered, so the file is not read again...
    old = os.stat(f).st_mtime_ns - 10_000_000_000
    os.utime(f, ns=(old, old))
    digest = file_sha256(f)
    key = next(k for k in safety._DIGESTS if k[0] == str(f))
    safety._DIGESTS[key] = "remembered"
    assert file_sha256(f) == "remembered"
    # ...until it changes: rewritten in place (new mtime) or replaced by a rename (new inode).
    f.write_bytes(b"b" * 1000)
    assert file_sha256(f) == digest
    g = tmp_path / "new.npz"
    g.write_bytes(b"c" * 1000)
    os.utime(g, ns=(old, old))
    os.replace(g, f)
    assert file_sha256(f) == hashlib.sha256(b"c" * 1000).hexdigest()


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_publish_mode_matches_a_plain_write(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        plain_file = tmp_path / f"plain-{mask:o}.txt"
        plain_file.write_text("x")
        plain_dir = tmp_path / f"plain-{mask:o}"
        plain_dir.mkdir()
        fd, tmp = tempfile.mkstemp(dir=tmp_path)
        os.close(fd)
        tdir = tempfile.mkdtemp(dir=tmp_path)
        sub = os.path.join(tdir, "stats")
        os.mkdir(sub)
        fd, inner = tempfile.mkstemp(dir=sub)
        os.close(fd)
        publish_mode(tmp)
        publish_mode(tdir)
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp) == mode(plain_file) == 0o666 & ~mask
    assert mode(tdir) == mode(sub) == mode(plain_dir) == 0o777 & ~mask
    assert mode(inner) == 0o666 & ~mask


def test_corrupt_chunk_becomes_one_data_error(tmp_path):
    store = write_store(tiny_canonical_ds(n_times=8), tmp_path / "s.zarr")
    chunk = chunk_files(store, "temperature")[1]
    chunk.write_bytes(chunk.read_bytes()[:16])
    ds = xr.open_zarr(store)
    good = load_or_data_error(ds["2m_temperature"], store)
    assert np.isfinite(good.values).all()
    assert load_or_data_error(ds["temperature"].isel(time=slice(0, 4)), store).shape[0] == 4
    with pytest.raises(DataError, match=r"s\.zarr.*cannot read variable 'temperature' at time"):
        load_or_data_error(ds, store, where="time 2020-01-03")
    # Variables loaded concurrently (stores by URL): the same error, the same values.
    with pytest.raises(DataError, match=r"s\.zarr.*cannot read variable 'temperature' at time"):
        load_or_data_error(ds, store, where="time 2020-01-03", threads=4)
    rest = ds.drop_vars("temperature").isel(time=slice(0, 4))
    xr.testing.assert_identical(
        load_or_data_error(rest, store, threads=4), load_or_data_error(rest, store)
    )
