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

# An upper estimate of a netCDF file's size beyond its values, per variable and once more for
# the file (h5netcdf: 2.2 KiB of values in a 20 KiB file of 9 variables).
NETCDF_OVERHEAD_BYTES = 8192


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
    variables become int8 (netCDF has no bool). A local disk without room for it is refused
    first (`remote.check_room`): HDF5, out of space mid-file, crashed the process as it exited."""
    from gencast_rmmd.remote import check_room, written

    ds = ds.copy()
    for name, var in list(ds.variables.items()):
        if var.dtype == bool:
            ds[name] = var.astype("int8")
            ds[name].attrs["dtype"] = "bool"
    # HDF5 overhead: a header, and some per variable
    check_room(path, int(ds.nbytes) + NETCDF_OVERHEAD_BYTES * (1 + len(ds.variables)))
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
