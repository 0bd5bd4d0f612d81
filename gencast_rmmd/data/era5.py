"""ERA5 access: open any ERA5-style store lazily and normalize it to the canonical schema.

Sources: the ARCO-ERA5 Zarr on GCS (read anonymously through gcsfs, `token='anon'`), any local
Zarr/NetCDF path, or any fsspec URL. Nothing is loaded eagerly: stores are opened with dask (the
store's own chunks), and every step below (renaming, level/time selection, precipitation sums,
regridding) stays lazy until a caller computes a slice.

Canonical schema (docs/contracts.md): dims `time, level, lat, lon`; `lat` ascending in degrees,
`lon` ascending in [0, 360); `level` in hPa (int); ERA5 long names; float32; statics with dims
`(lat, lon)`; the four GenCast progress forcings (`year_progress_*` with dims `(time,)`,
`day_progress_*` with dims `(time, lon)`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import xarray as xr

from gencast_rmmd.data import regrid as regrid_lib
from gencast_rmmd.data.config import DataConfig, GridConfig
from gencast_rmmd.data.task import VARIABLES, TaskConfig, has_level, variable_kind
from gencast_rmmd.errors import DataError
from gencast_rmmd.remote import (
    check_host,
    is_url,
    local_path,
    network_problem,
    source_path,
    url_storage_options,
)

# Seconds in GenCast's year for year progress (reference notes §3.2): the tropical year.
AVG_SECONDS_PER_YEAR = 365.24219 * 86400.0
SECONDS_PER_DAY = 86400.0

_LAT_NAMES = ("lat", "latitude")
_LON_NAMES = ("lon", "longitude")
_LEVEL_NAMES = ("level", "pressure_level", "isobaricInhPa", "plev")
# ECMWF short names, as the Copernicus Climate Data Store's NetCDF files name ERA5 variables,
# and their ERA5 long names (GenCast's). `z` is geopotential on pressure levels and the surface
# geopotential (orography) without them.
_SHORT_NAMES = {
    "t": "temperature",
    "u": "u_component_of_wind",
    "v": "v_component_of_wind",
    "q": "specific_humidity",
    "w": "vertical_velocity",
    "t2m": "2m_temperature",
    "msl": "mean_sea_level_pressure",
    "u10": "10m_u_component_of_wind",
    "v10": "10m_v_component_of_wind",
    "sst": "sea_surface_temperature",
    "tp": "total_precipitation",
    "lsm": "land_sea_mask",
}
_CANONICAL_DIMS = ("time", "level", "lat", "lon")
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zmetadata")
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".h5", ".hdf5", ".cdf")

# The id gencast-rmmd gives a store it creates: what was made from a store records its id, and so
# tells a store re-made at the same path from the one it saw (`store_id`). Stores filled after
# creation (`prepare`, a forecast) get a random id (`new_store_id`); a store written whole from
# memory (the nature run) gets a digest of its content (`content_store_id`), so that rebuilding
# it bit-identically leaves what was made from it current.
STORE_ID_ATTR = "gencast_rmmd_store_id"

PRECIP_12HR = "total_precipitation_12hr"
PRECIP_HOURLY = "total_precipitation"
SST = "sea_surface_temperature"


# --------------------------------------------------------------------------------------------
# Opening stores
# --------------------------------------------------------------------------------------------


def new_store_id() -> str:
    """A fresh random value for `STORE_ID_ATTR`."""
    import uuid

    return uuid.uuid4().hex


def content_store_id(ds: xr.Dataset) -> str:
    """A value for `STORE_ID_ATTR` from `ds`'s content: "sha256:" and the SHA-256 of every
    variable's and coordinate's name, dims, dtype and values and of the dataset's attributes
    (`STORE_ID_ATTR` itself left out). Equal datasets give equal ids; a single bit changed in any
    value gives another. Loads each variable in turn (meant for datasets held in memory)."""
    import hashlib
    import json

    h = hashlib.sha256()
    attrs = {k: v for k, v in ds.attrs.items() if k != STORE_ID_ATTR}
    h.update(json.dumps(attrs, sort_keys=True, default=str).encode())
    for name in sorted(map(str, ds.variables)):
        var = ds.variables[name]
        values = np.ascontiguousarray(var.values)
        header = {
            "name": name,
            "dims": list(var.dims),
            "dtype": values.dtype.str,
            "shape": list(values.shape),
            "attrs": var.attrs,
        }
        h.update(json.dumps(header, sort_keys=True, default=str).encode())
        if values.dtype.hasobject:  # strings held as objects: their text, not their pointers
            h.update(json.dumps(values.tolist(), default=str).encode())
        else:
            h.update(values.tobytes())
    return "sha256:" + h.hexdigest()


def open_zarr_group(source: str | os.PathLike):
    """The Zarr group at `source` (a local path or a URL, read with `url_storage_options`),
    read-only."""
    import zarr

    source = source_path(source)
    if is_url(source):
        # None when there are no options: zarr 3.4 (Python >= 3.12) refuses storage options, even
        # an empty dict, for the URLs it opens without fsspec (`memory://`).
        opts = url_storage_options(source) or None
        return zarr.open_group(source, mode="r", storage_options=opts)
    return zarr.open_group(source, mode="r")


def store_id(path: str | os.PathLike) -> str | None:
    """The `STORE_ID_ATTR` of the Zarr store at `path`, a local path or a URL (None: no readable
    Zarr store there, or one not created by gencast-rmmd, or created before ids were recorded)."""
    try:
        found = open_zarr_group(path).attrs.get(STORE_ID_ATTR)
    except Exception:  # a NetCDF file, a missing path, a remote store out of reach
        return None
    return None if found is None else str(found)


# Where a store's version shows: its root metadata file (consolidated v2, v3, a plain v2
# group's; xarray re-writes it on an append too), or the file itself.
_METADATA_FILES = (".zmetadata", "zarr.json", ".zgroup", "")


def store_fingerprint(path: str | os.PathLike | None) -> str | list[int] | None:
    """What tells a store from one re-made or appended to at the same path: its `store_id`,
    or for a store or file without one (made by another tool, such as ARCO-ERA5) its
    `metadata_version`."""
    if not path:
        return None
    found = store_id(path)
    return found if found is not None else metadata_version(path)


def metadata_version(path: str | os.PathLike) -> str | list[int] | None:
    """The version of the store's root metadata file (`.zmetadata`, `zarr.json`, `.zgroup`),
    or of the file itself (NetCDF): locally its modification time and size, at a URL the
    object's version (`remote.object_version`: GCS generation and checksums, HTTP ETag). None
    for a missing path, or an object whose server names no version (taken as unchanged)."""
    if is_url(os.fspath(path)):
        return _url_store_version(os.fspath(path))
    if is_pattern(path):  # each file's time and size: any file re-written, added or removed
        import hashlib
        import json

        try:
            files = pattern_files(path)
        except DataError:
            return None
        stats = [(f, st.st_mtime_ns, st.st_size) for f in files for st in [os.stat(f)]]
        return "files:" + hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    for name in _METADATA_FILES:
        p = os.path.join(path, name) if name else os.fspath(path)
        if os.path.isfile(p):
            st = os.stat(p)
            return [st.st_mtime_ns, st.st_size]
    return None


def _url_store_version(source: str) -> str | None:
    import hashlib

    from gencast_rmmd.remote import filesystem, object_version

    fs, root = filesystem(source, read_only=True)
    for name in _METADATA_FILES:
        try:
            info = fs.info(f"{root.rstrip('/')}/{name}" if name else root)
        except Exception:  # not there (another layout), or out of reach: the next, else None
            continue
        if info.get("type") != "file":
            continue
        version = object_version(info)
        if version is None:  # the server names no version: taken as unchanged
            return None
        return "object:" + hashlib.sha256(version.encode()).hexdigest()
    return None


def open_zarr_quiet(path: Any, **kwargs: Any) -> xr.Dataset:
    """`xr.open_zarr(path, **kwargs)` without xarray's warning about missing consolidated
    metadata: stores without it are fine (Zarr v3 has none by spec, and ours are written so)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return xr.open_zarr(path, **kwargs)


@contextlib.contextmanager
def quiet_v3_consolidation():
    """Silence zarr 3's warning, on writing consolidated metadata into a Zarr v3 store, that
    consolidation is not in the v3 spec yet: it does not matter to zarr-python and xarray readers,
    which is what our stores are read with."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        yield


def open_store(
    source: str | os.PathLike,
    *,
    token: str | None = None,
    storage_options: dict | None = None,
    trim_to_valid_range: bool = True,
    allow_incomplete: bool = False,
    allow_forecast: bool = False,
    chunks: dict | None | str = "store",
) -> xr.Dataset:
    """Open a Zarr or NetCDF store lazily (dask arrays with the store's own chunks).

    Args:
      source: a local path (Zarr directory or NetCDF file), a local glob pattern of NetCDF files
        (`era5/*.nc`: `is_pattern`, combined by coordinates), a `file://` path, or an fsspec URL
        (`gs://...` through gcsfs, `s3://`, `https://`, `memory://`).
      token: gcsfs token for `gs://` URLs. By default the token fsspec's configuration names
        (`FSSPEC_GS_TOKEN`), else "anon", which reads public buckets such as ARCO-ERA5 without
        credentials (`url_storage_options`).
      storage_options: extra fsspec options (a "token" there wins).
      trim_to_valid_range: ARCO-ERA5 stores carry `valid_time_start`/`valid_time_stop` attrs (the
        time axis is allocated beyond the filled data, which reads as NaN); trim to them.
      allow_incomplete: open an unfinished `data prepare` output (only `data validate` does, to
        report it); by default such a store is a DataError.
      allow_forecast: open a forecast store (a `prediction_timedelta` dim: WeatherBench 2's
        schema, what `forecast` writes); only the evaluation does. By default it is a DataError:
        data, statistics and initial conditions come from analyses (`refuse_forecast_store`).
      chunks: "store" (default): dask arrays in the store's own chunks; `None`: lazily loaded
        numpy arrays (what the evaluation's per-region reads use); else xarray's `chunks`.
    Raises:
      DataError: the path does not exist, is neither Zarr nor NetCDF, or is incomplete.
    """
    chunks = {} if chunks == "store" else chunks
    source = local_path(source)  # a `file://` path is local
    if is_url(source):
        opts = url_storage_options(source, token, storage_options)
        try:
            check_host(source, opts)
            if source.endswith(NETCDF_SUFFIXES):
                import fsspec

                ds = xr.open_dataset(
                    fsspec.open(source, **opts).open(), engine="h5netcdf", chunks=chunks
                )
            else:
                ds = open_zarr_quiet(source, chunks=chunks, storage_options=opts or None)
        except FileNotFoundError as e:
            raise DataError(f"store {source!r} does not exist or is not readable ({e})") from None
        except (ValueError, KeyError, OSError) as e:
            unreachable = network_problem(e)
            if unreachable:
                raise DataError(f"store {source!r} cannot be opened: {unreachable}") from None
            raise DataError(
                f"store {source!r}: expected a Zarr store or NetCDF file, could not open it ({e})"
            ) from None
    elif is_pattern(source):
        ds = _open_files(source, chunks)
    else:
        path = pathlib.Path(source)
        if not path.exists():
            raise DataError(f"store path {source!r} does not exist")
        ds = _open_local(path, chunks)
    if not allow_incomplete:  # an interrupted `data prepare` output is never used as data
        from gencast_rmmd.data.validate import require_complete

        require_complete(ds, source)
    if not allow_forecast:
        refuse_forecast_store(ds, source, "store")
    if trim_to_valid_range and "time" in ds.dims:
        start = ds.attrs.get("valid_time_start")
        stop = ds.attrs.get("valid_time_stop")
        if start or stop:
            ds = ds.sel(time=slice(start, stop))
    return ds


def refuse_forecast_store(ds: xr.Dataset, source: str, what: str) -> None:
    """DataError when `ds` is a forecast store (a `prediction_timedelta` dim) where analyses in
    ERA5 names are expected (`what`: "store", "truth store")."""
    if "prediction_timedelta" in ds.dims:
        raise DataError(
            f"{what} {source!r} is a forecast store (it has a 'prediction_timedelta' dim; found "
            f"dims {list(ds.dims)}); expected analyses in ERA5 names such as ERA5 itself or the "
            "nature run (time, [level], latitude/lat, longitude/lon)"
        )


def is_pattern(source: str | os.PathLike) -> bool:
    """True for a local glob pattern (`era5/*.nc`, `era5/2020-??.nc`): a set of NetCDF files read
    as one store (`open_store`), such as the Climate Data Store's monthly downloads. A path that
    exists as it is written (`era5[v2].zarr`) is that path, not a pattern."""
    source = os.fspath(source)
    if is_url(source) or not any(c in source for c in "*?["):
        return False
    return not os.path.exists(os.path.expanduser(source))


def pattern_files(pattern: str | os.PathLike) -> list[str]:
    """The files a local glob pattern matches, sorted; DataError when it matches none."""
    import glob

    files = sorted(glob.glob(os.path.expanduser(os.fspath(pattern))))
    if not files:
        raise DataError(f"store pattern {os.fspath(pattern)!r} matches no file")
    return files


def _one_of_files(ds: xr.Dataset) -> xr.Dataset:
    """One file of a pattern, ready to combine: in this package's names, its statics without
    the time dim (taken at their first time, as `canonicalize` does), and without a time
    coordinate when nothing else has that dim."""
    ds = normalize_coords(ds)
    if "time" not in ds.dims:
        return ds
    statics = [
        v
        for v in ds.data_vars
        if v in VARIABLES and variable_kind(v) == "static" and "time" in ds[v].dims
    ]
    for v in statics:
        ds[v] = ds[v].isel(time=0, drop=True)
    if not any("time" in ds[v].dims for v in ds.data_vars):
        ds = ds.drop_dims("time")
    return ds


def _open_files(pattern: str, chunks: dict | None) -> xr.Dataset:
    """The NetCDF files a glob pattern matches, each in this package's names (`normalize_coords`),
    combined by their coordinates into one dataset: files of successive times are concatenated
    along time, files of other variables (the CDS splits surface and pressure-level fields)
    merged. Grids, levels and the times of merged files must agree exactly (`join="exact"`): a
    mismatch would otherwise read as NaN."""
    files = pattern_files(pattern)
    engines = {}
    for f in files:
        if os.path.isdir(f):
            raise DataError(
                f"store pattern {pattern!r} matches directory {f!r}; a pattern reads NetCDF files "
                "only (give a Zarr store by its path)"
            )
        magic, engines[f] = netcdf_engine(f)
        if engines[f] is None:
            raise DataError(
                f"store pattern {pattern!r} matches {f!r}, which is not a NetCDF file (it starts "
                f"with {magic[:4]!r})"
            )
    if len(set(engines.values())) > 1:
        raise DataError(
            f"store pattern {pattern!r} matches both NetCDF3 and NetCDF4 files; convert them to "
            "one format (they are read with one engine)"
        )
    try:
        return xr.open_mfdataset(
            files,
            engine=next(iter(engines.values())),
            chunks=chunks if chunks is not None else {},
            # Each file in this package's names first: the CDS names the surface geopotential
            # and the geopotential on levels both `z`, which merge only once renamed (and its
            # statics come at one time, which would not align with the others').
            preprocess=_one_of_files,
            combine="by_coords",
            data_vars="minimal",
            coords="minimal",
            compat="no_conflicts",
            join="exact",
        )
    except ImportError as e:
        raise DataError(
            f"store pattern {pattern!r}: reading NetCDF4 files needs h5py ({e})"
        ) from None
    except Exception as e:  # xarray's combine errors: overlapping or misaligned files
        raise DataError(
            f"store pattern {pattern!r}: its {len(files)} files do not combine into one store "
            f"({type(e).__name__}: {e}); they must tile time and share grid and levels"
        ) from None


def netcdf_engine(path: str | os.PathLike) -> tuple[bytes, str | None]:
    """(the file's first bytes, the xarray engine that reads it): "h5netcdf" for NetCDF4/HDF5,
    "scipy" for NetCDF3, None for anything else."""
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"\x89HDF"):
        return magic, "h5netcdf"
    return magic, "scipy" if magic.startswith(b"CDF") else None


def _open_local(path: pathlib.Path, chunks: dict | None) -> xr.Dataset:
    if path.is_dir():
        if not any((path / m).exists() for m in _ZARR_MARKERS):
            raise DataError(
                f"store path {str(path)!r} is a directory but not a Zarr store "
                f"(expected one of {', '.join(_ZARR_MARKERS)} inside it)"
            )
        try:
            return open_zarr_quiet(path, chunks=chunks)
        except Exception as e:  # zarr raises a variety of errors for broken stores
            raise DataError(f"store path {str(path)!r}: not a readable Zarr store ({e})") from None
    magic, engine = netcdf_engine(path)
    if engine is not None:
        try:
            return xr.open_dataset(path, engine=engine, chunks=chunks)
        except ImportError as e:
            raise DataError(
                f"store path {str(path)!r} is a NetCDF4/HDF5 file; reading it needs h5py ({e})"
            ) from None
        except Exception as e:
            raise DataError(f"store path {str(path)!r}: not a readable NetCDF file ({e})") from None
    raise DataError(
        f"store path {str(path)!r} is neither a Zarr store (directory) nor a NetCDF file "
        f"(found a file starting with {magic[:4]!r})"
    )


# --------------------------------------------------------------------------------------------
# Coordinates
# --------------------------------------------------------------------------------------------


def one_batch(ds: xr.Dataset, what: str) -> tuple[xr.Dataset, np.ndarray] | None:
    """GenCast's own file layout (its example data and its predictions: `time` as offsets, the
    dates in a `datetime` (batch, time) coordinate, fields with a `batch` dim of one): the
    dataset without the batch dim and the `datetime` coordinate, and the dates. None for any
    other layout; `DataError` for several batches (`what` names the file's role)."""
    if not (
        "time" in ds.dims
        and np.issubdtype(ds["time"].dtype, np.timedelta64)
        and "datetime" in ds.coords
    ):
        return None
    if "batch" in ds.dims and ds.sizes["batch"] != 1:
        raise DataError(
            f"{what} has {ds.sizes['batch']} batches (GenCast's layout: a `batch` dim, dates in "
            "a `datetime` coordinate); expected one: save each batch (ds.isel(batch=i)) apart"
        )
    dates = ds["datetime"]
    if "batch" in dates.dims:
        dates = dates.isel(batch=0)
    ds = ds.isel(batch=0, drop=True) if "batch" in ds.dims else ds
    return ds.drop_vars("datetime"), np.asarray(dates.values)


def _from_batch_layout(ds: xr.Dataset) -> xr.Dataset:
    """GenCast's example-data layout (`one_batch`) as a plain ERA5 layout: time holds the dates.
    Anything else is returned as it is."""
    found = one_batch(ds, "the data")
    return ds if found is None else found[0].assign_coords(time=found[1])


def normalize_coords(ds: xr.Dataset) -> xr.Dataset:
    """Rename to `lat/lon/level`, sort `lat` ascending and `lon` into ascending [0, 360), level in hPa.

    Accepts `latitude/longitude` (ARCO-ERA5, WeatherBench 2), descending latitude, longitudes in
    [-180, 180), and levels in Pa (converted when the largest level exceeds 2000). The Climate Data
    Store's NetCDF layout is accepted too: a `valid_time` time dim, `pressure_level`, and ECMWF
    short variable names (`t`, `z`, `t2m`, `msl`, ...; `_SHORT_NAMES`), each renamed to its ERA5
    long name unless the dataset already has that name. So is the layout of GenCast's example
    data files (`source-era5_date-...nc`): a `batch` dim of one, `time` as offsets
    (timedelta64) and the dates in a `datetime` (batch, time) coordinate (`_from_batch_layout`).
    """
    ds = _from_batch_layout(ds)
    renames = {}
    for canon, names in (("lat", _LAT_NAMES), ("lon", _LON_NAMES), ("level", _LEVEL_NAMES)):
        present = [n for n in names if n in ds.dims or n in ds.coords]
        if canon not in present and present:
            renames[present[0]] = canon
    if "valid_time" in ds.dims and "time" not in ds.dims and "time" not in ds.coords:
        renames["valid_time"] = "time"
    for short, long in (*_SHORT_NAMES.items(), ("z", None)):
        if short not in ds.data_vars:
            continue
        if long is None:  # z: geopotential on levels, the surface geopotential without
            on_levels = any(d in _LEVEL_NAMES for d in ds[short].dims)
            long = "geopotential" if on_levels else "geopotential_at_surface"
        if long not in ds.variables:
            renames[short] = long
    if renames:
        ds = ds.rename(renames)
    if "lat" in ds.dims and ds.sizes["lat"] > 1:
        lat = ds["lat"].values
        if lat[0] > lat[-1]:
            ds = ds.isel(lat=slice(None, None, -1))
    if "lon" in ds.dims:
        lon = ds["lon"].values.astype(np.float64)
        wrapped = np.mod(lon, 360.0)
        if not np.array_equal(wrapped, lon) or np.any(np.diff(wrapped) < 0):
            ds = ds.assign_coords(lon=wrapped).sortby("lon")
    if "level" in ds.dims:
        lev = ds["level"].values.astype(np.float64)
        if lev.size and lev.max() > 2000:  # Pa
            lev = lev / 100.0
        if np.allclose(lev, np.round(lev)):
            ds = ds.assign_coords(level=np.round(lev).astype(np.int64))
        else:
            ds = ds.assign_coords(level=lev)
    return ds


# --------------------------------------------------------------------------------------------
# Derived variables
# --------------------------------------------------------------------------------------------


def time_spacing(times: np.ndarray) -> str:
    """The distinct steps between the sorted unique `times`, for messages: "12 h", "6 h, 12 h",
    or "none (1 time)"; at most three are named."""
    t = np.unique(np.asarray(times).astype("datetime64[ns]"))
    gaps = np.unique(np.diff(t)) // np.timedelta64(1, "m") / 60
    if not gaps.size:
        return f"none ({t.size} time{'' if t.size == 1 else 's'})"
    return ", ".join(f"{g:g} h" for g in gaps[:3]) + (" ..." if gaps.size > 3 else "")


def year_progress(times: np.ndarray) -> np.ndarray:
    """Fraction of the (tropical) year elapsed: (seconds since 1970 / 86400 / 365.24219) mod 1.

    As GenCast computes it (reference notes §3.2); times: datetime64 array; returns float64.
    """
    seconds = np.asarray(times).astype("datetime64[s]").astype(np.int64).astype(np.float64)
    return np.mod(seconds / AVG_SECONDS_PER_YEAR, 1.0)


def day_progress(times: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """Local fraction of the day: (UTC seconds of day / 86400 + lon / 360) mod 1.

    Returns [time, lon] float64 (GenCast's `day_progress` with dims (time, lon)).
    """
    seconds = np.asarray(times).astype("datetime64[s]").astype(np.int64)
    utc = np.mod(seconds, 86400).astype(np.float64) / SECONDS_PER_DAY
    return np.mod(utc[:, None] + np.asarray(lon_deg, np.float64)[None, :] / 360.0, 1.0)


def progress_forcings(times: np.ndarray, lon_deg: np.ndarray) -> dict[str, xr.DataArray]:
    """The four GenCast progress forcings as float32 DataArrays with GenCast's dims.

    year_progress_sin/cos: (time,); day_progress_sin/cos: (time, lon). sin/cos of 2*pi*progress.
    """
    times = np.asarray(times)
    yp = 2 * np.pi * year_progress(times)
    dp = 2 * np.pi * day_progress(times, lon_deg)
    coords_t = {"time": times}
    coords_tl = {"time": times, "lon": np.asarray(lon_deg)}
    return {
        "year_progress_sin": xr.DataArray(np.sin(yp).astype(np.float32), coords_t, ("time",)),
        "year_progress_cos": xr.DataArray(np.cos(yp).astype(np.float32), coords_t, ("time",)),
        "day_progress_sin": xr.DataArray(np.sin(dp).astype(np.float32), coords_tl, ("time", "lon")),
        "day_progress_cos": xr.DataArray(np.cos(dp).astype(np.float32), coords_tl, ("time", "lon")),
    }


def add_progress_forcings(ds: xr.Dataset, names: Iterable[str] | None = None) -> xr.Dataset:
    """Add (or overwrite) the progress forcings computed from `ds.time` and `ds.lon`."""
    forcings = progress_forcings(ds["time"].values, ds["lon"].values)
    if names is not None:
        forcings = {k: v for k, v in forcings.items() if k in set(names)}
    for da in forcings.values():
        da.attrs["units"] = "1"
    return ds.assign(forcings)


def _hour_of_day(times: np.ndarray) -> np.ndarray:
    t = np.asarray(times).astype("datetime64[m]").astype(np.int64)
    return np.mod(t, 24 * 60) / 60.0


def precipitation_accumulation(
    hourly: xr.DataArray, valid_times: np.ndarray, hours: int = 12
) -> xr.DataArray:
    """Sum of the `hours` hourly accumulations ending at each valid time (lazy).

    ERA5's hourly `total_precipitation` at time t is the accumulation over (t-1h, t], so the 12 h
    accumulation ending at t is the sum of the values at t-11h, ..., t. Valid times whose full
    history is not in `hourly` are dropped (the caller sees fewer times).
    """
    times = hourly["time"].values
    index = {t: i for i, t in enumerate(times.astype("datetime64[ns]"))}
    keep, rows = [], []
    for t in np.asarray(valid_times).astype("datetime64[ns]"):
        idx = [index.get(t - np.timedelta64(k, "h")) for k in range(hours)]
        if any(i is None for i in idx):
            continue
        keep.append(t)
        rows.append(idx)
    if not keep:
        raise DataError(
            f"{hourly.name}: need {hours} hourly accumulations before each valid time to build "
            f"{PRECIP_12HR}; the store's times {times[:1]}..{times[-1:]} do not provide them"
        )
    rows_arr = np.asarray(rows)  # [n_valid, hours]
    total = None
    for k in range(hours):
        part = hourly.isel(time=rows_arr[:, k]).assign_coords(time=np.asarray(keep))
        total = part if total is None else total + part
    total.name = PRECIP_12HR
    total.attrs = {"units": "m", "long_name": f"total precipitation accumulated over {hours} h"}
    return total


# --------------------------------------------------------------------------------------------
# The full normalization
# --------------------------------------------------------------------------------------------


def source_variables(task: TaskConfig) -> list[str]:
    """ERA5 variables a task needs from a store (state + statics; forcings are computed)."""
    names = set(task.input_variables) | set(task.target_variables) | set(task.static_variables)
    return sorted(n for n in names if variable_kind(n) != "forcing")


def select_times(ds: xr.Dataset, step_hours: int) -> np.ndarray:
    """Times of `ds` on the `step_hours` grid of the day (00/12 UTC for 12 h), whole hours only."""
    times = ds["time"].values
    hours = _hour_of_day(times)
    ok = (np.mod(hours, step_hours) == 0) & (hours == np.round(hours))
    return times[ok]


def canonicalize(
    ds: xr.Dataset,
    task: TaskConfig,
    *,
    grid: GridConfig | None = None,
    time_start: str | np.datetime64 | None = None,
    time_stop: str | np.datetime64 | None = None,
) -> xr.Dataset:
    """Turn an ERA5-style Dataset into the canonical store for `task` (lazy).

    Steps: normalize coordinates and sort time ascending; select the task's variables and pressure
    levels; select times on the task's step grid (00/12 UTC from hourly data) within
    [time_start, time_stop] as xarray slices it (a date alone covers its whole day); build
    `total_precipitation_12hr` (12 h, whatever the step) from hourly `total_precipitation` when
    the store lacks it; drop the time dim of statics (taking their first time); add the progress
    forcings; regrid; cast to float32 with dims ordered (time, level, lat, lon).

    Raises:
      DataError: a variable or pressure level the task needs is missing, or the grid is unusable.
    """
    grid = grid or GridConfig()
    ds = normalize_coords(ds)
    for dim in ("time", "lat", "lon"):
        if dim not in ds.dims:
            raise DataError(
                f"store has no {dim!r} dimension (dims found: {dict(ds.sizes)}); expected time, "
                "lat/latitude, lon/longitude and level"
            )
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise DataError(
            f"the store's time axis holds {ds['time'].dtype} values, not dates (e.g. "
            f"{ds['time'].values[0]}); expected datetime64 times, as in ERA5"
        )
    if not ds.indexes["time"].is_monotonic_increasing:
        # The canonical time axis ascends (as xarray's time slicing below needs); a source's
        # may run backwards.
        ds = ds.sortby("time")
    wanted = source_variables(task)
    for v in sorted(set(wanted) & set(ds.data_vars)):  # (other variables are not read)
        extra = [d for d in ds[v].dims if d not in _CANONICAL_DIMS]
        if extra:
            raise DataError(
                f"variable {v!r} has dims {ds[v].dims}: {extra} beside time, level, lat and lon; "
                "select one value of each (one ensemble member, one batch) and save the store"
            )
    needs_precip = PRECIP_12HR in wanted
    missing = [
        v
        for v in wanted
        if v not in ds.data_vars and not (v == PRECIP_12HR and PRECIP_HOURLY in ds.data_vars)
    ]
    if missing:
        raise DataError(
            f"store lacks variable(s) {missing} needed by the task"
            + (
                f" ({PRECIP_12HR} can also be built from hourly {PRECIP_HOURLY})"
                if needs_precip
                else ""
            )
            + f"; variables found: {sorted(ds.data_vars)}"
        )
    if any(has_level(v) for v in wanted):
        if "level" not in ds.dims:
            raise DataError(
                "store has no 'level' dimension but the task needs atmospheric variables"
            )
        have = set(np.asarray(ds["level"].values).tolist())
        lacking = [lev for lev in task.pressure_levels if lev not in have]
        if lacking:
            raise DataError(
                f"store lacks pressure level(s) {lacking} hPa; levels found: {sorted(have)}"
            )

    # Time selection (on the raw time axis so that precipitation can look back hourly). The
    # window is sliced as xarray slices it (and `open_store` trims to `valid_time_*`): a date
    # without a time of day covers that whole day, so `time_stop: 2020-01-02` keeps its 12 UTC.
    times = ds["time"].values
    window = ds["time"].sel(time=slice(time_start, time_stop)).values
    valid = select_times(ds, task.step_hours)
    valid = valid[np.isin(valid, window)]
    if valid.size == 0:
        raise DataError(
            f"no times on the {task.step_hours} h grid between {time_start or times.min()} and "
            f"{time_stop or times.max()} in the store (store times {times.min()}..{times.max()})"
        )

    out: dict[str, xr.DataArray] = {}
    if needs_precip and PRECIP_12HR not in ds.data_vars:
        # Always 12 h, the variable's definition, whatever the task's step.
        precip = precipitation_accumulation(ds[PRECIP_HOURLY], valid, hours=12)
        valid = precip["time"].values
        out[PRECIP_12HR] = precip
    levels = list(task.pressure_levels)
    for v in wanted:
        if v in out:
            continue
        da = ds[v]
        if variable_kind(v) == "static":
            if "time" in da.dims:
                da = da.isel(time=0, drop=True)
            da = da.drop_vars([c for c in da.coords if c not in da.dims], errors="ignore")
        else:
            if "time" not in da.dims:
                raise DataError(f"variable {v!r} has no time dim (dims {da.dims}); expected time")
            da = da.sel(time=valid)
        if has_level(v):
            da = da.sel(level=levels)
        elif "level" in da.dims:
            raise DataError(f"surface variable {v!r} has a level dim {da.dims}")
        out[v] = da
    result = xr.Dataset(out)
    result = result.drop_vars(
        [c for c in result.coords if c not in ("time", "level", "lat", "lon")], errors="ignore"
    )
    if "level" in result.dims:
        result = result.assign_coords(level=np.asarray(levels, dtype=np.int64))
    result = regrid_dataset(result, grid)
    result = add_progress_forcings(
        result,
        [n for n in task.forcing_variables + task.input_variables if variable_kind(n) == "forcing"],
    )
    result = _order_and_cast(result)
    result.attrs = {"gencast_rmmd_canonical": 1}
    for name, da in result.data_vars.items():
        da.attrs.setdefault("units", VARIABLES[name][1] if name in VARIABLES else "")
    return result


def _order_and_cast(ds: xr.Dataset) -> xr.Dataset:
    order = [d for d in ("time", "level", "lat", "lon") if d in ds.dims]
    out = {}
    for name, da in ds.data_vars.items():
        dims = [d for d in order if d in da.dims] + [d for d in da.dims if d not in order]
        da = da.transpose(*dims)
        if da.dtype != np.float32:
            da = da.astype(np.float32)
        out[name] = da
    return xr.Dataset(out, attrs=ds.attrs)


def regrid_dataset(ds: xr.Dataset, grid: GridConfig) -> xr.Dataset:
    """Apply the configured horizontal regridding (lazy)."""
    if grid.method == "none":
        return ds
    if grid.method == "subsample":
        return regrid_lib.subsample(ds, grid.subsample_factor)
    return regrid_lib.conservative(
        ds, regrid_lib.equiangular_grid(grid.lat_points, grid.lon_points, grid.with_poles)
    )


def open_canonical(cfg: DataConfig, *, source: str | None = None) -> xr.Dataset:
    """Open `cfg.source` (or `source`) and canonicalize it for `cfg.task` (lazy).

    For the `embedded` source this opens the cached nature run (building it on first use).
    """
    src = source or cfg.source
    if src == "embedded":
        from gencast_rmmd.data.nature_run import check_task, embedded_store

        check_task(cfg.task, "drop them from the task or use an ERA5 source")
        src = str(embedded_store(config=cfg.nature_run, levels_hpa=cfg.task.pressure_levels))
    ds = open_store(src, token=cfg.token)
    return canonicalize(
        ds, cfg.task, grid=cfg.grid, time_start=cfg.time_start, time_stop=cfg.time_stop
    )


def fill_sst(ds: xr.Dataset, min_stats: xr.Dataset | None) -> xr.Dataset:
    """Fill `sea_surface_temperature` NaNs (land) with `min_by_level` (GenCast's NaNCleaner)."""
    if SST not in ds or min_stats is None:
        return ds
    fill = float(np.asarray(min_stats[SST]))
    return ds.assign({SST: ds[SST].fillna(fill)})
