"""Small netCDF files (scorecards, statistics), written atomically with whatever engine is usable.

h5netcdf needs h5py, which is not always installed; then the scipy engine (netCDF3, which
xarray reads back the same way: strings as chars, int64 coerced to int32 where the values fit) is
used. Files are written to a temporary name and moved into place.
"""

from __future__ import annotations

import functools
import os

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
    """Write `ds` to `path` atomically; bool variables become int8 (netCDF has no bool)."""
    ds = ds.copy()
    for name, var in list(ds.variables.items()):
        if var.dtype == bool:
            ds[name] = var.astype("int8")
            ds[name].attrs["dtype"] = "bool"
    tmp = f"{path}.tmp-{os.getpid()}"
    ds.to_netcdf(tmp, engine=engine())
    os.replace(tmp, path)
    return path


def read_netcdf(path: str) -> xr.Dataset:
    """Read a file written by `write_netcdf` fully into memory (bool variables restored)."""
    with xr.open_dataset(path, engine=engine()) as f:
        ds = f.load()
    for name in list(ds.data_vars):
        if ds[name].attrs.get("dtype") == "bool":
            attrs = {k: v for k, v in ds[name].attrs.items() if k != "dtype"}
            ds[name] = ds[name].astype(bool)
            ds[name].attrs = attrs
    return ds
