"""Normalization statistics with GenCast's names, dims and meaning (reference notes §3.3).

Four Datasets, keyed by variable name; atmospheric variables have a `level` dim, everything else
is a scalar:

- `mean_by_level`: mean over time, lat and lon (and any other non-level dim);
- `stddev_by_level`: standard deviation over the same dims (population, ddof=0);
- `diffs_stddev_by_level`: standard deviation of the 12 h differences x(t + 12 h) - x(t) (the
  step is `data stats --step-hours`, recorded in the file's `difference_step_hours`), over
  all pairs of store times exactly one step apart, found by timestamp (a gap in the series
  contributes no pair; a 6-hourly or descending time axis gives the same pairs as a 12-hourly
  ascending one); statics do not change, so their value is 0 (normalization then uses unit
  scale), while a time-varying variable without a single pair is a `DataError`;
- `min_by_level`: the minimum (used only to fill sea-surface-temperature NaNs over land).

Means are plain (not area-weighted) averages over grid points; NaNs are skipped. The computation
is streaming: `chunk_moments` reduces one chunk of times to partial moments (count, mean, M2,
min), `merge_moments` combines two partials with Chan et al.'s parallel update (exact, stable),
and `finalize` turns them into the four Datasets. `pipelines/stats.py` runs the same functions
under Apache Beam; `compute_stats` runs them in-process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np
import xarray as xr

from gencast_rmmd.data.era5 import netcdf_engine
from gencast_rmmd.errors import DataError
from gencast_rmmd.safety import file_sha256

STATS_FILES = {
    "mean": "mean_by_level.nc",
    "stddev": "stddev_by_level.nc",
    "diffs_stddev": "diffs_stddev_by_level.nc",
    "min": "min_by_level.nc",
}


@dataclasses.dataclass
class Moments:
    """Partial moments per variable: dict name -> arrays of shape [n_level] or [] (float64).

    count: number of finite values; mean: their mean; m2: sum of squared deviations from the mean;
    minimum: their minimum (+inf when count is 0). `levels` holds the level coordinate (or None);
    `timed` names the variables that have a time dim (`finalize` requires differences of them).
    """

    count: dict[str, np.ndarray]
    mean: dict[str, np.ndarray]
    m2: dict[str, np.ndarray]
    minimum: dict[str, np.ndarray]
    levels: dict[str, np.ndarray | None]
    timed: frozenset[str] = frozenset()


def _reduce_var(da: xr.DataArray):
    x = np.asarray(da.values, dtype=np.float64)
    if "level" in da.dims:
        x = np.moveaxis(x, da.dims.index("level"), 0).reshape(da.sizes["level"], -1)
        levels = np.asarray(da["level"].values)
    else:
        x = x.reshape(1, -1)
        levels = None
    valid = np.isfinite(x)
    n = valid.sum(axis=1).astype(np.float64)
    x0 = np.where(valid, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, x0.sum(axis=1) / np.maximum(n, 1), 0.0)
    dev = np.where(valid, x - mean[:, None], 0.0)
    m2 = (dev**2).sum(axis=1)
    mn = np.where(valid, x, np.inf).min(axis=1)
    if levels is None:
        n, mean, m2, mn = n[0], mean[0], m2[0], mn[0]
    return n, mean, m2, mn, levels


def chunk_moments(ds: xr.Dataset) -> Moments:
    """Partial moments of every data variable of `ds` (reduced over all dims except `level`)."""
    timed = frozenset(str(k) for k, v in ds.data_vars.items() if "time" in v.dims)
    out = Moments({}, {}, {}, {}, {}, timed)
    for name, da in ds.data_vars.items():
        n, mean, m2, mn, levels = _reduce_var(da)
        out.count[name], out.mean[name], out.m2[name], out.minimum[name] = n, mean, m2, mn
        out.levels[name] = levels
    return out


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Combine two partials (Chan, Golub & LeVeque 1979 parallel variance update)."""
    out = Moments({}, {}, {}, {}, {}, a.timed | b.timed)
    for name in sorted(set(a.count) | set(b.count)):
        if name not in a.count:
            for f in ("count", "mean", "m2", "minimum", "levels"):
                getattr(out, f)[name] = getattr(b, f)[name]
            continue
        if name not in b.count:
            for f in ("count", "mean", "m2", "minimum", "levels"):
                getattr(out, f)[name] = getattr(a, f)[name]
            continue
        na, nb = a.count[name], b.count[name]
        n = na + nb
        delta = b.mean[name] - a.mean[name]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(n > 0, nb / np.maximum(n, 1), 0.0)
        out.count[name] = n
        out.mean[name] = a.mean[name] + delta * frac
        out.m2[name] = a.m2[name] + b.m2[name] + delta**2 * na * frac
        out.minimum[name] = np.minimum(a.minimum[name], b.minimum[name])
        out.levels[name] = a.levels[name]
    return out


_MOMENT_FIELDS = ("count", "mean", "m2", "minimum")


def save_moments(m: Moments | None, path: str) -> None:
    """`m` (None too: a block without difference pairs) as an .npz at local `path`, exact and
    without pickles, written whole or not at all: a block's work kept for a resumed pipeline."""
    from gencast_rmmd.remote import written

    names = sorted(m.count) if m is not None else []
    arrays = {}
    for i, name in enumerate(names):
        for f in _MOMENT_FIELDS:
            arrays[f"{f}{i}"] = np.asarray(getattr(m, f)[name])
        if m.levels[name] is not None:
            arrays[f"levels{i}"] = np.asarray(m.levels[name])
    meta = {"none": m is None, "names": names, "timed": sorted(m.timed) if m is not None else []}
    with written(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, __meta__=np.array(json.dumps(meta)), **arrays)


def load_moments(path: str) -> Moments | None:
    """The `Moments` (or None) that `save_moments` wrote."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        if meta["none"]:
            return None
        out = Moments({}, {}, {}, {}, {}, frozenset(meta["timed"]))
        for i, name in enumerate(meta["names"]):
            for f in _MOMENT_FIELDS:
                getattr(out, f)[name] = z[f"{f}{i}"]
            out.levels[name] = z[f"levels{i}"] if f"levels{i}" in z else None
    return out


def _to_dataset(values: dict[str, np.ndarray], levels: dict[str, np.ndarray | None]) -> xr.Dataset:
    data = {}
    for name, v in values.items():
        if levels[name] is None:
            data[name] = xr.DataArray(np.float64(v))
        else:
            data[name] = xr.DataArray(
                np.asarray(v), dims=("level",), coords={"level": levels[name]}
            )
    return xr.Dataset(data)


# Attribute of `diffs_stddev_by_level.nc` recording the step of its differences (ours; DeepMind's
# files have none, and are then taken as made for the task's step).
DIFF_STEP_ATTR = "difference_step_hours"


def finalize(values: Moments, diffs: Moments, step_hours: int = 12) -> dict[str, xr.Dataset]:
    """The four stats Datasets from the moments of the values and of the `step_hours`
    differences (recorded as the `DIFF_STEP_ATTR` attribute of `diffs_stddev`).

    Statics (variables without a time dim) get a diffs stddev of 0. A time-varying variable
    without a finite difference (no two times one step apart) is a DataError: a stddev of 0
    would silently normalize its residuals with unit scale.
    """
    for name, n in values.count.items():
        if np.any(np.asarray(n) == 0):
            raise DataError(f"statistics: variable {name!r} has no finite values")
    std = {k: np.sqrt(values.m2[k] / values.count[k]) for k in values.count}
    dstd = {}
    for k in values.count:
        if k not in values.timed:
            dstd[k] = np.zeros_like(np.asarray(values.mean[k]))
        elif k in diffs.count and np.all(np.asarray(diffs.count[k]) > 0):
            dstd[k] = np.sqrt(diffs.m2[k] / diffs.count[k])
        else:
            raise DataError(
                f"statistics: variable {k!r} has no difference x(t + step) - x(t): expected "
                "pairs of store times exactly one step apart (the step of `data stats "
                "--step-hours`), found none with finite values"
            )
    diffs_stddev = _to_dataset(dstd, values.levels)
    diffs_stddev.attrs[DIFF_STEP_ATTR] = int(step_hours)
    return {
        "mean": _to_dataset(values.mean, values.levels),
        "stddev": _to_dataset(std, values.levels),
        "diffs_stddev": diffs_stddev,
        "min": _to_dataset(values.minimum, values.levels),
    }


def difference_pairs(times: np.ndarray, step_hours: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later): the positions in `times` of every pair (t, t + step) of times exactly
    `step_hours` apart, found by timestamp, so that a gap, a finer spacing (6-hourly data) or a
    descending axis gives exactly the pairs that exist; in the order of the later positions."""
    t = np.asarray(times).astype("datetime64[ns]")
    if t.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    order = np.argsort(t, kind="stable")
    ordered = t[order]
    wanted = t - np.timedelta64(step_hours, "h").astype("timedelta64[ns]")
    k = np.minimum(np.searchsorted(ordered, wanted), t.size - 1)
    hit = ordered[k] == wanted
    return order[k[hit]], np.nonzero(hit)[0]


def difference_windows(
    times: np.ndarray, block: int, step_hours: int = 12
) -> list[tuple[int, int]]:
    """`(start, window)` for each block of positions `[start, start + block)` of the time axis
    `times`: where to begin reading for the block's differences, the lowest position of a pair
    whose higher position is in the block (`start` itself when none reaches further back). Each
    pair belongs to the block of its higher position, so blocks read as `[window, start + block)`
    and given to `time_differences` with `block_start=start - window` count every pair exactly
    once. The pairs are found once for the whole axis (`difference_pairs`)."""
    n = len(times)
    starts = np.arange(0, n, block)
    window = starts.copy()
    earlier, later = difference_pairs(times, step_hours)
    if not earlier.size:  # refused here, before any block is read (else after all of them)
        from gencast_rmmd.data.era5 import time_spacing

        raise DataError(
            f"statistics: no two times of the store are {step_hours} h apart (the step of "
            "`data stats --step-hours`), so the difference statistics (diffs_stddev_by_level) "
            f"have no data; the store's time spacing: {time_spacing(times)}"
        )
    high, low = np.maximum(earlier, later), np.minimum(earlier, later)
    np.minimum.at(window, high // block, low)
    return [(int(a), int(w)) for a, w in zip(starts, window)]


def time_differences(ds: xr.Dataset, step_hours: int = 12, block_start: int = 0) -> xr.Dataset:
    """x(t + step) - x(t) for every pair of times of `ds` exactly `step_hours` apart, found by
    timestamp (`difference_pairs`), time-varying variables only, labelled by the later time.
    `block_start`: only the pairs with a time at or after that position of `ds` (`ds` then
    begins with the earlier times a block needs: `difference_windows`)."""
    tv = ds[[k for k, v in ds.data_vars.items() if "time" in v.dims]]
    earlier, later = difference_pairs(tv["time"].values, step_hours)
    mine = np.maximum(earlier, later) >= block_start
    after = tv.isel(time=later[mine])
    before = tv.isel(time=earlier[mine]).assign_coords(time=after["time"].values)
    return after - before


def compute_stats(
    ds: xr.Dataset, step_hours: int = 12, chunk_size: int = 64
) -> dict[str, xr.Dataset]:
    """In-process streaming statistics over `ds` in chunks of `chunk_size` times."""
    n = ds.sizes.get("time", 0)
    if n == 0:
        raise DataError("statistics: the store has no times")
    values = None
    diffs = None
    statics = ds[[k for k, v in ds.data_vars.items() if "time" not in v.dims]]
    if statics.data_vars:
        values = chunk_moments(statics.load())
    timed = ds[[k for k, v in ds.data_vars.items() if "time" in v.dims]]
    for start, lo in difference_windows(ds["time"].values, chunk_size, step_hours):
        block = timed.isel(time=slice(start, start + chunk_size)).load()
        m = chunk_moments(block)
        values = m if values is None else merge_moments(values, m)
        # The pairs whose higher position is in this block, read with the earlier times they need.
        pair = timed.isel(time=slice(lo, start + chunk_size)).load()
        d = time_differences(pair, step_hours, block_start=start - lo)
        if d.sizes.get("time", 0):
            dm = chunk_moments(d)
            diffs = dm if diffs is None else merge_moments(diffs, dm)
    return finalize(values, diffs or Moments({}, {}, {}, {}, {}), step_hours)


def check_difference_step(
    stats: dict[str, xr.Dataset], step_hours: int, where: str = "the statistics"
) -> None:
    """DataError when `stats`' differences were taken over another step than the task's
    `step_hours`: the model's residual targets would be scaled by the wrong climatological change
    (12 h differences are about half as large as 24 h ones). Files without the record (DeepMind's)
    pass."""
    found = stats["diffs_stddev"].attrs.get(DIFF_STEP_ATTR)
    if found is not None and int(found) != int(step_hours):
        raise DataError(
            f"{where}: diffs_stddev_by_level holds {int(found)} h differences, but the task steps "
            f"{int(step_hours)} h; compute them with `gencast-rmmd data stats --step-hours "
            f"{int(step_hours)}`"
        )


def save_stats(stats: dict[str, xr.Dataset], out_dir: str | os.PathLike) -> pathlib.Path | str:
    """Write the four NetCDF files into `out_dir`, a local directory (created) or a URL (e.g. a
    bucket on Dataflow, where the pipeline's last step writes them from a worker); each file
    appears whole or not at all (`remote.written`). Returns `out_dir` (a Path when local)."""
    from gencast_rmmd.remote import is_url, local_path, written

    out = os.fspath(out_dir)
    for key, fname in STATS_FILES.items():
        ds = stats[key]
        if "level" in ds.coords:  # NetCDF3 has no int64
            ds = ds.assign_coords(level=ds["level"].values.astype(np.int32))
        with written(f"{out.rstrip('/')}/{fname}") as tmp:
            # NetCDF3 through scipy: readable everywhere, no HDF5 library needed.
            ds.to_netcdf(tmp, engine="scipy")
    return out if is_url(out) else pathlib.Path(local_path(out))


def _stats_dir(stats_dir: str | os.PathLike) -> pathlib.Path:
    """`stats_dir` as a path, once it is known to hold the four files; DataError otherwise. A
    URL (e.g. the official statistics, gs://dm_graphcast/gencast/stats) is read from a local
    copy of its four files (`remote.local_files`)."""
    from gencast_rmmd.remote import local_files

    d = pathlib.Path(local_files(stats_dir, STATS_FILES.values(), DataError))
    if not d.is_dir():
        state = "is not a directory" if d.exists() else "does not exist"
        raise DataError(f"stats dir {str(d)!r} {state} (expected {sorted(STATS_FILES.values())})")
    missing = [f for f in STATS_FILES.values() if not (d / f).is_file()]
    if missing:
        raise DataError(f"stats dir {str(d)!r} lacks {missing}; run `gencast-rmmd data stats`")
    return d


def stats_sha256(stats_dir: str | os.PathLike) -> str:
    """One hex SHA-256 over the stats dir's four files (names and bytes): what identifies the
    normalisation a forecast was made with. DataError naming the missing file(s)."""
    import hashlib

    d = _stats_dir(stats_dir)
    h = hashlib.sha256()
    for fname in sorted(STATS_FILES.values()):
        h.update(f"{fname}:{file_sha256(d / fname)}\n".encode())
    return h.hexdigest()


def check_trained_stats(provenance: dict, stats_dir: str | os.PathLike, checkpoint: str) -> None:
    """`DataError` when `checkpoint`'s provenance records the normalisation statistics it was
    trained with (`stats_sha256`, ours; the official files record none) and `stats_dir` holds
    other ones: its inputs would be normalised otherwise than in training, and its forecasts or
    its students would be worse, silently."""
    recorded = provenance.get("stats_sha256")
    if not recorded:
        return
    recorded = str(np.asarray(recorded))
    found = stats_sha256(stats_dir)
    if found != recorded:
        where = provenance.get("stats")
        where = f" (it recorded {str(np.asarray(where))!r})" if where is not None else ""
        raise DataError(
            f"{checkpoint} was trained with other normalisation statistics than --stats "
            f"{os.fspath(stats_dir)!r} (SHA-256 {recorded[:12]}... recorded, {found[:12]}... "
            f"found): its inputs would be normalised otherwise than in training; give the "
            f"statistics it was trained with{where}"
        )


def load_stats(stats_dir: str | os.PathLike) -> dict[str, xr.Dataset]:
    """Read the stats dir: dict(mean=, stddev=, diffs_stddev=, min=) of in-memory Datasets.

    Raises DataError naming the missing file(s).
    """
    d = _stats_dir(stats_dir)
    out = {}
    for key, fname in STATS_FILES.items():
        engine = netcdf_engine(d / fname)[1] or "scipy"  # scipy names what it cannot read
        try:
            with xr.open_dataset(d / fname, engine=engine) as ds:
                ds = ds.load()
        except ImportError as e:
            raise DataError(
                f"{d / fname}: a NetCDF4/HDF5 file; reading it needs h5py ({e})"
            ) from None
        if "level" in ds.coords:
            ds = ds.assign_coords(level=ds["level"].values.astype(np.int64))
        out[key] = ds
    return out
