"""Prepare pipeline: an ERA5-style source -> the canonical training Zarr (Apache Beam, xarray-beam).

    source (ARCO-ERA5 on GCS, any Zarr/NetCDF, or the embedded nature run)
      -> `gencast_rmmd.data.era5.canonicalize` (lazy: names, levels, 00/12 UTC, 12 h precipitation,
         statics, progress forcings, regridding, float32)
      -> template written first (`xbeam.make_template`: all metadata and coordinates, chunks of one
         time step, statics and the small forcings written eagerly), root attribute
         `gencast_rmmd_prepare = "in-progress"`
      -> work items = blocks of `steps_per_item` times --Reshuffle--> each worker reads its block
         from the source and writes it into the template's region, then drops a marker file
         naming the times it wrote, [start, stop)
      -> when the markers cover every time: attribute set to "complete", markers removed.

Resuming: re-running the same command after a crash skips every block whose times the markers
cover, so finished chunks are never rewritten, and completes the store; a resumed run may use
another `steps_per_item` (a new block only partly covered is written whole). The markers live
next to the store (`<out>.prepare-progress/`), on local disk or at a URL like the store (through
fsspec: on Dataflow `--out gs://...`, where workers share no disk); `data validate` reports a
store whose attribute is not "complete" as incomplete. Beam's in-process runner by default
(`pipelines.pipeline_options`); any Beam runner through standard pipeline options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence

import numpy as np
import xarray as xr

from gencast_rmmd.config import to_dict
from gencast_rmmd.data.config import DataConfig
from gencast_rmmd.data.era5 import STORE_ID_ATTR, is_pattern, new_store_id, pattern_files
from gencast_rmmd.data.validate import PREPARE_STATE_ATTR
from gencast_rmmd.errors import OutputError
from gencast_rmmd.remote import check_out_dir, exists, filesystem, overlapping, remove
from pipelines import pipeline_options

KEY_ATTR = "gencast_rmmd_prepare_key"


@dataclasses.dataclass(frozen=True)
class PrepareSpec:
    """What a worker needs (small, picklable)."""

    source: str
    cfg: DataConfig
    out: str
    steps_per_item: int

    @property
    def progress_dir(self) -> str:
        return self.out.rstrip("/") + ".prepare-progress"

    def marker(self, start: int, stop: int) -> str:
        return f"{self.progress_dir}/{start:09d}-{stop:09d}.done"


# The store and its markers are reached through fsspec (`gencast_rmmd.remote`), so `out` may be
# a local path or a URL (gs://... on Dataflow, where workers share no disk); writers use fsspec's
# default credentials.
def _write_marker(spec: PrepareSpec, start: int, stop: int) -> None:
    fs, path = filesystem(spec.marker(start, stop))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, json.dumps({"start": start, "stop": stop}).encode())


def _done(spec: PrepareSpec, n: int) -> np.ndarray:
    """Which of the `n` times the markers present say are written (one listing, not one
    request per block). A marker names its block's [start, stop), so a run resumed with another
    `steps_per_item` skips only the blocks whose every time is written; anything else in the
    directory (a marker of an older gencast-rmmd, which named only its start) covers nothing."""
    written = np.zeros(n, bool)
    fs, path = filesystem(spec.progress_dir)
    if not fs.exists(path):
        return written
    for name in fs.ls(path, detail=False):
        found = re.fullmatch(r"(\d+)-(\d+)\.done", name.rstrip("/").rsplit("/", 1)[-1])
        if found:
            written[int(found[1]) : int(found[2])] = True
    return written


def _open(spec: PrepareSpec) -> xr.Dataset:
    from gencast_rmmd.data.era5 import open_canonical

    return open_canonical(spec.cfg, source=spec.source)


def _source_store(spec: PrepareSpec) -> str:
    """The store `_open` reads: the source, or for `embedded` the cached nature run's path."""
    if spec.source != "embedded":
        return spec.source
    from gencast_rmmd.data.nature_run import embedded_store

    return str(embedded_store(config=spec.cfg.nature_run, levels_hpa=spec.cfg.task.pressure_levels))


def _fingerprint(spec: PrepareSpec, ds: xr.Dataset) -> str:
    t = ds["time"].values
    cfg = to_dict(spec.cfg)
    # `token` defaulted to "anon" before it defaulted to None (fsspec's configuration, else
    # "anon"): a store begun then, from a config without a token, keeps its key.
    cfg["token"] = cfg["token"] or "anon"
    blob = json.dumps(
        {
            "source": spec.source,
            "cfg": cfg,
            "times": [str(t[0]), str(t[-1]), int(t.size)],
            "vars": sorted(ds.data_vars),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _encoding(ds: xr.Dataset) -> dict:
    return {
        name: {"chunks": tuple(1 if d == "time" else da.sizes[d] for d in da.dims)}
        for name, da in ds.data_vars.items()
    }


def _timed(ds: xr.Dataset) -> list[str]:
    return [k for k, v in ds.data_vars.items() if "time" in v.dims and v.chunks is not None]


def write_template(ds: xr.Dataset, out: str, key: str) -> None:
    """Write metadata, coordinates, statics and numpy-backed variables; time-chunked dask
    variables are left to the workers."""
    import xarray_beam as xbeam
    import zarr

    lazy = _timed(ds)
    template = xbeam.make_template(ds[lazy]) if lazy else xr.Dataset()
    full = ds.copy()
    for name in lazy:
        full[name] = template[name]
    full.attrs = dict(ds.attrs)
    full.attrs[PREPARE_STATE_ATTR] = "in-progress"
    full.attrs[KEY_ATTR] = key
    full.attrs[STORE_ID_ATTR] = new_store_id()  # a source's own id must not pass for this store's
    eager = [k for k in ds.data_vars if k not in lazy]
    for k in eager:
        full[k] = ds[k].compute()
    full.to_zarr(out, mode="w", compute=False, encoding=_encoding(ds), consolidated=False)
    if eager:
        # compute=False may skip eager variables on some backends: write them explicitly.
        ds[eager].compute().to_zarr(out, mode="r+", consolidated=False)
    zarr.open_group(out, mode="r+").attrs[PREPARE_STATE_ATTR] = "in-progress"


def _consolidate(out: str, only_if_missing: bool = False) -> None:
    """Write consolidated metadata over the store's final attributes (the last step of a run).

    It lets a plain `xr.open_zarr(out)` open the store without a per-array listing and without
    xarray's "failed to open with consolidated metadata" warning.
    """
    import zarr

    from gencast_rmmd.data.era5 import quiet_v3_consolidation

    if only_if_missing:
        try:
            zarr.open_consolidated(out, mode="r")
            return
        except Exception:  # no (readable) consolidated metadata: write it
            pass
    with quiet_v3_consolidation():
        zarr.consolidate_metadata(out)


class _WriteBlock:
    """Beam DoFn body: read one block of times from the source and write its region."""

    def __init__(self, spec: PrepareSpec):
        self.spec = spec
        self._ds = None

    def __call__(self, start: int):
        import apache_beam as beam

        if self._ds is None:
            self._ds = _open(self.spec)
        ds = self._ds
        n = ds.sizes["time"]
        stop = min(start + self.spec.steps_per_item, n)
        names = _timed(ds)
        block = ds[names].isel(time=slice(start, stop)).compute()
        block = block.drop_vars([c for c in block.coords if "time" not in block[c].dims])
        block.attrs = {}
        block.to_zarr(self.spec.out, region={"time": slice(start, stop)}, consolidated=False)
        _write_marker(self.spec, start, stop)
        beam.metrics.Metrics.counter("prepare", "time_steps_written").inc(stop - start)
        beam.metrics.Metrics.counter("prepare", "bytes_written").inc(int(block.nbytes))
        return start


def prepare(
    source: str,
    cfg: DataConfig,
    out: str | os.PathLike,
    *,
    beam_args: Sequence[str] = (),
    steps_per_item: int = 8,
    overwrite: bool = False,
    max_items: int | None = None,
) -> dict:
    """Build (or complete) the canonical store `out` from `source` for `cfg`; returns a summary.

    `max_items` writes at most that many blocks and stops without completing (used to simulate a
    crash in tests; a later call completes the store).
    """
    import apache_beam as beam
    import zarr

    out = os.fspath(out)
    check_out_dir(out, "a new path")  # the store is a directory (or a prefix at a URL)
    spec = PrepareSpec(source=str(source), cfg=cfg, out=out, steps_per_item=steps_per_item)
    ds = _open(spec)
    read = _source_store(spec)
    # `--overwrite` deleted the source before reading it; a pattern's every file is read.
    for one in pattern_files(read) if is_pattern(read) else [read]:
        if overlapping(one, out):
            raise OutputError(
                f"--out {out!r} is the source store {one!r}, or one of them lies inside the "
                "other: writing the output would destroy what is read; choose another --out"
            )
    key = _fingerprint(spec, ds)
    resumed = False
    if exists(out):
        try:
            attrs = dict(zarr.open_group(out, mode="r").attrs)
        except Exception:
            attrs = {}
        if overwrite or attrs.get(KEY_ATTR) != key:
            if not overwrite:
                raise OutputError(
                    f"output {out!r} exists and was not written by this prepare command (expected "
                    f"{KEY_ATTR}={key}, found {attrs.get(KEY_ATTR)!r}); pass --overwrite to replace it"
                )
            remove(out)
            remove(spec.progress_dir)
        elif attrs.get(PREPARE_STATE_ATTR) == "complete":
            _consolidate(out, only_if_missing=True)  # a crash may have come just before it
            return {"out": out, "status": "already complete", "times": int(ds.sizes["time"])}
        else:
            resumed = True
    if not resumed:
        remove(spec.progress_dir)
        write_template(ds, out, key)
    n = ds.sizes["time"]
    starts = list(range(0, n, steps_per_item))
    written = _done(spec, n)
    todo = [s for s in starts if not written[s : s + steps_per_item].all()]
    skipped = len(starts) - len(todo)
    if max_items is not None:
        todo = todo[:max_items]
    if todo and _timed(ds):
        with beam.Pipeline(options=pipeline_options(beam_args)) as p:
            _ = (
                p
                | "blocks" >> beam.Create(todo)
                | "shuffle" >> beam.Reshuffle()
                | "write" >> beam.Map(_WriteBlock(spec))
            )
    elif todo:
        for s in todo:
            _write_marker(spec, s, min(s + steps_per_item, n))
    complete = bool(_done(spec, n).all())
    if complete:
        group = zarr.open_group(out, mode="r+")
        group.attrs[PREPARE_STATE_ATTR] = "complete"
        _consolidate(out)
        remove(spec.progress_dir)
    return {
        "out": out,
        "status": "complete" if complete else "incomplete",
        "times": int(n),
        "blocks_written": len(todo),
        "blocks_skipped": skipped,
        "resumed": resumed,
        "first_time": str(np.asarray(ds["time"].values[0])),
        "last_time": str(np.asarray(ds["time"].values[-1])),
    }
