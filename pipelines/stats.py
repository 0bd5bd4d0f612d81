"""Stats pipeline: a canonical store -> GenCast's four normalization-statistics files (Beam).

    store --time blocks (each read with `safety.load_or_data_error`: a corrupt chunk is one
      `DataError` naming the variable)--> partial moments per block --CombineGlobally-->
      mean / M2 / min per variable and level
    store --block starts (each block read with one extra earlier time)--> moments of the 12 h
      differences --CombineGlobally-->
    -> finalize -> mean_by_level.nc, stddev_by_level.nc, diffs_stddev_by_level.nc, min_by_level.nc

The math (`chunk_moments`, `merge_moments`, `finalize`) is `gencast_rmmd.data.stats`, shared with
the in-process `compute_stats`, so both give the same numbers. Memory per worker is one block.
The partial moments are merged in block order whatever order a runner delivers them in, so the
files are the same bytes on every run and runner (runs downstream key on their SHA-256).
Beam's in-process runner by default (`pipelines.pipeline_options`); other runners through standard
Beam pipeline options.

Resumable on this machine: each block's moments are kept beside the output directory
(`pipelines.resume_dir`, `.NAME.stats-blocks-DIGEST/`, one exact .npz per block) until the files
are written, so a re-run after a crash reads only the blocks not yet reduced and writes the same
bytes. Not for an output by URL or a runner elsewhere (Dataflow retries its own failed work).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Sequence

import numpy as np
import xarray as xr

from gencast_rmmd.data import stats as st
from gencast_rmmd.errors import DataError
from gencast_rmmd.remote import check_out_dir, is_url
from gencast_rmmd.safety import load_or_data_error
from pipelines import kept, kept_count, pipeline_options, say_kept


class _MomentsCombine:
    """Beam CombineFn over `(block start, Moments)`: partials are kept per block and merged in
    block order at the end (floating-point merging is not associative, and runners deliver
    elements and accumulators in any order). One `Moments` per block is per-level vectors, so a
    store's few thousand blocks are a small accumulator."""

    def __new__(cls):
        import apache_beam as beam

        class MomentsCombineFn(beam.CombineFn):
            def create_accumulator(self):
                return []

            def add_input(self, acc, item):
                acc.append(item)
                return acc

            def merge_accumulators(self, accs):
                return [item for a in accs for item in a]

            def extract_output(self, acc):
                out = None
                for _, m in sorted(acc, key=lambda item: item[0]):
                    out = m if out is None else st.merge_moments(out, m)
                return out

        return MomentsCombineFn()


@functools.lru_cache(maxsize=4)
def _open(path: str) -> xr.Dataset:
    """Open lazily without dask (xarray's lazy indexing reads only the selected chunks, a
    block's chunks of each variable fetched together); cached per worker process so each work
    item does not re-read the metadata. A Zarr store, local or by URL, is never loaded whole (it
    may be decades of ERA5); a NetCDF file is."""
    from gencast_rmmd.data.era5 import NETCDF_SUFFIXES, open_store

    ds = open_store(path, chunks=None, trim_to_valid_range=False)
    zarr_store = os.path.isdir(path) or (is_url(path) and not path.endswith(NETCDF_SUFFIXES))
    return ds if zarr_store else ds.compute()


def _read_block(path: str, names: list[str], lo: int, hi: int) -> xr.Dataset:
    """Times [lo, hi) of `names`, loaded; a corrupt chunk is a `DataError` naming the variable."""
    ds = _open(path)[names].isel(time=slice(lo, hi))
    t = ds["time"].values
    where = (
        f"times {np.datetime_as_string(t[0], unit='h')}..{np.datetime_as_string(t[-1], unit='h')}"
    )
    # By URL every read is a round trip: the block's variables are fetched concurrently.
    threads = len(names) if is_url(path) else 1
    return load_or_data_error(ds, path, where=where, threads=threads)


def _kept(keep: str | None, name: str, compute):
    """`compute()` (a block's `Moments`, or None), kept as `keep/name` (`pipelines.kept`)."""
    path = None if keep is None else os.path.join(keep, name)
    return kept(path, compute, st.save_moments, st.load_moments)


def _diff_moments(
    window: tuple[int, int],
    path: str,
    names: list[str],
    block: int,
    step_hours: int,
    keep: str | None = None,
):
    import apache_beam as beam

    # The pairs (t, t + step), found by timestamp, whose higher position is in this block, read
    # with the earlier times they need from `lo` on (not only the previous one: 6-hourly data,
    # gaps; `stats.difference_windows`).
    start, lo = window

    def compute():
        pair = _read_block(path, names, lo, start + block)
        d = st.time_differences(pair, step_hours, block_start=start - lo)
        beam.metrics.Metrics.counter("stats", "diff_pairs").inc(int(d.sizes.get("time", 0)))
        return st.chunk_moments(d) if d.sizes.get("time", 0) else None

    m = _kept(keep, f"diffs_{start}.npz", compute)
    return None if m is None else (start, m)


def _values_moments(start: int, path: str, names: list[str], block: int, keep: str | None = None):
    import apache_beam as beam

    def compute():
        chunk = _read_block(path, names, start, start + block)
        beam.metrics.Metrics.counter("stats", "time_steps_read").inc(int(chunk.sizes["time"]))
        return st.chunk_moments(chunk)

    return start, _kept(keep, f"values_{start}.npz", compute)


BLOCKS_VERSION = 1  # raise when the kept per-block moments change meaning


def _keep_dir(data: str, out_dir: str, timed: list[str], block: int, step_hours: int, beam_args):
    """Where the blocks' moments are kept until the files are written (`pipelines.resume_dir`),
    or None: an output by URL or a runner elsewhere (Dataflow retries its own failed work)."""
    from gencast_rmmd.data.era5 import store_fingerprint
    from pipelines import resume_dir, runs_here

    if is_url(out_dir) or not runs_here(beam_args):
        return None
    key = {
        "version": BLOCKS_VERSION,
        "data": data if is_url(data) else os.path.abspath(data),
        "store": store_fingerprint(data),
        "variables": timed,
        "block": block,
        "step_hours": step_hours,
    }
    return resume_dir(out_dir, "stats-blocks", key)


def compute_stats_beam(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    step_hours: int = 12,
    block: int = 32,
    beam_args: Sequence[str] = (),
) -> dict[str, xr.Dataset]:
    """Compute the four statistics of store `data` with Beam and write them to `out_dir` (a
    local directory, or a URL where the pipeline's last step, on a worker, writes them)."""
    data = os.fspath(data)
    # a local directory, or a URL (gs://...); finished blocks are kept beside it
    check_out_dir(out_dir, "a stats directory", beside=True)
    ds = _open(data)
    if "time" not in ds.dims or ds.sizes["time"] == 0:
        raise DataError(f"store {data!r} has no times to compute statistics over")
    timed = [k for k, v in ds.data_vars.items() if "time" in v.dims]
    statics = [k for k, v in ds.data_vars.items() if "time" not in v.dims]
    n = ds.sizes["time"]
    # Planned (and refused when no two times are one step apart) before the pipeline exists:
    # an error inside its `with` block would leave Beam's temp directory behind.
    windows = st.difference_windows(ds["time"].values, block, step_hours)
    # The combined moments meet in one final step that writes the files (`_write`).
    out_dir = os.fspath(out_dir)
    keep = _keep_dir(data, out_dir, timed, block, step_hours, beam_args)
    done = kept_count(keep)
    if done:
        print(
            f"data stats: resuming, {done} of {len(range(0, n, block)) + len(windows)} blocks "
            f"already reduced ({keep})",
            file=sys.stderr,
            flush=True,
        )
    try:
        _run_pipeline(data, out_dir, timed, statics, windows, n, block, step_hours, keep, beam_args)
    except BaseException as e:
        say_kept(e, keep, "blocks")
        raise
    stats = st.load_stats(out_dir)
    if keep is not None:
        shutil.rmtree(keep, ignore_errors=True)
    return stats


def _run_pipeline(data, out_dir, timed, statics, windows, n, block, step_hours, keep, beam_args):
    """`compute_stats_beam`'s Beam pipeline: the moments of the value blocks and of the
    difference windows, combined in block order, and `_write`."""
    import apache_beam as beam

    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        values = (
            p
            | "blocks" >> beam.Create(list(range(0, n, block)))
            | "moments" >> beam.Map(_values_moments, data, timed, block, keep)
            | "combine values" >> beam.CombineGlobally(_MomentsCombine())
        )
        diffs = (
            p
            | "diff blocks" >> beam.Create(windows)
            | "diff moments" >> beam.Map(_diff_moments, data, timed, block, step_hours, keep)
            | "drop empty" >> beam.Filter(lambda m: m is not None)
            | "combine diffs" >> beam.CombineGlobally(_MomentsCombine())
        )
        _ = (
            p
            | "once" >> beam.Create([None])
            | "write"
            >> beam.Map(
                _write,
                data,
                statics,
                out_dir,
                step_hours,
                values=beam.pvalue.AsSingleton(values),
                diffs=beam.pvalue.AsSingleton(diffs),
            )
        )


def _write(_, data, statics, out_dir, step_hours, values, diffs):
    if statics:
        m = st.chunk_moments(_open(data)[statics].compute())
        values = st.merge_moments(values, m)
    stats = st.finalize(values, diffs or st.Moments({}, {}, {}, {}, {}), step_hours)
    st.save_stats(stats, out_dir)
    return out_dir
