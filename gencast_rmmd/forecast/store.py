"""The forecast Zarr store (WeatherBench 2 forecast schema), created from a template up front.

Schema: dims `time` (initialization time), `prediction_timedelta` (lead time, timedelta64),
`realization` (ensemble member; WeatherBench 2's default ensemble dim), `level` (hPa),
`latitude` (ascending), `longitude` (0..360 eastward); one variable per target in ERA5 long names
and physical units; attrs naming the model, checkpoint, sampler, NFE per step, seed and (when
known) the training period. Written as Zarr format 2 with consolidated metadata so WeatherBench 2
and any xarray/zarr 2 or 3 reader opens it with `xr.open_zarr(path)`.

Integrity: the store is created (metadata + NaN fill) before any member is run, with attr
`gencast_rmmd_status = "incomplete"`. Each work item (one init time x one block of members, a
whole Zarr chunk) writes its region, then sets its cells of the `region_done` (time, realization)
marker array. Re-running with the same arguments skips done regions; the status becomes
"complete" only when every region is marked, so an interrupted store never looks complete.

Identity: the spec records the SHA-256 of the checkpoint (`model_sha256`) and of the
normalisation statistics (`stats_sha256`), and the id of the data store the initial conditions
come from (`data_store_id`, `data.era5.store_id`), so a store never resumes with members of
another model, normalisation or data written at the same paths; `gencast_rmmd_store_id` (a
random id set at creation) tells a re-made store from the one an evaluation scored.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from gencast_rmmd.data.era5 import STORE_ID_ATTR, new_store_id
from gencast_rmmd.data.task import VARIABLES, TaskConfig, has_level
from gencast_rmmd.errors import OutputError
from gencast_rmmd.safety import changed_inputs_phrase

STATUS_ATTR = "gencast_rmmd_status"  # "incomplete" while a forecast store is being written
SPEC_ATTR = "gencast_rmmd_forecast_spec"
MARKER = "region_done"
# Spec keys identifying the inputs by content (SHA-256) or store id. A store written before a
# key was recorded lacks it and is taken as made with the current inputs.
DIGEST_KEYS = {
    "model_sha256": "another checkpoint",
    "stats_sha256": "other normalisation statistics",
    "data_store_id": "another data store",
}


def target_variables(task: TaskConfig) -> list[str]:
    return sorted(task.target_variables)


def template(
    task: TaskConfig,
    lat: np.ndarray,
    lon: np.ndarray,
    init_times: np.ndarray,
    lead_steps: int,
    members: int,
    member_chunk: int,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """A lazy (dask, NaN) Dataset describing the whole store; chunks = one init x member block."""
    n_t, n_lat, n_lon = len(init_times), len(lat), len(lon)
    levels = np.asarray(task.pressure_levels, dtype=np.int64)
    leads = (np.arange(1, lead_steps + 1) * np.timedelta64(task.step_hours, "h")).astype(
        "timedelta64[ns]"
    )
    data = {}
    for v in target_variables(task):
        lev = has_level(v)
        shape = (n_t, lead_steps, members) + ((len(levels),) if lev else ()) + (n_lat, n_lon)
        chunks = (1, lead_steps, member_chunk) + ((len(levels),) if lev else ()) + (n_lat, n_lon)
        dims = (
            ("time", "prediction_timedelta", "realization")
            + (("level",) if lev else ())
            + ("latitude", "longitude")
        )
        arr = da.full(shape, np.nan, dtype=np.float32, chunks=chunks)
        data[v] = (dims, arr, {"units": VARIABLES[v][1], "long_name": v.replace("_", " ")})
    data[MARKER] = (
        ("time", "realization"),
        da.zeros((n_t, members), dtype=np.int8, chunks=(1, member_chunk)),
        {"long_name": "1 where this (init time, member) region has been written"},
    )
    coords = {
        "time": (
            "time",
            np.asarray(init_times, dtype="datetime64[ns]"),
            {"long_name": "initialization time"},
        ),
        "prediction_timedelta": ("prediction_timedelta", leads, {"long_name": "lead time"}),
        "realization": (
            "realization",
            np.arange(members, dtype=np.int64),
            {"long_name": "ensemble member"},
        ),
        "latitude": ("latitude", np.asarray(lat, np.float64), {"units": "degrees_north"}),
        "longitude": ("longitude", np.asarray(lon, np.float64), {"units": "degrees_east"}),
    }
    if any(has_level(v) for v in target_variables(task)):
        coords["level"] = ("level", levels, {"units": "hPa"})
    return xr.Dataset(data, coords=coords, attrs=dict(attrs))


def create(path: str, tmpl: xr.Dataset, spec: dict[str, Any]) -> None:
    """Write the template's metadata (no data chunks) with status 'incomplete'."""
    ds = tmpl.copy()
    ds.attrs[STATUS_ATTR] = "incomplete"
    ds.attrs[SPEC_ATTR] = json.dumps(spec, sort_keys=True)
    ds.attrs[STORE_ID_ATTR] = new_store_id()
    encoding = {v: {"_FillValue": np.float32(np.nan)} for v in ds.data_vars if v != MARKER}
    ds.to_zarr(path, mode="w-", compute=False, zarr_format=2, consolidated=True, encoding=encoding)


def publish(path: str, tmpl: xr.Dataset, spec: dict[str, Any]) -> None:
    """Create the store at `path` (a local path or a URL) so that it appears only once its
    metadata is whole. On disk: `create` into a temporary sibling, then one rename. At a URL
    (an object store has no atomic rename): `create` into a local temporary directory, then
    upload its files with the root attributes (which carry the spec) first and the consolidated
    metadata last, so that a prefix left by a crash in between is recognised as an interrupted
    creation of the same forecast (`creation_interrupted`) and made again."""
    from gencast_rmmd.remote import filesystem, is_url

    if not is_url(path):
        base = path.rstrip("/")
        for stale in glob.glob(f"{glob.escape(base)}.tmp-*"):  # what a killed creation left
            if not _pid_alive(stale.rsplit("-", 1)[-1]):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = f"{base}.tmp-{os.getpid()}"
        try:
            create(tmp, tmpl, spec)
            os.replace(tmp, path)
        except BaseException:  # a full disk, say: nothing half-made is left beside --out
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return
    fs, root = filesystem(path)
    root = root.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="gencast_rmmd_forecast_") as d:
        local = os.path.join(d, "store.zarr")
        create(local, tmpl, spec)
        files = sorted(
            os.path.relpath(os.path.join(dirpath, f), local)
            for dirpath, _, names in os.walk(local)
            for f in names
        )
        first, last = [".zattrs"], [".zmetadata"]
        middle = [f for f in files if f not in first + last]
        for rel in first + middle + last:
            fs.put_file(os.path.join(local, rel), f"{root}/{rel.replace(os.sep, '/')}")


def _pid_alive(pid: str) -> bool:
    """Whether process `pid` (a string, from a temporary name) runs on this machine."""
    try:
        os.kill(int(pid), 0)
    except ValueError:  # not a pid: not ours to remove
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def creation_interrupted(path: str, spec: dict[str, Any]) -> bool:
    """Whether the store at URL `path` is what a crash during `publish` leaves: root attributes
    recording this `spec` (compared as `open_existing` does) and no consolidated metadata yet.
    Such a store holds no forecast data and is made again."""
    from gencast_rmmd.remote import filesystem

    fs, root = filesystem(path)
    root = root.rstrip("/")
    try:
        if fs.exists(f"{root}/.zmetadata"):
            return False
        attrs = json.loads(fs.cat_file(f"{root}/.zattrs"))
        stored = json.loads(attrs[SPEC_ATTR])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return False
    return attrs.get(STATUS_ATTR) == "incomplete" and stored == _comparable(stored, spec)


def open_existing(
    path: str, spec: dict[str, Any], input_paths: dict[str, str] | None = None
) -> xr.Dataset:
    """Open a store created by `create` for the same spec; `OutputError` otherwise.
    `input_paths` (a `DIGEST_KEYS` key -> the path that input was read from) names the paths in
    the refusal for inputs re-made since (the checkpoint's is `spec["model"]` by default)."""
    try:
        with warnings.catch_warnings():  # a store without consolidated metadata is not ours
            warnings.simplefilter("ignore", RuntimeWarning)
            ds = xr.open_zarr(path, chunks=None)
    except Exception as e:
        raise OutputError(
            f"output path {path!r} exists and is not a forecast store ({e}); choose a new path"
        ) from None
    found = ds.attrs.get(SPEC_ATTR)
    if found is None:
        raise OutputError(
            f"output path {path!r} exists and holds another Zarr store; choose a new path"
        )
    old = json.loads(found)
    spec = _comparable(old, spec)
    if old != spec:
        diff = {
            k: (old.get(k), spec.get(k)) for k in set(old) | set(spec) if old.get(k) != spec.get(k)
        }
        if set(diff) <= set(DIGEST_KEYS):
            where = {"model_sha256": spec.get("model"), **(input_paths or {})}
            names = {k: f"{v} at {where[k]!r}" if k in where else v for k, v in DIGEST_KEYS.items()}
            inputs = changed_inputs_phrase(
                {k: str(old[k]) for k in diff}, {k: str(spec[k]) for k in diff}, names
            )
            raise OutputError(
                f"output path {path!r} holds a forecast made with {inputs}: its members cannot be "
                "mixed with this one's; use a new path"
            )
        raise OutputError(
            f"output path {path!r} holds a forecast made with other settings "
            f"(stored vs requested: {diff}); use a new path or the same arguments to resume"
        )
    return ds


def _comparable(stored: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` less the digests `stored` does not record (stores written before they were)."""
    return {k: v for k, v in spec.items() if k not in DIGEST_KEYS or k in stored}


def is_complete(path: str, **digests: str | None) -> bool:
    """True when `path` is a forecast store marked complete and made with the inputs whose
    digests are given (`model_sha256=`, `stats_sha256=`, `data_store_id=`; `open_existing`'s
    rule: a digest the store does not record matches, and None checks nothing); False for
    anything else, unreadable included."""
    import zarr

    unknown = set(digests) - set(DIGEST_KEYS)
    if unknown:
        raise TypeError(f"is_complete: unknown digest(s) {sorted(unknown)}")
    try:
        attrs = zarr.open_group(path, mode="r").attrs
        status = attrs.get(STATUS_ATTR)
        spec = json.loads(attrs.get(SPEC_ATTR, "{}"))
    except Exception:  # not a readable store: whoever writes it will report why
        return False
    if status != "complete":
        return False
    return all(v is None or k not in spec or spec[k] == v for k, v in digests.items())


def done_regions(path: str) -> np.ndarray:
    """The (time, realization) marker array as numpy int8."""
    import zarr

    return np.asarray(zarr.open_group(path, mode="r")[MARKER][...])


def states_dataset(
    states: np.ndarray, task: TaskConfig, member_ids: Sequence[int]
) -> dict[str, np.ndarray]:
    """Split rollout output [B, N, lat, lon, C_out] into per-variable arrays in store order.

    Returns {variable: [1, N, B, (level,) lat, lon]} float32 following `task.layout.targets`.
    """
    lay = task.layout
    out = {}
    for v, sl in lay.target_slices().items():
        x = states[..., sl]  # [B, N, lat, lon, L]
        if has_level(v):
            levels = [lev for (_, _, lev) in lay.targets[sl]]
            if levels != list(task.pressure_levels):
                raise ValueError(f"{v}: unexpected level order {levels}")
            x = np.moveaxis(x, -1, 2)  # [B, N, L, lat, lon]
        else:
            x = x[..., 0]
        out[v] = np.swapaxes(x, 0, 1)[None].astype(np.float32)  # [1, N, B, ...]
    return out


def write_region(
    path: str, arrays: dict[str, np.ndarray], time_index: int, member_start: int
) -> None:
    """Write one (init time, member block) region, then mark it done (in that order)."""
    import zarr

    group = zarr.open_group(path, mode="r+")
    n_b = None
    for v, x in arrays.items():
        n_b = x.shape[2]
        group[v][time_index : time_index + 1, :, member_start : member_start + n_b] = x
    group[MARKER][time_index, member_start : member_start + n_b] = 1


def mark_complete(path: str) -> bool:
    """Set status 'complete' if every region is marked; returns whether it is complete."""
    import zarr

    if not np.all(done_regions(path) == 1):
        return False
    group = zarr.open_group(path, mode="r+")
    group.attrs[STATUS_ATTR] = "complete"
    zarr.consolidate_metadata(path)
    return True
