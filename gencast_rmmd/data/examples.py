"""Training examples and the streaming loader.

An example at init time t (GenCast's training setup, reference notes §3.2):
- inputs: every input variable at the `input_frames` times t - (F-1)*step, ..., t (statics once);
- forcings: the forcing variables at t + step;
- targets: the target variables at t + step.
Inputs and forcings are normalized with mean/stddev by level; targets are normalized residuals
(target minus the newest input frame, divided by the diffs stddev; targets that are not inputs use
mean/stddev), via `gencast_rmmd.data.normalization`. Sea-surface-temperature NaNs (land) are
filled with `min_by_level` in physical space first, as GenCast's NaNCleaner does.

Channel order comes from `task.layout` only: `stack`/`unstack` turn xarray data into
`[lat, lon, C]` arrays and back following the layout's channel list.

`ExampleSource` is a grain random-access source that reads single examples from the Zarr store
(one slice of a few times per variable; nothing else is held in memory). `make_loader` wraps it in
a grain `DataLoader`: deterministic shuffling per seed, sharding by JAX process, batching, prefetch
threads, and an iterator whose `get_state()`/`set_state()` resume exactly.
"""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from gencast_rmmd.data import normalization as nz
from gencast_rmmd.data.era5 import (
    is_pattern,
    is_url,
    metadata_version,
    open_store,
    open_zarr_group,
    source_path,
    store_id,
)
from gencast_rmmd.data.task import Channel, TaskConfig, has_level, variable_kind
from gencast_rmmd.errors import DataError
from gencast_rmmd.remote import write_text

SST = "sea_surface_temperature"
# Time-varying variables without a lat dim (the progress forcings) up to this size are held in
# memory by `ExampleSource`; everything else is read per example.
SMALL_VARIABLE_BYTES = 64 * 2**20

# --------------------------------------------------------------------------------------------
# Stacking: the only code that maps variables to channels (it follows the layout's channel list)
# --------------------------------------------------------------------------------------------


# The example entries a model step consumes (the int64 `time` stays on the host).
MODEL_KEYS = ("inputs", "forcings", "targets")


def _standard_array(da: xr.DataArray) -> np.ndarray:
    """DataArray -> float32 numpy [time, level, lat, lon], size-1 axes for absent dims."""
    dims = ("time", "level", "lat", "lon")
    extra = [d for d in da.dims if d not in dims]
    if extra:
        raise DataError(f"variable {da.name!r} has unexpected dims {extra} (allowed: {dims})")
    da = da.transpose(*[d for d in dims if d in da.dims])
    x = np.asarray(da.values, dtype=np.float32)
    shape = [da.sizes[d] if d in da.dims else 1 for d in dims]
    return x.reshape(shape)


def stack_arrays(
    arrays: Mapping[str, np.ndarray],
    channels: Sequence[Channel],
    levels: Sequence[int],
    frame_offset: int = 0,
    lat_lon: tuple[int, int] | None = None,
) -> np.ndarray:
    """Gather channels from per-variable arrays into `[lat, lon, C]` float32.

    Args:
      arrays: var -> [time, level, lat, lon] (size-1 axes where a dim is absent; statics and
        forcings are broadcast over missing lat/lon).
      channels: (variable, frame, level) in the wanted order (e.g. `task.layout.inputs`).
      levels: the level coordinate of the arrays' level axis (hPa).
      frame_offset: time index of frame 0 in the arrays' time axis.
      lat_lon: output grid size; inferred from the first array with lat/lon when None.
    """
    level_pos = {int(lev): i for i, lev in enumerate(levels)}
    if lat_lon is None:
        lat_lon = next((a.shape[2], a.shape[3]) for a in arrays.values() if a.shape[2] > 1)
    n_lat, n_lon = lat_lon
    out = np.empty((len(channels), n_lat, n_lon), dtype=np.float32)
    i = 0
    while i < len(channels):
        var = channels[i][0]
        j = i
        while j < len(channels) and channels[j][0] == var:
            j += 1
        a = arrays[var]
        static = a.shape[0] == 1 and variable_kind(var) == "static"
        t_idx = np.array([0 if static else frame_offset + f for _, f, _ in channels[i:j]])
        l_idx = np.array([0 if lev is None else level_pos[int(lev)] for _, _, lev in channels[i:j]])
        out[i:j] = np.broadcast_to(a[t_idx, l_idx], (j - i, n_lat, n_lon))
        i = j
    return np.moveaxis(out, 0, -1)


def stack(ds: xr.Dataset, channels: Sequence[Channel], frame_offset: int = 0) -> np.ndarray:
    """Stack a Dataset (dims among time, level, lat, lon) into `[lat, lon, C]` per `channels`.

    Frame f of a channel reads `time` index `frame_offset + f` of `ds` (statics have no time).
    """
    names = list(dict.fromkeys(c[0] for c in channels))
    missing = [n for n in names if n not in ds]
    if missing:
        raise DataError(f"cannot stack: dataset lacks {missing}")
    arrays = {n: _standard_array(ds[n]) for n in names}
    levels = ds["level"].values if "level" in ds.coords else ()
    return stack_arrays(arrays, channels, levels, frame_offset, (ds.sizes["lat"], ds.sizes["lon"]))


def unstack(
    x: np.ndarray,
    channels: Sequence[Channel],
    lat: np.ndarray,
    lon: np.ndarray,
    times: np.ndarray | None = None,
) -> xr.Dataset:
    """Inverse of `stack`: `[..., lat, lon, C]` -> Dataset.

    Each variable gets dims (`batch`..., `time`, `level`, `lat`, `lon`) with `time` of length
    (number of frames) for time-varying variables (coordinate `times` when given) and no `time`
    for statics; leading array dims are named batch, batch_1, ...
    """
    x = np.asarray(x)
    lead = x.shape[:-3]
    lead_dims = tuple("batch" if k == 0 else f"batch_{k}" for k in range(len(lead)))
    data = {}
    levels_all = sorted({lev for _, _, lev in channels if lev is not None})
    for var in dict.fromkeys(c[0] for c in channels):
        idx = [i for i, c in enumerate(channels) if c[0] == var]
        frames = sorted({channels[i][1] for i in idx})
        levs = sorted({channels[i][2] for i in idx}, key=lambda v: -1 if v is None else v)
        has_lev = levs != [None]
        static = variable_kind(var) == "static"
        shape = lead + (len(frames),) + ((len(levs),) if has_lev else ()) + x.shape[-3:-1]
        arr = np.empty(shape, dtype=x.dtype)
        for i in idx:
            _, f, lev = channels[i]
            key = (slice(None),) * len(lead) + (frames.index(f),)
            key += (levs.index(lev),) if has_lev else ()
            arr[key] = x[..., i]
        dims = lead_dims + ("time",) + (("level",) if has_lev else ()) + ("lat", "lon")
        if static:
            arr = arr[(slice(None),) * len(lead) + (0,)]
            dims = tuple(d for d in dims if d != "time")
        data[var] = (dims, arr)
    coords: dict[str, Any] = {"lat": np.asarray(lat), "lon": np.asarray(lon)}
    if levels_all:
        coords["level"] = np.asarray(levels_all, dtype=np.int64)
    ds = xr.Dataset(data, coords=coords)
    if times is not None:
        ds = ds.assign_coords(time=np.asarray(times))
    return ds


# --------------------------------------------------------------------------------------------
# Physical windows (rollouts and truth)
# --------------------------------------------------------------------------------------------


def _time_index(times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    pos = {t: i for i, t in enumerate(np.asarray(times).astype("datetime64[ns]"))}
    idx = []
    for t in np.asarray(wanted).astype("datetime64[ns]"):
        if t not in pos:
            raise DataError(f"time {t} is not in the store (times {times[0]}..{times[-1]})")
        idx.append(pos[t])
    return np.asarray(idx)


def physical_window(
    ds: xr.Dataset,
    task: TaskConfig,
    init_time,
    lead_steps: int,
    sst_fill: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical (unnormalized) arrays around `init_time` for a rollout of `lead_steps` steps.

    Returns (inputs [lat, lon, C_in] at the input frames ending at init_time,
    forcings [lead_steps, lat, lon, C_f] and targets [lead_steps, lat, lon, C_out] at
    init_time + k*step, k = 1..lead_steps), float32 in layout order. `sst_fill` replaces SST NaNs
    (pass `float(stats["min"]["sea_surface_temperature"])`); without it NaNs are kept.
    """
    lay = task.layout
    step = np.timedelta64(task.step_hours, "h")
    t0 = np.datetime64(init_time, "ns")
    in_times = t0 + step * np.arange(-(task.input_frames - 1), 1)
    out_times = t0 + step * np.arange(1, lead_steps + 1)
    times = ds["time"].values
    need_vars = sorted({c[0] for c in lay.inputs + lay.targets + lay.forcings})
    sub = ds[need_vars]
    if sst_fill is not None and SST in sub:
        sub = sub.assign({SST: sub[SST].fillna(sst_fill)})
    inp = sub.isel(time=_time_index(times, in_times))
    inputs = stack(inp, lay.inputs)
    lat_lon = (ds.sizes["lat"], ds.sizes["lon"])
    if lead_steps:
        tgt = sub.isel(time=_time_index(times, out_times))
        forcings = np.stack([stack(tgt, lay.forcings, k) for k in range(lead_steps)])
        targets = np.stack([stack(tgt, lay.targets, k) for k in range(lead_steps)])
    else:
        forcings = np.zeros((0, *lat_lon, lay.n_forcings), np.float32)
        targets = np.zeros((0, *lat_lon, lay.n_targets), np.float32)
    return inputs, forcings, targets


# --------------------------------------------------------------------------------------------
# The random-access source
# --------------------------------------------------------------------------------------------


def valid_init_times(times: np.ndarray, task: TaskConfig) -> np.ndarray:
    """Init times t whose input frames and t + step are all in `times` (gaps are respected)."""
    t = np.asarray(times).astype("datetime64[ns]")
    have = set(t.tolist())
    step = np.timedelta64(task.step_hours, "h").astype("timedelta64[ns]")
    offsets = [k * step for k in range(-(task.input_frames - 1), 2)]
    return np.array(
        [x for x in t if all((x + o).astype("datetime64[ns]").tolist() in have for o in offsets)],
        dtype="datetime64[ns]",
    )


LOCAL_CACHE_AUTO_MAX_BYTES = 4 * 2**30
_OPEN_LOCK = threading.Lock()  # `ExampleSource._open`, once per source and process


def resolve_local_cache(setting: str | None, source: ExampleSource) -> str | None:
    """A training config's `local_cache` setting -> the directory to give `ExampleSource`.

    "auto" (the default of the trainers): `$GENCAST_RMMD_EXAMPLES_CACHE`, else the user cache
    (`$GENCAST_RMMD_CACHE/examples`, see `nature_run.cache_dir`), when the store is on local disk and its per-example variables at the
    task levels take at most `LOCAL_CACHE_AUTO_MAX_BYTES` (the embedded nature run: 0.43 GB;
    1-degree ERA5 over decades is far larger and keeps reading Zarr); "off" or None: read the
    store directly; anything else: that directory, whatever the size.
    """
    if setting is None or setting == "off":
        return None
    if setting != "auto":
        return setting
    if "://" in source.store:
        return None
    if source.cache_bytes() > LOCAL_CACHE_AUTO_MAX_BYTES:
        return None
    return str(examples_cache_dir())


def examples_cache_dir() -> pathlib.Path:
    """The automatic copies' directory: `$GENCAST_RMMD_EXAMPLES_CACHE`, else
    `$GENCAST_RMMD_CACHE/examples` (default `~/.cache/gencast_rmmd/examples`)."""
    from gencast_rmmd.data.nature_run import cache_dir

    if os.environ.get("GENCAST_RMMD_EXAMPLES_CACHE"):
        return pathlib.Path(os.environ["GENCAST_RMMD_EXAMPLES_CACHE"])
    return cache_dir() / "examples"


# Local copies (`ExampleSource(local_cache=DIR)`): DIR/examples-<key>/ holds one `<variable>.npy`
# per per-example variable, `complete` once they are all written, and `EXAMPLES_RECORD`, what the
# copy was made from (the store, its id and metadata version, the variables and levels: the
# key's ingredients).
EXAMPLES_COPY_PREFIX = "examples-"
EXAMPLES_RECORD = "source.json"


STORE_STATE_KEYS = ("metadata_version", "store_id")


def store_state(store: str | os.PathLike) -> dict[str, Any]:
    """What identifies the current state of the store at `store` in a local copy's key and
    record: its root metadata's `metadata_version` (re-written with the store, and on an append)
    and its store id (a store re-made at the same path gets a new one)."""
    return {"metadata_version": metadata_version(store), "store_id": store_id(store)}


def copy_superseded_by(record: Mapping[str, Any], store: str, current: Mapping[str, Any]) -> bool:
    """Whether the local copy recorded by `record` was made from an earlier state of `store`
    (re-made or rewritten at the same path: a `store_state` other than `current`)."""
    return record.get("store") == store and any(record.get(k) != v for k, v in current.items())


def remove_superseded_copies(cache: pathlib.Path, record: Mapping[str, Any]) -> list[pathlib.Path]:
    """Delete the local copies under `cache` made from an earlier state of `record`'s store: no
    key will name them again. A copy being written (its lock held) is left; a process reading
    one keeps its memory maps (POSIX). Returns the deleted directories."""
    import json
    import shutil

    from gencast_rmmd.locks import file_lock

    current = {k: record[k] for k in STORE_STATE_KEYS}
    removed = []
    for other in sorted(cache.glob(f"{EXAMPLES_COPY_PREFIX}*")):
        try:
            rec = json.loads((other / EXAMPLES_RECORD).read_text())
        except (OSError, ValueError):
            continue  # no record: `gencast-rmmd data cache` reports it
        if not copy_superseded_by(rec, record["store"], current):
            continue
        with file_lock(cache / f".{other.name}.lock", blocking=False) as locked:
            if locked:
                shutil.rmtree(other, ignore_errors=True)
                removed.append(other)
    return removed


class ExampleSource:
    """grain `RandomAccessDataSource` of normalized examples read from a canonical Zarr store.

    Args:
      store: path or URL of the canonical Zarr store (see `gencast_rmmd.data.era5.canonicalize`).
      task: the task; its variables and levels must be in the store.
      stats: `load_stats(...)` dict (mean, stddev, diffs_stddev, min) or a stats dir path.
      times: init times to serve (datetime64); default every valid init time in the store.
      local_cache: optional directory for memory-mapped local copies of the store's variables
        (made once, shared by sources over the same store): much faster reads for stores on
        slow or remote storage, at the cost of local disk (the store's size at the task levels).
    Each item is a dict of numpy arrays: inputs [lat, lon, C_in] float32, forcings
    [lat, lon, C_f] float32, targets [lat, lon, C_out] float32 (normalized residuals), and
    time (int64 ns since 1970, the init time t).
    """

    def __init__(self, store, task: TaskConfig, stats, times=None, local_cache=None):
        from gencast_rmmd.data.stats import load_stats

        self.store = str(store)
        self.local_cache = None if local_cache is None else str(local_cache)
        self.task = task
        where = "the statistics dict given"
        if isinstance(stats, str | os.PathLike):
            where = f"stats dir {os.fspath(stats)!r}"
            stats = load_stats(stats)
        self.layout = task.layout
        self.norm, self.sst_fill = nz.for_task(stats, task, where)
        if not is_url(self.store) and (
            pathlib.Path(self.store).is_file() or is_pattern(self.store)
        ):
            what = "a pattern of files" if is_pattern(self.store) else "a file"
            raise DataError(
                f"store {self.store!r} is {what}; training reads a canonical Zarr store "
                "(`gencast-rmmd data prepare` writes one from NetCDF or any ERA5 source)"
            )
        # Positions on the store's own time axis index its arrays: no trimming to valid_time_*.
        ds = open_store(self.store, chunks=None, trim_to_valid_range=False)
        with ds:
            self._times = ds["time"].values.astype("datetime64[ns]")
            self._levels = np.asarray(ds["level"].values) if "level" in ds.coords else np.array([])
            self.lat = ds["lat"].values
            self.lon = ds["lon"].values
            self._var_dims = {}
            self._names = sorted(
                {c[0] for c in self.layout.inputs + self.layout.targets + self.layout.forcings}
            )
            missing = [n for n in self._names if n not in ds]
            if missing:
                raise DataError(
                    f"store {self.store!r} lacks variables {missing} needed by the task"
                )
            for n in self._names:
                self._var_dims[n] = ds[n].dims
                if has_level(n):
                    lacking = [
                        lv for lv in task.pressure_levels if lv not in set(self._levels.tolist())
                    ]
                    if lacking:
                        raise DataError(
                            f"store {self.store!r} lacks levels {lacking} hPa for {n!r}"
                        )
        valid = valid_init_times(self._times, task)
        if not valid.size:
            from gencast_rmmd.data.era5 import time_spacing

            raise DataError(
                f"store {self.store!r} holds no example of the task: none of its "
                f"{self._times.size} times has its {task.input_frames} input frame(s) and its "
                f"target {task.step_hours} h apart in the store (time spacing: "
                f"{time_spacing(self._times)})"
            )
        if times is not None:
            want = np.asarray(times).astype("datetime64[ns]")
            bad = np.setdiff1d(want, valid)
            if bad.size:
                raise DataError(
                    f"{bad.size} requested init time(s) lack their input/target times in the "
                    f"store, e.g. {bad[0]}"
                )
            valid = want
        self.init_times = valid
        self._pos = {t: i for i, t in enumerate(self._times.tolist())}
        # An example's times relative to its init time, in ns: the input frames and one step.
        step = np.timedelta64(task.step_hours, "h").astype("timedelta64[ns]").astype(np.int64)
        self._offsets = step * np.arange(-(task.input_frames - 1), 2)
        self._level_index = (
            np.array(
                [int(np.nonzero(self._levels == lv)[0][0]) for lv in task.pressure_levels],
                dtype=int,
            )
            if len(self._levels)
            else np.array([], dtype=int)
        )
        self._arrays = None
        self._statics = None
        self._memmaps: dict[str, np.ndarray] = {}
        self._remote = is_url(self.store)
        self._executor = None
        self._stored: list[str] | None = None  # set by `_open`, last

    def __len__(self) -> int:
        return int(self.init_times.size)

    def cache_bytes(self) -> int:
        """Bytes a `local_cache` copy takes: float32 per-example variables at the task levels."""
        per_time = 0
        n_grid = self.lat.size * self.lon.size
        for n in self._names:
            dims = self._var_dims[n]
            if "time" not in dims or "lat" not in dims:
                continue
            per_time += n_grid * (len(self.task.pressure_levels) if "level" in dims else 1)
        return 4 * per_time * int(self._times.size)

    def __repr__(self) -> str:
        return f"ExampleSource({self.store!r}, {len(self)} examples)"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None  # zarr handles and memmaps are re-opened in each worker
        state["_memmaps"] = {}
        state["_executor"] = None
        state["_stored"] = None
        return state

    def _open(self):
        group = open_zarr_group(self.store)
        self._arrays = {n: group[n] for n in self._names}
        self._statics = {}
        self._small = {}
        for n in self._names:
            dims = self._var_dims[n]
            if "time" not in dims:
                self._statics[n] = self._standardize(n, np.asarray(self._arrays[n][...]))
            elif "lat" not in dims and self._arrays[n].nbytes <= SMALL_VARIABLE_BYTES:
                # Progress forcings have no lat dim and are tiny: hold them instead of paying a
                # store read per example (each read costs ~1 ms of per-call overhead).
                self._small[n] = self._standardize(n, np.asarray(self._arrays[n][...]))
        self._memmaps = {}
        if self.local_cache is not None:
            self._memmaps = self._local_copy()
        # What each example reads from the store itself. Assigned last: loader threads take a
        # source whose `_stored` is set as open, so everything above must be in place by then.
        held = set(self._statics) | set(self._small) | set(self._memmaps)
        self._stored = [n for n in self._names if n not in held]

    def _local_copy(self) -> dict[str, np.ndarray]:
        """Memory-mapped float32 copies ([time, level, lat, lon], task levels) of the per-example
        variables under `local_cache`, written once by streaming the store in blocks. Reads are
        then page-cache slices (microseconds) instead of Zarr calls (~1 ms each); the OS, not
        this process, decides what stays in memory."""
        import hashlib
        import json

        from gencast_rmmd.locks import file_lock

        names = [n for n in self._names if n not in self._statics and n not in self._small]
        record = {
            "store": source_path(self.store),
            **store_state(self.store),
            "variables": names,
            "levels": list(self.task.pressure_levels),
        }
        key = hashlib.sha256(json.dumps(list(record.values())).encode()).hexdigest()[:16]
        cache = pathlib.Path(self.local_cache)
        root = cache / f"{EXAMPLES_COPY_PREFIX}{key}"
        with file_lock(cache / f".{root.name}.lock"):
            if not (root / "complete").exists():
                root.mkdir(parents=True, exist_ok=True)
                n_t = self._times.size
                for n in names:
                    first = self._standardize(n, np.asarray(self._arrays[n][:1]))
                    tmp = root / f".{n}.npy.tmp"
                    out = np.lib.format.open_memmap(
                        tmp, mode="w+", dtype=np.float32, shape=(n_t, *first.shape[1:])
                    )
                    dims = self._var_dims[n]
                    for s in range(0, n_t, 64):
                        sl = tuple(slice(s, s + 64) if d == "time" else slice(None) for d in dims)
                        out[s : s + 64] = self._standardize(n, np.asarray(self._arrays[n][sl]))
                    out.flush()
                    del out
                    os.replace(tmp, root / f"{n}.npy")
                (root / "complete").write_text("1")
            if not (root / EXAMPLES_RECORD).exists():  # also a copy made before records were
                write_text(root / EXAMPLES_RECORD, json.dumps(record, indent=1))
        remove_superseded_copies(cache, record)
        return {n: np.load(root / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in names}

    def _standardize(self, name: str, x: np.ndarray) -> np.ndarray:
        dims = self._var_dims[name]
        if "level" in dims:
            x = np.take(x, self._level_index, axis=dims.index("level"))
        order = [d for d in ("time", "level", "lat", "lon") if d in dims]
        x = np.transpose(x, [dims.index(d) for d in order])
        shape = []
        k = 0
        for d in ("time", "level", "lat", "lon"):
            if d in dims:
                shape.append(x.shape[k])
                k += 1
            else:
                shape.append(1)
        return np.asarray(x, dtype=np.float32).reshape(shape)

    def _read(self, name: str, idx: np.ndarray | slice) -> np.ndarray:
        """The times at positions `idx` (an index array or a slice) of variable `name` from the
        store, standardized."""
        dims = self._var_dims[name]
        sel = tuple(idx if d == "time" else slice(None) for d in dims)
        arr = self._arrays[name]
        x = arr[sel] if isinstance(idx, slice) else arr.oindex[sel]
        return self._standardize(name, np.asarray(x))

    def _pool(self):
        """Threads for a URL store's concurrent reads (one per variable read per example)."""
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(
                max_workers=len(self._names), thread_name_prefix="examples-read"
            )
        return self._executor

    def check_units(self) -> None:
        """`DataError` when the first example's inputs do not look like the data the statistics
        describe (`normalization.units_problem`: other units, most likely)."""
        from gencast_rmmd.data.normalization import units_problem

        problem = units_problem(self.read_physical(0)[0], self.norm, self.layout)
        if problem:
            when = str(self.init_times[0])[:19]
            raise DataError(f"store {self.store!r}, example at {when}: {problem}")

    def read_physical(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Physical (inputs, forcings, targets) of example `index`, SST NaNs filled."""
        if self._stored is None:
            with _OPEN_LOCK:  # loader threads: one opens, the others wait for it
                if self._stored is None:
                    self._open()
        # The positions of the example's times, found by timestamp: on a store whose times are
        # closer than the step (6-hourly data for 12 h steps) they are not neighbours.
        t = int(self.init_times[index].astype(np.int64))
        idx = np.array([self._pos[t + o] for o in self._offsets.tolist()])
        if np.all(np.diff(idx) == 1):  # the usual case: neighbours, read as one slice
            idx = slice(int(idx[0]), int(idx[-1]) + 1)
        stored = self._stored
        if self._remote and len(stored) > 1:
            # Each read is a round trip to the object store: issue them together, not in turn.
            read = dict(zip(stored, self._pool().map(lambda n: self._read(n, idx), stored)))
        else:
            read = {n: self._read(n, idx) for n in stored}
        arrays = {}
        for n in self._names:
            if n in self._statics:
                arrays[n] = self._statics[n]
                continue
            if n in self._small:
                arrays[n] = self._small[n][idx]
                continue
            x = np.array(self._memmaps[n][idx]) if n in self._memmaps else read[n]
            if n == SST and self.sst_fill is not None:
                x = np.where(np.isnan(x), np.float32(self.sst_fill), x)
            arrays[n] = x
        lay = self.layout
        levels = np.asarray(self.task.pressure_levels)
        ll = (self.lat.size, self.lon.size)
        inputs = stack_arrays(arrays, lay.inputs, levels, 0, ll)
        last = self.task.input_frames
        forcings = stack_arrays(arrays, lay.forcings, levels, last, ll)
        targets = stack_arrays(arrays, lay.targets, levels, last, ll)
        return inputs, forcings, targets

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"example index {index} out of range [0, {len(self)})")
        inputs, forcings, targets = self.read_physical(index)
        return {
            "inputs": nz.normalize_inputs(self.norm, inputs).astype(np.float32),
            "forcings": nz.normalize_forcings(self.norm, forcings).astype(np.float32),
            "targets": nz.residual_targets(self.norm, targets, inputs).astype(np.float32),
            "time": np.int64(self.init_times[index].astype("datetime64[ns]").astype(np.int64)),
        }


def make_loader(
    source: ExampleSource,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    worker_count: int = 0,
    num_threads: int = 4,
    prefetch_buffer_size: int = 16,
    shard_by_process: bool = True,
    drop_remainder: bool = True,
    shard: tuple[int, int] | None = None,
):
    """A grain `DataLoader` of batches `{inputs [B, lat, lon, C_in], forcings, targets, time [B]}`.

    Deterministic for a given seed (the order depends only on seed, epoch and shard), sharded over
    JAX processes (`jax.process_index()`/`process_count()`) when `shard_by_process`, reading with
    `num_threads` threads and `prefetch_buffer_size` examples ahead (`worker_count` > 0 adds
    worker processes). `iter(loader)` gives an iterator with `get_state()` / `set_state(state)`
    (bytes; store it with the training checkpoint to resume at the exact batch). `shard=(i, n)`
    overrides the JAX-process sharding: shard i of n gets a disjoint 1/n of the examples.
    """
    import grain.python as grain

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    if shard is not None:  # explicit (index, count), e.g. for tests or non-JAX launchers
        shard_options = grain.ShardOptions(shard[0], shard[1], drop_remainder=True)
    elif shard_by_process:
        shard_options = grain.ShardByJaxProcess(drop_remainder=True)
    else:
        shard_options = grain.NoSharding()
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=shard_options,
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=seed,
    )
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[grain.Batch(batch_size=batch_size, drop_remainder=drop_remainder)],
        worker_count=worker_count,
        read_options=grain.ReadOptions(
            num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size
        ),
    )
