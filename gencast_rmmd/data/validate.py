"""Check a store against a task: every problem is reported with what was expected and found.

`check_store(ds, task)` returns a list of `Problem`s (empty when the store is usable);
`validate_store(path, task)` opens the store (errors for a missing path or a non-Zarr/NetCDF file)
and raises one `DataError` listing all problems. Coordinates are normalized first (ERA5's
`latitude/longitude` names and descending latitude are accepted, as on read).

Checks, each with its own code: missing-variable, missing-level, dims (wrong or missing dims),
grid (latitude not equiangular, longitudes not a full equally spaced circle, or a shape the
spherical-harmonic noise cannot use: n_lon = 2 n_lat without poles, 2 (n_lat - 1) with poles),
time-order (not increasing), duplicate-times, time-gaps (not a regular `step_hours` series),
dtype (not float32/float64), non-finite (NaN/Inf where none may be; SST may be NaN over land, it is
filled with `min_by_level`), static-varies (a static field with a time dim that changes),
incomplete (a `data prepare` store whose writing did not finish).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import xarray as xr

from gencast_rmmd.data.task import TaskConfig, has_level, variable_kind
from gencast_rmmd.errors import DataError

NAN_ALLOWED = {"sea_surface_temperature"}
# `data prepare` sets this root attribute to "in-progress" when it writes the template and to
# "complete" after the last chunk; an interrupted store is therefore never reported complete.
PREPARE_STATE_ATTR = "gencast_rmmd_prepare"


@dataclasses.dataclass(frozen=True)
class Problem:
    code: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


def expected_dims(name: str) -> tuple[str, ...]:
    """The canonical dims of an ERA5 variable in the store."""
    kind = variable_kind(name)
    if kind == "static":
        return ("lat", "lon")
    if name.startswith("year_progress"):
        return ("time",)
    if name.startswith("day_progress"):
        return ("time", "lon")
    return ("time", "level", "lat", "lon") if has_level(name) else ("time", "lat", "lon")


def _check_grid(ds: xr.Dataset) -> list[Problem]:
    out = []
    lat = np.asarray(ds["lat"].values, np.float64)
    lon = np.asarray(ds["lon"].values, np.float64)
    n_lat, n_lon = lat.size, lon.size
    if n_lat < 2 or n_lon < 2:
        return [Problem("grid", f"expected at least 2x2 lat/lon points, found {n_lat}x{n_lon}")]
    dlat = np.diff(lat)
    if not np.allclose(dlat, dlat[0], rtol=1e-6, atol=1e-6):
        out.append(
            Problem(
                "grid",
                "latitude is not equiangular: expected equal spacing, found spacings from "
                f"{dlat.min():.6g} to {dlat.max():.6g} deg",
            )
        )
        return out
    poles = np.isclose(lat[0], -90.0) and np.isclose(lat[-1], 90.0)
    if poles:
        want = -90.0 + np.arange(n_lat) * 180.0 / (n_lat - 1)
    else:
        want = -90.0 + (np.arange(n_lat) + 0.5) * 180.0 / n_lat
    if not np.allclose(lat, want, atol=1e-6):
        out.append(
            Problem(
                "grid",
                f"latitudes do not cover the sphere equiangularly: expected {want[0]:.6g}.."
                f"{want[-1]:.6g} in {n_lat} steps ({'with' if poles else 'without'} poles), "
                f"found {lat[0]:.6g}..{lat[-1]:.6g}",
            )
        )
    dlon = np.diff(lon)
    if not (np.allclose(dlon, 360.0 / n_lon, atol=1e-6) and lon[0] >= 0 and lon[-1] < 360):
        out.append(
            Problem(
                "grid",
                f"longitude: expected {n_lon} equally spaced points covering [0, 360) with step "
                f"{360.0 / n_lon:.6g}, found {lon[0]:.6g}..{lon[-1]:.6g} (steps {dlon.min():.6g}.."
                f"{dlon.max():.6g})",
            )
        )
    want_lon = 2 * (n_lat - 1) if poles else 2 * n_lat
    if n_lon != want_lon:
        out.append(
            Problem(
                "grid",
                f"grid {n_lat}x{n_lon} is not usable for spherical-harmonic noise: expected "
                f"n_lon = {want_lon} for {n_lat} latitudes ({'with' if poles else 'without'} poles)",
            )
        )
    return out


def _check_times(times: np.ndarray, step_hours: int) -> list[Problem]:
    out = []
    if times.size < 2:
        return out
    d = np.diff(times.astype("datetime64[ns]")).astype("timedelta64[ns]")
    if np.any(d < np.timedelta64(0, "ns")):
        i = int(np.nonzero(d < np.timedelta64(0, "ns"))[0][0])
        out.append(
            Problem(
                "time-order",
                f"time is not monotonic increasing: {times[i]} is followed by {times[i + 1]}",
            )
        )
    uniq, counts = np.unique(times, return_counts=True)
    if np.any(counts > 1):
        dup = uniq[counts > 1]
        out.append(
            Problem(
                "duplicate-times",
                f"expected unique times, found {dup.size} duplicated, e.g. {dup[0]}",
            )
        )
    step = np.timedelta64(step_hours, "h").astype("timedelta64[ns]")
    s = np.sort(uniq)
    gaps = np.nonzero(np.diff(s) != step)[0]
    if gaps.size:
        i = gaps[0]
        out.append(
            Problem(
                "time-gaps",
                f"expected a regular {step_hours} h series, found {gaps.size} irregular step(s), "
                f"first {s[i]} -> {s[i + 1]}",
            )
        )
    return out


def schema_problems(ds: xr.Dataset, task: TaskConfig) -> list[Problem]:
    """The problems of `ds` for `task` that its metadata and coordinates show (dims, variables,
    levels, dtypes, grid, time axis): no data variable is read, so this is cheap on any store,
    and what a command checks before long work. `check_store` adds the checks that read data."""
    from gencast_rmmd.data.era5 import normalize_coords

    problems: list[Problem] = []
    ds = normalize_coords(ds)
    needed = task.variables
    for dim in ("time", "lat", "lon"):
        if dim not in ds.dims:
            problems.append(
                Problem("dims", f"expected a {dim!r} dimension, found dims {sorted(ds.dims)}")
            )
    if any(has_level(v) for v in needed) and "level" not in ds.dims:
        problems.append(
            Problem("dims", f"expected a 'level' dimension (hPa), found dims {sorted(ds.dims)}")
        )
    missing = [v for v in needed if v not in ds.data_vars]
    for v in missing:
        hint = ""
        if variable_kind(v) == "forcing":
            hint = " (`gencast-rmmd data prepare` adds the progress forcings)"
        problems.append(
            Problem("missing-variable", f"expected variable {v!r}, not found in the store{hint}")
        )
    if "level" in ds.dims:
        have = set(np.asarray(ds["level"].values).tolist())
        for lev in task.pressure_levels:
            if lev not in have:
                problems.append(
                    Problem(
                        "missing-level",
                        f"expected pressure level {lev} hPa, found levels {sorted(have)}",
                    )
                )
    present = [v for v in needed if v in ds.data_vars]
    for v in present:
        want = expected_dims(v)
        got = ds[v].dims
        static_with_time = variable_kind(v) == "static" and set(got) == set(want) | {"time"}
        if set(got) != set(want) and not static_with_time:
            problems.append(
                Problem("dims", f"variable {v!r}: expected dims {want}, found {tuple(got)}")
            )
        if not np.issubdtype(ds[v].dtype, np.floating):
            problems.append(
                Problem("dtype", f"variable {v!r}: expected float32, found {ds[v].dtype}")
            )
    if {"lat", "lon"} <= set(ds.dims):
        problems.extend(_check_grid(ds))
    if "time" in ds.dims:
        problems.extend(_check_times(np.asarray(ds["time"].values), task.step_hours))
    return problems


def check_store(
    ds: xr.Dataset,
    task: TaskConfig,
    *,
    check_values: bool = True,
    time_block: int = 64,
    source: str = "store",
) -> list[Problem]:
    """All problems of `ds` for `task` (see the module docstring): `schema_problems`, then a
    static field that changes in time and, with `check_values`, every value for NaN/Inf,
    streaming `time_block` times at a time; a chunk that cannot be decoded is an `unreadable`
    problem naming `source` (the store's path) and the variable."""
    from gencast_rmmd.data.era5 import normalize_coords

    problems = schema_problems(ds, task)
    ds = normalize_coords(ds)
    present = [v for v in task.variables if v in ds.data_vars]
    for v in present:
        da = ds[v]
        if variable_kind(v) == "static" and "time" in da.dims and da.sizes["time"] > 1:
            first = np.asarray(da.isel(time=0).values)
            for i in range(1, da.sizes["time"]):
                if not np.array_equal(np.asarray(da.isel(time=i).values), first, equal_nan=True):
                    problems.append(
                        Problem(
                            "static-varies",
                            f"static {v!r} has a time dim and changes over time (time index {i} "
                            "differs from index 0); expected a field constant in time or dims "
                            "(lat, lon)",
                        )
                    )
                    break
    if check_values:
        scan = [
            v for v in present if v not in NAN_ALLOWED and np.issubdtype(ds[v].dtype, np.floating)
        ]
        lazy = [v for v in scan if ds[v].chunks is not None]
        counts = {}
        if lazy:
            # One dask reduction over all variables: streams chunk by chunk, in parallel.
            import dask

            try:
                totals = dask.compute(*[(~np.isfinite(ds[v].data)).sum() for v in lazy])
                counts = {v: int(n) for v, n in zip(lazy, totals)}
            except Exception:  # an undecodable chunk: found variable by variable below
                counts = {}
        for v in scan:
            if counts.get(v, None) == 0:
                continue
            try:
                n_bad, where = _count_nonfinite(ds[v], time_block, source)
            except DataError as e:
                problems.append(Problem("unreadable", str(e)))
                continue
            if n_bad:
                problems.append(
                    Problem(
                        "non-finite",
                        f"variable {v!r}: expected finite values, found {n_bad} NaN/Inf "
                        f"(first at {where})",
                    )
                )
    return problems


def _count_nonfinite(da: xr.DataArray, block: int, source: str = "store") -> tuple[int, str]:
    from gencast_rmmd.safety import load_or_data_error

    if "time" not in da.dims:
        x = np.asarray(load_or_data_error(da, source, "the static field").values)
        bad = ~np.isfinite(x)
        return int(bad.sum()), "static field" if bad.any() else ""
    total, where = 0, ""
    for s in range(0, da.sizes["time"], block):
        part = da.isel(time=slice(s, s + block))
        t0 = str(part["time"].values[0])[:19]
        x = np.asarray(load_or_data_error(part, source, f"the {block} times from {t0}").values)
        bad = ~np.isfinite(x)
        n = int(bad.sum())
        if n and not where:
            t = np.argwhere(bad)[0][da.dims.index("time")]
            where = f"time {da['time'].values[s + t]}"
        total += n
    return total, where


def is_incomplete(ds_or_attrs) -> bool:
    """True for a store written by `data prepare` that has not finished."""
    attrs = getattr(ds_or_attrs, "attrs", ds_or_attrs)
    state = attrs.get(PREPARE_STATE_ATTR)
    return state is not None and state != "complete"


def require_complete(ds_or_attrs, path: str | os.PathLike) -> None:
    """Raise `DataError` if the store at `path` is an unfinished `data prepare` output: a
    half-written store is never used as data (only `validate_store` opens it, to report it)."""
    if is_incomplete(ds_or_attrs):
        attrs = getattr(ds_or_attrs, "attrs", ds_or_attrs)
        raise DataError(
            f"store {os.fspath(path)!r} is incomplete: `data prepare` did not finish writing it "
            f"(attribute {PREPARE_STATE_ATTR}={attrs[PREPARE_STATE_ATTR]!r}); re-run the same "
            "prepare command to complete it"
        )


def time_coverage(
    times: np.ndarray,
    task: TaskConfig,
    splits: dict[str, tuple[str, str]] | None = None,
    window: tuple[str | None, str | None] = (None, None),
) -> tuple[dict, list[str]]:
    """What a store's `times` hold for a data config: `({"times": n, "first": .., "last": ..,
    "examples": n, "splits": {name: examples}}, notes)`. An example is an init time with its input
    frames and target in the store; a split counts the examples whose whole span (first input frame
    .. target) lies inside it (`training.periods.select_init_times`, the trainers' rule). `notes`
    name each split with no example and each end of `window` (the config's `time_start`,
    `time_stop`) that the store does not reach. These are notes, not problems: a store prepared
    for a shorter period (`--set time_start=...`) or for evaluation only is still a valid store."""
    from gencast_rmmd.data.examples import valid_init_times
    from gencast_rmmd.training.periods import select_init_times

    t = np.sort(np.asarray(times).astype("datetime64[ns]"))
    if t.size == 0:
        return {"times": 0, "examples": 0, "splits": {}}, ["the store holds no time"]
    inits = valid_init_times(t, task)
    first, last = str(t[0].astype("datetime64[s]")), str(t[-1].astype("datetime64[s]"))
    info = {"times": int(t.size), "first": first, "last": last, "examples": int(inits.size)}
    info["splits"] = {
        name: int(select_init_times(inits, a, b, task).size)
        for name, (a, b) in (splits or {}).items()
    }
    notes = [
        f"split {name!r} ({splits[name][0]} .. {splits[name][1]}) holds no example of the store "
        f"({first} .. {last}): an example needs {task.input_frames} input frame(s) and its "
        f"{task.step_hours} h target inside the split"
        for name, n in info["splits"].items()
        if n == 0
    ]
    start, stop = window
    if start is not None and t[0] > np.datetime64(start, "ns"):
        notes.append(f"the store starts at {first}, after the config's time_start {start}")
    if stop is not None and t[-1] < np.datetime64(stop, "ns"):
        notes.append(f"the store ends at {last}, before the config's time_stop {stop}")
    return info, notes


def validate_store(
    path: str | os.PathLike,
    task: TaskConfig,
    *,
    check_values: bool = True,
    splits: dict[str, tuple[str, str]] | None = None,
    window: tuple[str | None, str | None] = (None, None),
) -> tuple[dict, list[str]]:
    """Open `path` and check it; raise `DataError` listing every problem, else return what the
    store holds for the task, `splits` and `window` (`time_coverage`: a description and notes)."""
    from gencast_rmmd.data.era5 import open_store

    ds = open_store(path, trim_to_valid_range=False, allow_incomplete=True)
    problems = []
    if is_incomplete(ds):
        problems.append(
            Problem(
                "incomplete",
                f"store {os.fspath(path)!r} was not finished by `data prepare` (attribute "
                f"{PREPARE_STATE_ATTR}={ds.attrs[PREPARE_STATE_ATTR]!r}); re-run prepare to "
                "complete it",
            )
        )
    problems += check_store(ds, task, check_values=check_values, source=os.fspath(path))
    if problems:
        raise problems_error(path, problems)
    from gencast_rmmd.data.era5 import normalize_coords

    times = normalize_coords(ds)["time"].values  # no problem: it has a time dim
    return time_coverage(times, task, splits, window)


def problems_error(path: str | os.PathLike, problems: list[Problem]) -> DataError:
    """One `DataError` listing every problem of the store at `path`, one per line."""
    return DataError(
        f"store {os.fspath(path)!r} does not match the task ({len(problems)} problem(s)):\n  "
        + "\n  ".join(str(p) for p in problems)
    )
