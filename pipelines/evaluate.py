"""Evaluation pipeline: ensemble forecasts vs truth -> scorecards, rank histograms, plots, report.

Shape (WeatherBench 2's probabilistic evaluation, reference notes §1.6 and §9):

    work items (init time index, lead block) --Reshuffle--> load one forecast chunk (all members,
    full globe) + truth at valid time = init + lead --> additive latitude-weighted statistics per
    variable/level/region (`gencast_rmmd.evaluation.statistics`) --> xbeam.Mean over init times
    --> finalize (CRPS, RMSE, spread/skill, rank histograms) --> scorecard.nc / .csv, plots, HTML

The same per-chunk function runs on Beam (`engine="beam"`; in process by default,
Dataflow/Flink/Spark with their pipeline options) or in a plain loop (`engine="memory"`); both give
the same numbers.
Memory is bounded by one chunk plus the small per-init series used for significance tests.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Sequence

import numpy as np
import xarray as xr

from gencast_rmmd.config import seed_problem
from gencast_rmmd.data.era5 import STORE_ID_ATTR, store_id
from gencast_rmmd.errors import ConfigError, DataError, OutputError
from gencast_rmmd.evaluation import scorecard as sc_lib
from gencast_rmmd.evaluation import stores
from gencast_rmmd.evaluation.netcdf_io import read_netcdf, write_netcdf
from gencast_rmmd.evaluation.regions import REGIONS
from gencast_rmmd.evaluation.statistics import (
    STATISTICS,
    VL_DIM,
    VariableLevel,
    chunk_statistics,
    variable_level_label,
)
from gencast_rmmd.remote import check_local_out_dir, is_url, remove, same_store
from gencast_rmmd.safety import publish_mode
from pipelines import kept, kept_count, pipeline_options, resume_dir, say_kept

MARKER = "evaluation.json"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything a worker needs to score one model's store (small and picklable)."""

    label: str  # "forecast" or "baseline"
    path: str
    truth_path: str
    ensemble_dim: str
    pairs: tuple[tuple[str, int | None], ...]
    init_times: tuple[int, ...]  # ns since epoch
    leads: tuple[int, ...]  # ns
    seed: int
    lead_chunk: int
    # Where each work item's statistics are kept until the evaluation is written (`item_cache`):
    # a re-run after a crash scores only the items not there. None: not kept (Dataflow).
    cache_dir: str | None = None

    def items(self) -> list[tuple[int, int]]:
        """Work items (init index, first lead index of the block)."""
        return [
            (i, j)
            for i in range(len(self.init_times))
            for j in range(0, len(self.leads), self.lead_chunk)
        ]


@functools.lru_cache(maxsize=8)
def _open_cached(path: str, kind: str, ensemble_dim: str | None = None) -> xr.Dataset:
    # One lazy open per worker process and store (re-opening per chunk costs metadata reads).
    if kind == "truth":
        return stores.open_truth(path)
    return stores.open_forecast(path, ensemble_dim)[0]


def chunk_rng(seed: int, init_ns: int, lead_ns: int) -> np.random.Generator:
    """The tie-breaking generator of one (init, lead): independent of how work is split."""
    return np.random.default_rng([seed, init_ns % 2**63, lead_ns % 2**63])


def _item_path(spec: ModelSpec, item: tuple[int, int]) -> str | None:
    if spec.cache_dir is None:
        return None
    return os.path.join(spec.cache_dir, spec.label, f"{item[0]}_{item[1]}.npz")


def item_statistics(spec: ModelSpec, item: tuple[int, int]) -> tuple[dict[str, int], xr.Dataset]:
    """Statistics of one work item: (chunk offsets, Dataset with dims time=1, prediction_timedelta=k).
    With `spec.cache_dir`, read from there when an earlier (crashed) run scored the item, and
    written there (whole or not at all) when scored now."""
    offsets = {"time": item[0], "prediction_timedelta": item[1]}
    ds = kept(_item_path(spec, item), lambda: _score_item(spec, item), _write_item, _read_item)
    return offsets, ds


def _score_item(spec: ModelSpec, item: tuple[int, int]) -> xr.Dataset:
    i, j0 = item
    fc = _open_cached(spec.path, "forecast", spec.ensemble_dim)
    tr = _open_cached(spec.truth_path, "truth")
    init = np.datetime64(spec.init_times[i], "ns")
    parts = []
    for j in range(j0, min(j0 + spec.lead_chunk, len(spec.leads))):
        lead = np.timedelta64(spec.leads[j], "ns")
        f_chunk, t_chunk = stores.load_chunk(
            fc, tr, init, lead, spec.pairs, (spec.path, spec.truth_path)
        )
        rng = chunk_rng(spec.seed, spec.init_times[i], spec.leads[j])
        st = chunk_statistics(f_chunk, t_chunk, spec.pairs, ensemble_dim=spec.ensemble_dim, rng=rng)
        parts.append(st.expand_dims(prediction_timedelta=[lead]))
    ds = parts[0] if len(parts) == 1 else xr.concat(parts, dim="prediction_timedelta")
    ds = ds.expand_dims(time=[init])
    ds.attrs = {}
    return ds


def _write_item(ds: xr.Dataset, path: str) -> None:
    """One work item's statistics as an .npz (every variable and coordinate, exact, no pickles;
    about 1 ms, where a netCDF file took 50), written whole or not at all."""
    from gencast_rmmd.remote import written

    arrays, dims = {}, {}
    for name, var in ds.variables.items():
        values = var.values
        arrays[f"var{len(dims)}"] = values.astype(str) if values.dtype == object else values
        dims[name] = list(var.dims)
    meta = {"dims": dims, "coords": list(ds.coords)}
    with written(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, __meta__=np.array(json.dumps(meta)), **arrays)


def _read_item(path: str) -> xr.Dataset:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        data = {
            name: (tuple(dims), z[f"var{k}"]) for k, (name, dims) in enumerate(meta["dims"].items())
        }
    coords = {k: data.pop(k) for k in meta["coords"]}
    return xr.Dataset(data, coords=coords)


def compute_item(spec: ModelSpec, item: tuple[int, int]):
    """`item_statistics` keyed for xarray-beam: (xbeam.Key, Dataset)."""
    import xarray_beam as xbeam

    offsets, ds = item_statistics(spec, item)
    return xbeam.Key(offsets), ds


def _per_init(ds: xr.Dataset) -> xr.Dataset:
    return ds[["crps_skill", "crps_spread", "ensemble_mean_se", "forecast_missing"]]


def _combine_leads(chunks: Sequence) -> xr.Dataset:
    parts = [
        ds for _, ds in sorted(chunks, key=lambda kv: kv[0].offsets.get("prediction_timedelta", 0))
    ]
    return xr.concat(parts, dim="prediction_timedelta")


def _combine_grid(datasets: Sequence[xr.Dataset]) -> xr.Dataset:
    ds = xr.combine_by_coords(list(datasets), combine_attrs="drop")
    return ds.sortby(["time", "prediction_timedelta"])


def _write_nc(ds: xr.Dataset, path: str) -> str:
    return write_netcdf(ds, path)


def run_memory(spec: ModelSpec, progress: bool = True) -> tuple[xr.Dataset, xr.Dataset]:
    """In-memory path: returns (init-time mean statistics, per-init series). Streams chunks.

    Each entry is averaged over the init times where it is not NaN, as `xbeam.Mean(skipna=True)`
    does on Beam (running sums and counts per entry; NaN where no init time has a value).
    """
    sums: dict[int, xr.Dataset] = {}
    counts: dict[int, xr.Dataset] = {}
    per_init = []
    from tqdm import tqdm

    bar = None if progress else True  # None: tqdm's own rule (no bar when not a terminal)
    for item in tqdm(spec.items(), desc=f"evaluate {spec.label}", unit="chunk", disable=bar):
        offsets, ds = item_statistics(spec, item)
        j0 = offsets["prediction_timedelta"]
        s, n = ds.fillna(0.0).sum("time"), ds.notnull().sum("time")
        sums[j0] = s if j0 not in sums else sums[j0] + s
        counts[j0] = n if j0 not in counts else counts[j0] + n
        per_init.append(_per_init(ds))
    means = [(j0, sums[j0] / counts[j0].where(counts[j0] > 0)) for j0 in sorted(sums)]
    mean = xr.concat([m for _, m in means], dim="prediction_timedelta")
    return mean, _combine_grid(per_init)


def build_beam_pipeline(
    pipeline, specs: Sequence[ModelSpec], work_dir: str, fanout: int | None = None
):
    """Add one evaluation branch per model to a Beam pipeline; results land as netCDF in work_dir."""
    import apache_beam as beam
    import xarray_beam as xbeam

    for spec in specs:
        name = spec.label
        chunks = (
            pipeline
            | f"items_{name}" >> beam.Create(spec.items())
            | f"shuffle_{name}" >> beam.Reshuffle()
            | f"statistics_{name}" >> beam.Map(functools.partial(compute_item, spec))
        )
        (
            chunks
            # skipna: an entry that is NaN at some init time (no valid point: the truth or a
            # member all-NaN there) is averaged over the others, as in `run_memory`.
            | f"mean_{name}" >> xbeam.Mean("time", skipna=True, fanout=fanout)
            | f"gather_mean_{name}" >> beam.combiners.ToList()
            | f"write_mean_{name}"
            >> beam.Map(
                lambda xs, p: _write_nc(_combine_leads(xs), p),
                p=os.path.join(work_dir, f"mean_{name}.nc"),
            )
        )
        (
            chunks
            | f"select_{name}" >> beam.Map(lambda kv: _per_init(kv[1]))
            | f"gather_init_{name}" >> beam.combiners.ToList()
            | f"write_init_{name}"
            >> beam.Map(
                lambda xs, p: _write_nc(_combine_grid(xs), p),
                p=os.path.join(work_dir, f"per_init_{name}.nc"),
            )
        )


def run_beam(
    specs: Sequence[ModelSpec],
    work_dir: str,
    beam_args: Sequence[str] = (),
    fanout: int | None = None,
):
    """Run the Beam path; returns {label: (mean statistics, per-init series)}."""
    import apache_beam as beam

    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        build_beam_pipeline(p, specs, work_dir, fanout=fanout)
    out = {}
    for spec in specs:
        mean = read_netcdf(os.path.join(work_dir, f"mean_{spec.label}.nc"))
        per = read_netcdf(os.path.join(work_dir, f"per_init_{spec.label}.nc"))
        out[spec.label] = (mean, per)
    return out


def beam_work_dir(beam_args: Sequence[str] = (), work_dir: str | None = None) -> str | None:
    """The URL the Beam evaluation's workers write their statistics to: `work_dir`, else the
    pipeline's `--temp_location` when it is a URL (Dataflow requires one, on GCS); None: a
    local directory of this process (a runner whose workers run here, `pipelines.runs_here`).
    A local `work_dir` is refused: workers of a distributed runner could not share it, and a
    local runner needs none; so is a runner elsewhere (Flink, Spark, ...) without a URL."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import runs_here

    if work_dir is not None:
        if not is_url(work_dir):
            raise ConfigError(
                f"--work-dir must be a URL the Beam workers share (e.g. gs://bucket/tmp), found "
                f"{work_dir!r}; leave it out to use a local directory"
            )
        return work_dir
    given = PipelineOptions(list(beam_args)).get_all_options()
    temp = given.get("temp_location")
    if temp and is_url(temp):
        return temp
    if not runs_here(beam_args):
        raise ConfigError(
            f"the Beam runner {given.get('runner')} runs its workers elsewhere, and they write the "
            "evaluation's statistics for this process to read back: give --work-dir (or Beam's "
            f"--temp_location) as a URL they share (e.g. gs://bucket/tmp), found {temp!r}"
        )
    return None


@dataclasses.dataclass
class EvaluationResult:
    """What `evaluate` produced: the scorecard, rank histograms, summary and output paths."""

    out_dir: str
    scorecard: xr.Dataset
    rank_histograms: xr.Dataset
    summary: dict
    files: dict[str, str]
    notes: list[str] = dataclasses.field(default_factory=list)  # the report's notes


def _iso(t) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "s"), unit="s"))


# A forecast's values this far from the truth's at its first (init, lead) suggest other units
# (K and degC, geopotential and its height, m and mm of precipitation, Pa and hPa).
SCALE_MEAN_Z = 5.0  # |mean_f - mean_t| / spatial std of the truth
SCALE_STD_RATIO = 5.0  # spatial std of the forecast over the truth's (or its inverse)


def scale_note(
    label: str,
    forecast: xr.Dataset,
    truth: xr.Dataset,
    pairs: Sequence[VariableLevel],
    init: np.datetime64,
    lead: np.timedelta64,
    paths: tuple[str, str],
    ensemble_dim: str,
) -> str | None:
    """The report's warning on variables whose forecast values, at one (init, lead), are far
    from the truth's in mean (more than `SCALE_MEAN_Z` of the truth's spatial standard deviations)
    or spread (a ratio beyond `SCALE_STD_RATIO`), with both stores' `units` attributes: most
    likely other units, which the scores would not say. Points where the truth or a member is
    not finite are left out, as from the scores. None when every variable is in range."""
    f_chunk, t_chunk = stores.load_chunk(forecast, truth, init, lead, pairs, paths)
    far = []
    for var, lev in pairs:
        f, t = f_chunk[var], t_chunk[var]
        if lev is not None:
            f, t = f.sel(level=lev), t.sel(level=lev)
        f = np.asarray(f.transpose(ensemble_dim, "latitude", "longitude").values, np.float64)
        t = np.asarray(t.transpose("latitude", "longitude").values, np.float64)
        both = np.isfinite(t) & np.isfinite(f).all(axis=0)  # e.g. SST: the sea only
        f, t = f[:, both], t[both]
        if not t.size:
            continue
        mf, mt, sf, st = f.mean(), t.mean(), f.std(), t.std()
        off_mean = st > 0 and abs(mf - mt) > SCALE_MEAN_Z * st
        off_std = sf > 0 and st > 0 and not 1 / SCALE_STD_RATIO <= sf / st <= SCALE_STD_RATIO
        if off_mean or off_std:
            units = [str(ds[var].attrs.get("units", "?")) for ds in (forecast, truth)]
            far.append(
                f"{variable_level_label(var, lev)} (mean {mf:.4g}, spread {sf:.3g}, units "
                f"{units[0]!r}; truth mean {mt:.4g}, spread {st:.3g}, units {units[1]!r})"
            )
    if not far:
        return None
    return (
        f"WARNING (scale): {label}: at init {_iso(init)} +{lead // np.timedelta64(1, 'h')} h the "
        "values of " + "; ".join(far) + " are far from the truth's: other units? The scores "
        "compare the numbers as they are"
    )


def prepare(
    forecast_path: str,
    truth_path: str,
    baseline_path: str | None = None,
    ensemble_dim: str = "realization",
    variables: Sequence[str] | None = None,
    allow_overlap: bool = False,
    seed: int = 0,
    lead_chunk: int = 1,
) -> tuple[list[ModelSpec], dict]:
    """Open and check the stores; returns the model specs and the run's metadata."""
    if lead_chunk < 1:
        raise DataError(f"lead_chunk must be >= 1, found {lead_chunk}")
    if problem := seed_problem(seed):
        raise DataError(f"--seed: {problem}")
    if baseline_path and same_store(baseline_path, forecast_path):
        raise DataError(
            f"--baseline {baseline_path!r} is the --forecast store itself: a scorecard of a "
            "forecast against itself is all ties; give the other model's store (or no --baseline)"
        )
    fc, ens_dim = stores.open_forecast(forecast_path, ensemble_dim)
    truth = stores.open_truth(truth_path)
    stores.check_same_grid(fc, truth)
    pairs = stores.scored_pairs(fc, truth, ens_dim, variables)
    init_times = fc["time"].values
    leads = fc["prediction_timedelta"].values
    base = base_dim = None
    if baseline_path:
        base, base_dim = stores.open_forecast(baseline_path, None, role="baseline")
        stores.check_same_grid(base, truth)
        base_pairs = set(stores.scored_pairs(base, truth, base_dim, variables))
        unpaired = [p for p in pairs if p not in base_pairs]
        pairs = [p for p in pairs if p in base_pairs]
        if not pairs:
            raise DataError("forecast and baseline share no variable/level that the truth also has")
        all_inits, all_leads = init_times, leads
        init_times = np.intersect1d(init_times, base["time"].values)
        leads = np.intersect1d(leads, base["prediction_timedelta"].values)
        if not init_times.size or not leads.size:
            raise DataError("forecast and baseline share no init time and lead time")
    notes: list[str] = []
    if base is not None:  # what the comparison leaves out of the forecast: said, not silent
        for n_left, n_all, what, shown in (
            (len(unpaired), len(unpaired) + len(pairs), "variable/level", [
                v if lv is None else f"{v}/{lv}" for v, lv in unpaired]),
            (all_inits.size - init_times.size, all_inits.size, "init time", [
                _iso(t) for t in np.setdiff1d(all_inits, init_times)]),
            (all_leads.size - leads.size, all_leads.size, "lead time", [
                f"{int(t // np.timedelta64(1, 'h'))} h" for t in np.setdiff1d(all_leads, leads)]),
        ):  # fmt: skip
            if n_left:
                notes.append(
                    f"{n_left} of the forecast's {n_all} {what}s not scored: the baseline lacks "
                    f"them ({', '.join(shown[:5])}{' ...' if n_left > 5 else ''})"
                )
    sub = fc.sel(prediction_timedelta=leads)
    al = stores.align(sub, truth, stores.training_period(fc), init_times=init_times)
    if base is not None:
        al_b = stores.align(
            base.sel(prediction_timedelta=leads), truth, stores.training_period(base), al.init_times
        )
        overlap = np.union1d(al.overlapping, al_b.overlapping)
    else:
        overlap = al.overlapping
    if al.dropped.size:
        notes.append(
            f"{al.dropped.size} init time(s) skipped because the truth lacks some valid times: "
            + ", ".join(_iso(t) for t in al.dropped[:5])
            + (" ..." if al.dropped.size > 5 else "")
        )
    if not al.init_times.size:
        raise DataError(
            f"no init time of {forecast_path!r} has all its valid times (init + lead up to "
            f"{int(leads.max() // np.timedelta64(1, 'h'))} h) in the truth store {truth_path!r}"
        )
    if overlap.size:
        msg = (
            f"{overlap.size} of {al.init_times.size} init times have valid times inside the model's "
            f"training period ({', '.join(_iso(t) for t in overlap[:3])}{' ...' if overlap.size > 3 else ''})"
        )
        if not allow_overlap:
            raise DataError(
                msg + "; scores there measure fit, not skill. Evaluate on held-out dates or pass "
                "--allow-overlap to score them anyway (the report will say so)"
            )
        notes.append("WARNING (leakage): " + msg + "; scored anyway because of --allow-overlap")
    first = (al.init_times[0], np.asarray(leads)[0])
    for label, ds, path, dim in (
        ("forecast", fc, forecast_path, ens_dim),
        ("baseline", base, baseline_path, base_dim),
    ):
        if ds is not None:
            note = scale_note(label, ds, truth, pairs, *first, (path, truth_path), dim)
            if note:
                notes.append(note)
    inits_ns = tuple(int(t) for t in al.init_times.astype("datetime64[ns]").astype(np.int64))
    leads_ns = tuple(int(t) for t in np.asarray(leads).astype("timedelta64[ns]").astype(np.int64))
    specs = [
        ModelSpec(
            "forecast",
            forecast_path,
            truth_path,
            ens_dim,
            tuple(pairs),
            inits_ns,
            leads_ns,
            seed,
            lead_chunk,
        )
    ]
    if base is not None:
        specs.append(
            ModelSpec(
                "baseline",
                baseline_path,
                truth_path,
                base_dim,
                tuple(pairs),
                inits_ns,
                leads_ns,
                seed,
                lead_chunk,
            )
        )
    lat = fc["latitude"].values
    lon = fc["longitude"].values
    meta = {
        "forecast": forecast_path,
        "baseline": baseline_path,
        "truth": truth_path,
        "forecast_model": str(fc.attrs.get("model", os.path.basename(forecast_path.rstrip("/")))),
        "baseline_model": None
        if base is None
        else str(base.attrs.get("model", os.path.basename(baseline_path.rstrip("/")))),
        "ensemble_dim": ens_dim,
        "ensemble_size": int(fc.sizes[ens_dim]),
        "baseline_ensemble_size": None if base is None else int(base.sizes[base_dim]),
        # Which stores were scored (their store ids; None for stores without one): a store
        # re-made at the same path is told from the one this evaluation saw.
        "forecast_store_id": fc.attrs.get(STORE_ID_ATTR),
        "baseline_store_id": None if base is None else base.attrs.get(STORE_ID_ATTR),
        "truth_store_id": store_id(truth_path),
        "estimator": "fair CRPS (Ferro 2014; skill - spread/2, spread over distinct member pairs); "
        "ensemble-mean RMSE = sqrt(mean SE); spread/skill = sqrt((M+1)/M) sqrt(mean var / mean SE); "
        "rank histogram with random tie-breaking",
        "grid": f"{lat.size}x{lon.size} latitude {lat.min():.4g}..{lat.max():.4g}, longitude {lon.min():.4g}..{lon.max():.4g}",
        "time_window": f"init {_iso(al.init_times.min())} .. {_iso(al.init_times.max())}, {al.init_times.size} init times",
        "n_init_times": int(al.init_times.size),
        "lead_times_hours": [int(x // np.timedelta64(1, "h")) for x in np.asarray(leads)],
        "regions": {k: list(v) for k, v in REGIONS.items()},
        "significance": "paired two-sided t-test over init times on per-init CRPS (RMSE: MSE) "
        "differences, lag-1 autocorrelation effective sample size, alpha = 0.05",
        "training_period": stores.training_period(fc),
        "overlapping_init_times": [_iso(t) for t in overlap],
        "notes": notes,
        "seed": seed,
    }
    for label, size in (
        ("forecast", meta["ensemble_size"]),
        ("baseline", meta["baseline_ensemble_size"]),
    ):
        if size == 1:
            notes.append(
                f"the {label} store has 1 member: its CRPS is that member's absolute error, its "
                "spread is 0 (spread/skill 0) and its rank histogram has 2 bins; score 2 or more "
                "members to measure calibration"
            )
    return specs, meta


def _field_name(da: xr.DataArray, i: int, j: int, k: int) -> str:
    """'temperature/850 +24 h at init 2020-01-01T00:00:00': entry (i, j, k) of `da`, whose dims
    are (time, prediction_timedelta, variable-level)."""
    lead = da["prediction_timedelta"].values[j] // np.timedelta64(1, "h")
    return f"{da[VL_DIM].values[k]} +{lead} h at init {_iso(da['time'].values[i])}"


def skipped_note(label: str, per_init: xr.Dataset, shown: int = 3) -> str | None:
    """The report's note on a model's per-init statistics left out of the init-time means: those
    (init time, lead time, variable-level) with no valid point in some region (the truth or a
    member all-NaN there, e.g. a NaN-filled truth time); None when there are none. Entries NaN at
    every init time (NaN in the scorecard) are not counted."""
    bad = per_init["crps_skill"].isnull()
    left_out = (bad & ~bad.all("time")).any("region")
    left_out = left_out.transpose("time", "prediction_timedelta", VL_DIM)
    n = int(left_out.sum())
    if not n:
        return None
    where = [_field_name(left_out, *ijk) for ijk in np.argwhere(left_out.values)[:shown]]
    return (
        f"{label}: {n} of {left_out.size} (init time, lead time, variable-level) statistics had no "
        "valid point in some region (the truth or a member all-NaN there) and were left out of "
        "those entries' means over init times: " + ", ".join(where) + (" ..." if n > shown else "")
    )


def missing_note(label: str, per_init: xr.Dataset, shown: int = 3) -> str | None:
    """The report's warning on a model whose members are NaN or infinite where the truth has a
    value (a failed forecast, e.g. a diverged rollout): how many (init time, lead time,
    variable-level) fields have such points, the largest share of the globe, and the first
    fields; None when there are none. Those points are left out of every score, which would
    otherwise hide the failure."""
    if "forecast_missing" not in per_init:  # statistics written before this check existed
        return None
    frac = per_init["forecast_missing"]
    frac = frac.sel(region="global") if "global" in frac["region"] else frac.max("region")
    frac = frac.transpose("time", "prediction_timedelta", VL_DIM)
    hit = (frac > 0).values
    n = int(hit.sum())
    if not n:
        return None
    where = [
        f"{_field_name(frac, *ijk)} ({float(frac.values[tuple(ijk)]):.2%})"
        for ijk in np.argwhere(hit)[:shown]
    ]
    return (
        f"WARNING (missing values): {label}: members are NaN or infinite where the truth has a "
        f"value in {n} of {hit.size} (init time, lead time, variable-level) fields, up to "
        f"{float(frac.max()):.2%} of the globe (latitude-weighted): "
        + ", ".join(where)
        + (" ..." if n > shown else "")
        + "; those points are left out of the scores, so the scorecard does not count them as "
        "errors"
    )


ITEM_CACHE_VERSION = 1  # raise when the per-item statistics change (their variables, meaning)


def item_cache(out_dir: str, specs: Sequence[ModelSpec]) -> str:
    """The directory that keeps an evaluation's per-item statistics until it is written, beside
    `out_dir` (`pipelines.resume_dir`, kind `eval-items`): its key covers the models' specs
    (stores, truth, variables, init and lead times, seed, chunking), each store's
    `store_fingerprint` and `ITEM_CACHE_VERSION`, so a re-run with the same settings resumes
    and any other starts afresh."""
    from gencast_rmmd.data.era5 import store_fingerprint

    def where(p: str) -> str:
        return p if is_url(p) else os.path.abspath(p)

    key = {
        "version": ITEM_CACHE_VERSION,
        "specs": [
            {**dataclasses.asdict(s), "path": where(s.path), "truth_path": where(s.truth_path)}
            for s in specs
        ],
        "stores": {p: store_fingerprint(p) for s in specs for p in (s.path, s.truth_path)},
    }
    return resume_dir(out_dir, "eval-items", key)


def _nc_attrs(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if v is None:
            continue
        out[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
    return out


def _remove_stale_tmp(parent: str, prefix: str) -> None:
    """Remove the temp dirs `<prefix><pid>-*` of earlier runs for the same --out whose process no
    longer exists (a killed run cannot clean up after itself)."""
    for name in os.listdir(parent):
        pid = name[len(prefix) :].split("-", 1)[0] if name.startswith(prefix) else ""
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (another evaluation into the same --out)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def evaluate(
    forecast_path: str,
    truth_path: str,
    out_dir: str,
    baseline_path: str | None = None,
    ensemble_dim: str = "realization",
    variables: Sequence[str] | None = None,
    allow_overlap: bool = False,
    engine: str = "beam",
    beam_args: Sequence[str] = (),
    seed: int = 0,
    lead_chunk: int = 1,
    plots: bool = True,
    work_dir: str | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Score a forecast store (optionally against a baseline) and write all outputs to `out_dir`.

    The report's notes (warnings: scored init times in the training period, members NaN or
    infinite where the truth has a value, values far from the truth's; and what was left out)
    are also printed on stderr. `progress=False` hides the memory engine's progress bar (by
    default it shows on a terminal).

    Resumable: each work item's statistics are kept beside `out_dir` (`item_cache`) until the
    outputs are in place, so a re-run after a crash scores only the items not yet done (not on
    Dataflow, whose workers share no disk with this process and which retries failed items).

    Outputs (written in a temporary directory, then moved into place): scorecard.nc,
    scorecard.csv, rank_histograms.nc, scorecard_*.png, spread_skill.png, rank_histograms.png,
    report.html, evaluation.json (metadata + summary), stats/ (mean and per-init statistics).

    `work_dir`: where the Beam pipeline's last steps write the statistics for this process to
    read back (`beam_work_dir`): a URL shared with the workers (gs://... on Dataflow, where
    workers share no disk with the launcher); by default the pipeline's `--temp_location` when
    that is a URL, else a local directory. A sub-directory of it is used and removed.
    """
    from gencast_rmmd.evaluation import plots as plots_lib
    from gencast_rmmd.evaluation import report as report_lib

    if engine not in ("beam", "memory"):
        raise DataError(f"engine must be 'beam' or 'memory', found {engine!r}")
    _open_cached.cache_clear()  # a store rewritten at the same path since a previous call
    # built beside --out, then renamed into place
    out_dir = os.path.abspath(check_local_out_dir(out_dir, "a new path", "evaluate", beside=True))
    if (
        os.path.exists(out_dir)
        and os.listdir(out_dir)
        and not os.path.exists(os.path.join(out_dir, MARKER))
    ):
        raise OutputError(
            f"output directory {out_dir!r} exists and holds other files (no {MARKER}); choose a new "
            "path or empty it"
        )
    specs, meta = prepare(
        forecast_path,
        truth_path,
        baseline_path,
        ensemble_dim,
        variables,
        allow_overlap,
        seed,
        lead_chunk,
    )
    parent = os.path.dirname(out_dir) or "."
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(out_dir)}.eval-tmp-"
    _remove_stale_tmp(parent, prefix)
    shared = beam_work_dir(beam_args, work_dir) if engine == "beam" else None
    cache = None
    if shared is None:  # workers on this machine (Dataflow retries its own failed work items)
        cache = item_cache(out_dir, specs)
        specs = [dataclasses.replace(s, cache_dir=cache) for s in specs]
        for s in specs:
            done = kept_count(os.path.join(cache, s.label))
            if done:
                print(
                    f"evaluate {s.label}: resuming, {done} of {len(s.items())} work items "
                    f"already scored ({cache})",
                    file=sys.stderr,
                    flush=True,
                )
    tmp = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    try:
        stats_dir = os.path.join(tmp, "stats")
        os.makedirs(stats_dir)
        if engine == "beam" and shared is None:  # the workers write into stats_dir themselves
            results = run_beam(specs, stats_dir, beam_args)
        else:
            if engine == "beam":
                run_dir = f"{shared.rstrip('/')}/gencast_rmmd_evaluate-{uuid.uuid4().hex}"
                try:
                    results = run_beam(specs, run_dir, beam_args)
                finally:
                    remove(run_dir)
            else:
                results = {spec.label: run_memory(spec, progress) for spec in specs}
            for label, (mean, per) in results.items():  # kept beside the report
                _write_nc(mean, os.path.join(stats_dir, f"mean_{label}.nc"))
                _write_nc(per, os.path.join(stats_dir, f"per_init_{label}.nc"))
        for label, (_, per) in results.items():
            for note in (missing_note(label, per), skipped_note(label, per)):
                if note:
                    meta["notes"].append(note)
        attrs = _nc_attrs(meta)
        mean_f, per_f = results["forecast"]
        card = sc_lib.finalize(mean_f, meta["ensemble_size"], attrs)
        hist = sc_lib.rank_histograms(mean_f)
        hist.attrs.update(attrs)
        if "baseline" in results:
            mean_b, per_b = results["baseline"]
            base_card = sc_lib.finalize(mean_b, meta["baseline_ensemble_size"])
            card = sc_lib.compare(card, base_card, per_f, per_b)
            hist_b = sc_lib.rank_histograms(mean_b)
            for k in hist_b.data_vars:  # the baseline may have another ensemble size (bins)
                v = hist_b[k]
                hist[f"baseline_{k}"] = v.rename(bin="baseline_bin") if "bin" in v.dims else v
        summ = sc_lib.summary(card)
        files = {
            "scorecard.nc": _write_nc(card, os.path.join(tmp, "scorecard.nc")),
            "rank_histograms.nc": _write_nc(hist, os.path.join(tmp, "rank_histograms.nc")),
        }
        csv = os.path.join(tmp, "scorecard.csv")
        sc_lib.tidy_table(card).to_csv(csv, index=False)
        files["scorecard.csv"] = csv
        if plots:
            files.update(plots_lib.write_all(card, hist, tmp))
        meta["summary"] = summ
        meta["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        files["report.html"] = report_lib.write_report(
            card, hist, meta, files, os.path.join(tmp, "report.html")
        )
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(meta, f, indent=2, default=str)
        publish_mode(tmp)  # mkdtemp makes it 0700; give it a plain mkdir's permissions
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        say_kept(e, cache, "work items")
        raise  # the item cache stays: a re-run resumes from it
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
    files = {k: os.path.join(out_dir, os.path.basename(v)) for k, v in files.items()}
    for note in meta["notes"]:  # the report's notes and warnings (leakage, missing values,
        # scale, what was left out): stderr too
        print(note if note.startswith("WARNING") else f"note: {note}", file=sys.stderr, flush=True)
    return EvaluationResult(out_dir, card, hist, summ, files, list(meta["notes"]))


def is_current(out_dir: str, forecast_path: str, baseline_path: str | None = None) -> bool:
    """True when `out_dir` holds a finished evaluation (its MARKER and scorecard) of the forecast
    and baseline stores, against the truth store, as they are now: a store re-made at the same
    path since it was scored has another store id (`data.era5.STORE_ID_ATTR`), which makes the
    evaluation stale (an evaluation that predates the truth's id is taken as current for it)."""
    marker = os.path.join(out_dir, MARKER)
    if not os.path.exists(os.path.join(out_dir, "scorecard.csv")) or not os.path.exists(marker):
        return False
    try:
        with open(marker) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    baseline = None if baseline_path is None else store_id(baseline_path)
    truth_ok = "truth_store_id" not in meta or meta["truth_store_id"] == store_id(
        str(meta.get("truth"))
    )
    return (
        meta.get("forecast_store_id") == store_id(forecast_path)
        and meta.get("baseline_store_id") == baseline
        and truth_ok
    )


load_summary = sc_lib.load_summary


__all__ = [
    "evaluate",
    "is_current",
    "load_summary",
    "prepare",
    "run_beam",
    "run_memory",
    "ModelSpec",
    "STATISTICS",
]
