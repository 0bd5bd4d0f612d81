"""Opening forecast and truth stores for evaluation, and aligning them by valid time.

Forecast stores follow WeatherBench 2's schema: `time` is the initialization time,
`prediction_timedelta` the lead time, an ensemble dim (`realization` by default; `sample` in
GenCast's files, `number` in ECMWF's), optional `level`, and `latitude`/`longitude` (`lat`/`lon`
are accepted). The truth is any ERA5-schema store with a `time` dim. Both are opened lazily
(`chunks=None`, no dask) and flipped to increasing latitude. The verifying state of
(init, lead) is the truth at valid time = init + lead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from gencast_rmmd.data.era5 import open_store, refuse_forecast_store
from gencast_rmmd.errors import DataError
from gencast_rmmd.forecast.store import STATUS_ATTR
from gencast_rmmd.safety import load_or_data_error

ENSEMBLE_DIMS = ("realization", "sample", "number")
TRAIN_START_ATTR = "training_period_start"
TRAIN_END_ATTR = "training_period_end"


def _open(path: str) -> xr.Dataset:
    """A forecast or truth store (local Zarr/NetCDF, or an fsspec URL such as a WeatherBench 2
    or ARCO-ERA5 bucket), through the data layer's opener, as lazily loaded numpy arrays."""
    return open_store(path, chunks=None, allow_forecast=True)


def canonical_grid(ds: xr.Dataset) -> xr.Dataset:
    """Rename lat/lon to latitude/longitude, sort latitude ascending, longitude into [0, 360).

    Uses the data layer's `normalize_coords` (also levels in Pa -> hPa), then WeatherBench 2's
    dim names.
    """
    from gencast_rmmd.data.era5 import normalize_coords

    ds = normalize_coords(ds)
    ren = {a: b for a, b in (("lat", "latitude"), ("lon", "longitude")) if a in ds.dims}
    ds = ds.rename(ren)
    for d in ("latitude", "longitude"):
        if d not in ds.dims:
            raise DataError(
                f"store has no {d!r} (or {d[:3]!r}) dimension; found dims {list(ds.dims)}"
            )
    if ds.sizes["latitude"] > 1 and ds["latitude"].values[0] > ds["latitude"].values[-1]:
        ds = ds.isel(latitude=slice(None, None, -1))
    return ds


def _from_gencast_predictions(ds: xr.Dataset, path: str, role: str) -> xr.Dataset:
    """GenCast's own predictions (its rollout's output: `sample`, a `batch` dim of one, `time`
    as lead times and the valid times in a `datetime` (batch, time) coordinate) in WeatherBench
    2's forecast schema: one init time (the first valid time less the first lead) and
    `prediction_timedelta`. Anything else is returned as it is."""
    from gencast_rmmd.data.era5 import one_batch

    found = None if "prediction_timedelta" in ds.dims else one_batch(ds, f"{role} store {path!r}")
    if found is None:
        return ds
    ds, valid = found
    init = valid[0] - ds["time"].values[0]  # each batch: one init time
    return ds.rename({"time": "prediction_timedelta"}).expand_dims(time=[init])


# The dims of a forecast's fields (init time, lead time, level, grid): never its ensemble dim.
_FIELD_DIMS = ("time", "prediction_timedelta", "level", "latitude", "longitude")


def open_forecast(
    path: str, ensemble_dim: str | None = "realization", role: str = "forecast"
) -> tuple[xr.Dataset, str]:
    """Open a forecast store; returns (dataset, name of its ensemble dim).

    With `ensemble_dim=None` the first of `ENSEMBLE_DIMS` present is used; a named dim that the
    store lacks is an error. A store of ours still being written (attr `gencast_rmmd_status:
    incomplete`) is refused. `role` names the store in errors ("forecast", "baseline").
    """
    ds = canonical_grid(_from_gencast_predictions(_open(path), path, role))
    if ds.attrs.get(STATUS_ATTR, "complete") != "complete":
        raise DataError(
            f"{role} store {path!r} is incomplete (status {ds.attrs[STATUS_ATTR]!r}); re-run "
            "`gencast-rmmd forecast` with the same arguments to fill the missing regions"
        )
    for d in ("time", "prediction_timedelta"):
        if d not in ds.dims:
            raise DataError(
                f"{role} store {path!r} needs dims 'time' (init time) and 'prediction_timedelta'"
                f" (lead time) as in WeatherBench 2; found dims {list(ds.dims)}"
            )
    if ensemble_dim is not None:
        present = [d for d in ENSEMBLE_DIMS if d in ds.dims]
        hint = f"; it has {present[0]!r}: pass --ensemble-dim {present[0]}" if present else ""
        if ensemble_dim not in ds.dims:
            raise DataError(
                f"{role} store {path!r} has no ensemble dim {ensemble_dim!r}; found dims "
                f"{list(ds.dims)}{hint}"
            )
        if ensemble_dim in _FIELD_DIMS:  # scored along, not over: an internal error before
            raise DataError(
                f"--ensemble-dim {ensemble_dim!r} is one of a forecast's field dims "
                f"({', '.join(_FIELD_DIMS)}), not its members' dim{hint}"
            )
        return ds, ensemble_dim
    found = next((d for d in ENSEMBLE_DIMS if d in ds.dims), None)
    if found is None:
        raise DataError(
            f"{role} store {path!r} has none of the ensemble dims {', '.join(ENSEMBLE_DIMS)}; "
            f"found dims {list(ds.dims)}"
        )
    return ds, found


def open_truth(path: str) -> xr.Dataset:
    """Open an ERA5-schema truth store lazily (dims time, [level], lat/latitude, lon/longitude)."""
    ds = canonical_grid(_open(path))
    if "time" not in ds.dims:
        raise DataError(f"truth store {path!r} has no 'time' dim; found dims {list(ds.dims)}")
    refuse_forecast_store(ds, path, "truth store")  # e.g. the baseline's store given as truth
    members = [d for d in (*ENSEMBLE_DIMS, "batch") if d in ds.dims]
    if members:  # e.g. GenCast's own predictions, whose valid times read as a time axis
        raise DataError(
            f"truth store {path!r} has a {members[0]!r} dim (an ensemble's members, or batches): "
            f"it is a forecast, not analyses; found dims {list(ds.dims)}. The truth is one state "
            "per time, such as ERA5 itself or the nature run"
        )
    return ds


def scored_pairs(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    ensemble_dim: str,
    variables: Sequence[str] | None = None,
) -> list[tuple[str, int | None]]:
    """(variable, level) rows scored: forecast variables the truth also has, on common levels.

    Raises `DataError` if nothing is in common or a requested variable is missing.
    """
    names = [
        v
        for v in forecast.data_vars
        if {ensemble_dim, "latitude", "longitude"} <= set(forecast[v].dims)
    ]
    if variables:
        missing = [v for v in variables if v not in names or v not in truth]
        if missing:
            raise DataError(
                f"variables {missing} are not in both stores; forecast has {sorted(names)}, truth "
                f"has {sorted(truth.data_vars)}"
            )
        names = list(variables)
    names = sorted({v for v in names if v in truth.data_vars})  # a name given twice scores once
    pairs: list[tuple[str, int | None]] = []
    for v in names:
        if "level" in forecast[v].dims:
            if "level" not in truth[v].dims:
                continue
            common = sorted(
                set(forecast["level"].values.tolist()) & set(truth["level"].values.tolist())
            )
            pairs.extend((v, int(lev)) for lev in common)
        else:
            pairs.append((v, None))
    if not pairs:
        raise DataError(
            f"forecast and truth share no variable/level to score; forecast has "
            f"{sorted(forecast.data_vars)}, truth has {sorted(truth.data_vars)}"
        )
    return pairs


def check_same_grid(forecast: xr.Dataset, truth: xr.Dataset, tol: float = 1e-3) -> None:
    """Raise `DataError` unless both stores have the same latitude/longitude (within `tol` deg)."""
    for d in ("latitude", "longitude"):
        a, b = forecast[d].values, truth[d].values
        if a.shape != b.shape or not np.allclose(a, b, atol=tol):
            raise DataError(
                f"forecast and truth grids differ in {d}: forecast {a.size} points "
                f"[{a.min():.3f}..{a.max():.3f}], truth {b.size} points [{b.min():.3f}..{b.max():.3f}];"
                " regrid one of them first"
            )


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Which (init time, lead time) pairs can be scored.

    init_times: datetime64[ns] of the scored init times; leads: timedelta64[ns];
    dropped: init times skipped because a valid time is missing from the truth;
    overlapping: scored init times whose valid times overlap the model's training period.
    """

    init_times: np.ndarray
    leads: np.ndarray
    dropped: np.ndarray
    overlapping: np.ndarray


def align(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    training_period: tuple[str, str] | None = None,
    init_times: np.ndarray | None = None,
) -> Alignment:
    """Select the init times whose every valid time (init + lead) is in the truth store.

    Args:
      training_period: (start, end) ISO strings of the model's training data, or None.
      init_times: optional subset of the forecast's init times to consider.
    """
    inits = forecast["time"].values if init_times is None else np.asarray(init_times)
    leads = forecast["prediction_timedelta"].values
    have = pd.DatetimeIndex(truth["time"].values)
    keep, dropped = [], []
    for t in inits:
        valid = pd.DatetimeIndex(t + leads)
        (keep if valid.isin(have).all() else dropped).append(t)
    keep_a = np.array(keep, dtype="datetime64[ns]")
    overlapping = np.array([], dtype="datetime64[ns]")
    if training_period is not None and keep_a.size:
        start, end = (
            np.datetime64(pd.Timestamp(s).tz_localize(None), "ns") for s in training_period
        )
        lo = keep_a + leads.min()
        hi = keep_a + leads.max()
        overlapping = keep_a[(lo <= end) & (hi >= start)]
    return Alignment(keep_a, leads, np.array(dropped, dtype="datetime64[ns]"), overlapping)


def training_period(ds: xr.Dataset) -> tuple[str, str] | None:
    """The (start, end) training period recorded in a forecast store's attrs, or None."""
    a, b = ds.attrs.get(TRAIN_START_ATTR), ds.attrs.get(TRAIN_END_ATTR)
    return (str(a), str(b)) if a and b else None


def load_chunk(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    init_time: np.datetime64,
    lead: np.timedelta64,
    pairs: Sequence[tuple[str, int | None]],
    paths: tuple[str, str] = ("forecast", "truth"),
) -> tuple[xr.Dataset, xr.Dataset]:
    """Load one (init, lead) forecast chunk (all members, full globe) and its verifying truth.

    A chunk that cannot be decoded (truncated or corrupt file) raises `DataError` naming the store,
    the variable and the time.
    """
    names = sorted({v for v, _ in pairs})
    levels = sorted({lev for _, lev in pairs if lev is not None})
    fc = forecast[names].sel(time=init_time, prediction_timedelta=lead)
    tr = truth[names].sel(time=init_time + lead)
    if levels:
        fc = fc.sel(level=levels) if "level" in fc.dims else fc
        tr = tr.sel(level=levels) if "level" in tr.dims else tr
    return _load(fc, paths[0], f"init {init_time} lead {lead}"), _load(
        tr, paths[1], f"valid time {init_time + lead}"
    )


def _load(ds: xr.Dataset, path: str, where: str) -> xr.Dataset:
    return load_or_data_error(ds, path, where)
