"""Small netCDF files (scorecards, statistics), written atomically with whatever engine is usable.

h5netcdf needs h5py, which is not always installed; then the scipy engine (netCDF3, which
xarray reads back the same way: strings as chars, int64 coerced to int32 where the values fit) is
used. Files are written to a temporary name and moved into place; a path may be a URL (the
Beam evaluation's work directory on Dataflow).
"""

from __future__ import annotations

import functools
import os
import tempfile

import xarray as xr


@functools.cache
def engine() -> str:
    """'h5netcdf' when h5py is importable, else 'scipy'."""
    try:
        import h5py  # noqa: F401

        return "h5netcdf"
    except ImportError:
        return "scipy"


def write_netcdf(ds: xr.Dataset, path: str) -> str:
    """Write `ds` to `path` (a local path or a URL) whole or not at all (`remote.written`); bool
    variables become int8 (netCDF has no bool)."""
    from gencast_rmmd.remote import written

    ds = ds.copy()
    for name, var in list(ds.variables.items()):
        if var.dtype == bool:
            ds[name] = var.astype("int8")
            ds[name].attrs["dtype"] = "bool"
    with written(path) as tmp:
        ds.to_netcdf(tmp, engine=engine())
    return path


def read_netcdf(path: str) -> xr.Dataset:
    """Read a file written by `write_netcdf` (a local path or a URL) fully into memory (bool
    variables restored)."""
    from gencast_rmmd.remote import filesystem, is_url

    if is_url(path):
        fs, remote_path = filesystem(path, read_only=True)
        with tempfile.TemporaryDirectory(prefix="gencast_rmmd_nc_") as d:
            local = os.path.join(d, "file.nc")
            fs.get_file(remote_path, local)
            return read_netcdf(local)
    with xr.open_dataset(path, engine=engine()) as f:
        ds = f.load()
    for name in list(ds.data_vars):
        if ds[name].attrs.get("dtype") == "bool":
            attrs = {k: v for k, v in ds[name].attrs.items() if k != "dtype"}
            ds[name] = ds[name].astype(bool)
            ds[name].attrs = attrs
    return ds
