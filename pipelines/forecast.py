"""Forecast pipeline: init times x member blocks -> autoregressive rollouts -> one Zarr store.

    template store (metadata, status "incomplete")  -->  work items (init time, member block) not
    yet marked done --Reshuffle--> per worker: load the model once, compile the rollout once
    (`gencast_rmmd.forecast.rollout.Rollout`), read the initial state, roll out, write the region,
    mark it done  -->  launcher: status "complete" when every region is marked

Runs on Beam (`engine="beam"`; in process by default, Dataflow/Flink/Spark with their options) or
in a plain loop with a progress bar (`engine="local"`). Both produce identical stores: member i of
init t uses key fold_in(fold_in(PRNGKey(seed), hours(t)), i) whatever the blocking.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gencast_rmmd import runtime
from gencast_rmmd.config import seed_problem
from gencast_rmmd.data.era5 import store_id, time_spacing
from gencast_rmmd.data.stats import stats_sha256
from gencast_rmmd.errors import ConfigError, DataError, OutputError
from gencast_rmmd.forecast import store as store_lib
from gencast_rmmd.remote import check_out_dir, check_room, filesystem, is_url, source_path
from gencast_rmmd.runtime import available_memory
from gencast_rmmd.safety import file_sha256
from pipelines import pipeline_options, runs_here

METRICS_SUFFIX = ".metrics.jsonl"  # F.zarr.metrics.jsonl: one JSON line per region (local engine)
PERSISTENCE = "persistence"  # --model persistence[:NOISE], the model-free baseline
# More init times than any forecast campaign needs (50 years at 12 h is 36,525): a larger range is
# a mistyped step or end, refused before the times are materialized.
MAX_INIT_TIMES = 100_000


def persistence_noise(model: str) -> float | None:
    """The noise scale of `--model persistence[:NOISE]` (0 without NOISE); None for a checkpoint.

    NOISE must be a finite number >= 0: the residual's scale in units of the climatological 12 h
    change std (forecast.model.persistence_model).
    """
    if model == PERSISTENCE:
        return 0.0
    if not model.startswith(PERSISTENCE + ":"):
        return None
    text = model[len(PERSISTENCE) + 1 :]
    try:
        noise = float(text)
    except ValueError:
        noise = float("nan")
    if not math.isfinite(noise) or noise < 0:
        raise ConfigError(
            f"--model {model!r}: NOISE in persistence:NOISE must be a finite number >= 0 (the "
            f"residual's scale in climatological 12 h change std), found {text!r}"
        )
    return noise


@dataclasses.dataclass(frozen=True)
class ForecastSpec:
    """Picklable description of a forecast run (everything a worker needs)."""

    model: str  # checkpoint path or "persistence[:noise]"
    stats_dir: str
    data: str
    out: str
    init_times: tuple[str, ...]  # ISO
    members: int
    lead_steps: int
    seed: int
    member_block: int
    data_config: str | None = None
    model_sha256: str | None = None  # the checkpoint's bytes (None: persistence)
    stats_sha256: str | None = None  # the normalisation statistics' bytes (data.stats)
    data_store_id: str | None = None  # the data store's id (data.era5.store_id)

    def store_spec(self) -> dict:
        """What must match for a re-run to resume into an existing store."""
        return {
            "model": self.model
            if persistence_noise(self.model) is not None or is_url(self.model)
            else os.path.abspath(self.model),
            "init_times": list(self.init_times),
            "members": self.members,
            "lead_steps": self.lead_steps,
            "seed": self.seed,
            "member_block": self.member_block,
            "model_sha256": self.model_sha256,
            "stats_sha256": self.stats_sha256,
            "data_store_id": self.data_store_id,
        }

    def items(self) -> list[tuple[int, int]]:
        return [
            (i, m)
            for i in range(len(self.init_times))
            for m in range(0, self.members, self.member_block)
        ]


def _utc(text: str) -> pd.Timestamp:
    """An ISO time as a naive UTC timestamp: one with an offset (`...T17:00+05:00`, `...Z`) is
    converted to UTC (`tz_localize(None)` alone kept the local wall time: 5 h off here)."""
    ts = pd.Timestamp(text)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def parse_init_times(values: Sequence[str], step_hours: int = 12) -> list[np.datetime64]:
    """ISO times and/or ranges START/END[/STEP] (STEP like 12h or 1D: a positive whole number of
    hours with a unit; default the model step), in UTC (a time with an offset is converted). At
    most `MAX_INIT_TIMES` per range."""
    out: list[np.datetime64] = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "/" in part:
                    bits = part.split("/")
                    if len(bits) not in (2, 3):
                        raise ValueError("expected START/END or START/END/STEP")
                    start, end = _utc(bits[0]), _utc(bits[1])
                    freq = bits[2] if len(bits) == 3 else f"{step_hours}h"
                    step = pd.Timedelta(freq)
                    # pandas reads a STEP without a unit as nanoseconds ('12' -> 12 ns).
                    if step <= pd.Timedelta(0) or step % pd.Timedelta(hours=1):
                        raise ConfigError(
                            f"--init-times: the STEP of {part!r} must be a positive whole number "
                            f"of hours with a unit, e.g. START/END/12h or START/END/1D; found "
                            f"{freq!r} (read as {step})"
                        )
                    if end < start:
                        raise ConfigError(
                            f"--init-times: {part!r} ends before it starts (END {end} is before "
                            f"START {start}); write START/END with START first"
                        )
                    if (end - start) // step + 1 > MAX_INIT_TIMES:
                        raise ConfigError(
                            f"--init-times: {part!r} spans {(end - start) // step + 1} init times, "
                            f"more than {MAX_INIT_TIMES}; check START/END/STEP"
                        )
                    rng = pd.date_range(start, end, freq=step)
                    out.extend(np.datetime64(t, "ns") for t in rng)
                else:
                    out.append(np.datetime64(_utc(part), "ns"))
            except (ValueError, TypeError) as e:
                raise ConfigError(
                    f"--init-times: cannot parse {part!r} ({e}); use ISO times or START/END[/STEP]"
                ) from None
    if not out:
        raise ConfigError("--init-times: no init time given")
    if len(set(out)) != len(out):
        times, counts = np.unique(np.asarray(out, "datetime64[ns]"), return_counts=True)
        dup = times[counts > 1]
        first = str(dup[0].astype("datetime64[m]"))
        raise ConfigError(
            f"--init-times: {len(dup)} init time(s) given more than once (e.g. {first}; a time "
            "and a range that covers it count twice)"
        )
    return sorted(out)


def lead_steps_from(lead_steps: int | None, lead_time: str | None, step_hours: int) -> int:
    """Number of steps from --lead-steps or --lead-time (which must be a multiple of the step)."""
    if (lead_steps is None) == (lead_time is None):
        raise ConfigError(
            "give exactly one of --lead-steps N or --lead-time DURATION (e.g. 240h, 10D)"
        )
    if lead_time is not None:
        if re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)\s*", lead_time):  # pandas: nanoseconds
            raise ConfigError(
                f"--lead-time {lead_time!r} has no unit; use e.g. {lead_time.strip()}h or 10D"
            )
        try:
            td = pd.Timedelta(lead_time)
        except ValueError:
            raise ConfigError(
                f"--lead-time: cannot parse {lead_time!r}; use e.g. 240h or 10D"
            ) from None
        hours = td / pd.Timedelta(hours=1)
        if hours <= 0 or hours % step_hours:
            raise ConfigError(
                f"--lead-time must be a positive multiple of the model step ({step_hours} h), found {lead_time!r} ({hours:g} h)"
            )
        return int(hours // step_hours)
    if lead_steps <= 0:
        raise ConfigError(f"--lead-steps must be >= 1, found {lead_steps}")
    return int(lead_steps)


def load_model(spec: ForecastSpec):
    """The `ForecastModel` named by spec.model (checkpoint or built-in persistence)."""
    from gencast_rmmd.forecast.model import (
        load_forecast_model,
        norm_from_stats_dir,
        persistence_model,
    )

    noise = persistence_noise(spec.model)
    if noise is not None:
        from gencast_rmmd.data.config import load_data_config

        task = load_data_config(spec.data_config or "embedded").task
        norm, sst = norm_from_stats_dir(spec.stats_dir, task)
        return persistence_model(task, norm, noise, sst_fill=sst)
    if spec.data_config is not None:
        raise ConfigError(
            f"--data-config applies to --model persistence only (its task); the checkpoint "
            f"{spec.model!r} carries its own task: leave --data-config out"
        )
    return load_forecast_model(spec.model, spec.stats_dir)


def open_data(path: str):
    """The canonical data store (lat/lon ascending), opened lazily by the data layer."""
    from gencast_rmmd.data.era5 import normalize_coords, open_store

    return normalize_coords(open_store(path))


def initial_conditions(ds, task, init_time, lead_steps: int, sst_fill: float | None):
    """(inputs_phys [lat, lon, C_in], forcings_phys [N, lat, lon, C_f]) for one init time.

    Inputs come from the data store (input frames ending at init_time); the forcings at the N
    target times are computed from time and longitude (so forecasts may run past the data's end).
    """
    import xarray as xr

    from gencast_rmmd.data.era5 import progress_forcings
    from gencast_rmmd.data.examples import physical_window, stack

    inputs, _, _ = physical_window(ds, task, init_time, 0, sst_fill=sst_fill)
    step = np.timedelta64(task.step_hours, "h")
    times = np.datetime64(init_time, "ns") + step * np.arange(1, lead_steps + 1)
    lay = task.layout
    f = progress_forcings(times, ds["lon"].values)
    names = sorted({c[0] for c in lay.forcings})
    missing = [n for n in names if n not in f]
    if missing:
        raise DataError(f"cannot compute forcings {missing} for the forecast's lead times")
    fds = xr.Dataset(
        {n: f[n].broadcast_like(ds["lat"]).transpose("time", ..., "lat") for n in names}
    )
    fds = fds.assign_coords(lat=ds["lat"], lon=ds["lon"])
    forcings = np.stack([stack(fds, lay.forcings, k) for k in range(lead_steps)])
    return inputs, forcings


def check_initial_conditions(ds, model, spec: ForecastSpec) -> None:
    """Raise `DataError` naming the variable and time if any init time's inputs hold NaN/Inf."""
    from gencast_rmmd.data.examples import physical_window
    from gencast_rmmd.data.normalization import units_problem

    lay = model.task.layout
    for s in spec.init_times:
        t = np.datetime64(s, "ns")
        inputs, _, _ = physical_window(ds, model.task, t, 0, sst_fill=model.sst_fill)
        bad = ~np.isfinite(inputs).all(axis=(0, 1))
        if bad.any():
            var, frame, level = lay.inputs[int(np.argmax(bad))]
            when = t - (model.task.input_frames - 1 - frame) * np.timedelta64(
                model.task.step_hours, "h"
            )
            lev = f" at {level} hPa" if level is not None else ""
            raise DataError(
                f"data store {spec.data!r} has NaN/Inf in {var!r}{lev} at {str(when)[:19]} (an input "
                f"frame of init time {s}); fix the data or choose other init times"
            )
        problem = units_problem(inputs, model.norm, model.task.layout)
        if problem:
            raise DataError(f"data store {spec.data!r}, init time {s}: {problem}")


def item_bytes(spec: ForecastSpec, task, n_lat: int, n_lon: int) -> int:
    """Host memory a work item cannot do without: its members' states at every lead time
    ([member block, lead steps, lat, lon, C_out] float32, gathered whole before the region is
    written) and the forcings at the lead times ([lead steps, lat, lon, C_f])."""
    grid = n_lat * n_lon * 4
    block = min(spec.member_block, spec.members)
    return spec.lead_steps * grid * (block * task.layout.n_targets + task.layout.n_forcings)


def store_bytes(spec: ForecastSpec, task, n_lat: int, n_lon: int) -> int:
    """The forecast store's data, uncompressed (float32; the written stores measured 81% of it)."""
    n = len(spec.init_times) * spec.members * spec.lead_steps
    return n * n_lat * n_lon * task.layout.n_targets * 4


def check_memory(spec: ForecastSpec, task, n_lat: int, n_lon: int, available: int | None) -> None:
    """`runtime.check_memory` of a work item's states and forcings (`item_bytes`). Without it,
    XLA:CPU's failed allocation aborted the process (`Check failed: buffer_.IsConcrete()`,
    exit 134) after a minute of work."""
    block = min(spec.member_block, spec.members)
    runtime.check_memory(
        item_bytes(spec, task, n_lat, n_lon),
        available,
        f"a forecast work item ({block} member(s) x {spec.lead_steps} lead steps on the "
        f"{n_lat} x {n_lon} grid)",
        "of states and forcings in memory",
        "lower --member-block"
        + (" or the lead time" if block == 1 else f" (now {block}) or the lead time"),
    )


class _Worker:
    """Per-process state: model, compiled rollout, open data (built once, reused per item)."""

    def __init__(self, spec: ForecastSpec, model=None, data=None):
        from gencast_rmmd.forecast.rollout import Rollout

        self.spec = spec
        self.model = model if model is not None else load_model(spec)
        self.data = data if data is not None else open_data(spec.data)
        self.rollout = Rollout(
            self.model,
            self.data["lat"].values,
            self.data["lon"].values,
            block_size=spec.member_block,
        )

    def run(self, item: tuple[int, int]) -> tuple[int, int]:
        from gencast_rmmd.forecast.rollout import run_key

        i, m0 = item
        spec = self.spec
        t = np.datetime64(spec.init_times[i], "ns")
        inputs, forcings = initial_conditions(
            self.data, self.model.task, t, spec.lead_steps, self.model.sst_fill
        )
        ids = list(range(m0, min(m0 + spec.member_block, spec.members)))
        states = self.rollout(run_key(spec.seed, t), ids, inputs, forcings)
        if not np.all(np.isfinite(states)):
            bad = np.argwhere(~np.isfinite(states).all(axis=(2, 3, 4)))[0]
            raise DataError(
                f"forecast from {spec.init_times[i]} member {ids[bad[0]]} produced NaN/Inf at lead step "
                f"{bad[1] + 1}; check the checkpoint and the stats dir"
            )
        store_lib.write_region(
            spec.out, store_lib.states_dataset(states, self.model.task, ids), i, m0
        )
        return item


_WORKERS: dict[ForecastSpec, _Worker] = {}


def _worker(spec: ForecastSpec, model=None, data=None) -> _Worker:
    if spec not in _WORKERS:
        _WORKERS[spec] = _Worker(spec, model, data)
    return _WORKERS[spec]


def prepare(
    spec: ForecastSpec, model=None, data=None, memory: int | None = None
) -> tuple[list[tuple[int, int]], dict]:
    """Validate, create (or reopen) the store; returns (missing work items, store attrs).
    `model` and `data` (`open_data(spec.data)`), when given, are used rather than loaded again.
    `memory`: the bytes of memory where the work items run (`check_memory`; None: unknown)."""
    if spec.members <= 0:
        raise ConfigError(f"--members must be >= 1, found {spec.members}")
    if spec.member_block <= 0:
        raise ConfigError(f"--member-block must be >= 1, found {spec.member_block}")
    model = model if model is not None else load_model(spec)
    task = model.task
    ds = data if data is not None else open_data(spec.data)
    lat, lon = ds["lat"].values, ds["lon"].values
    times = ds["time"].values
    step = np.timedelta64(task.step_hours, "h")
    have = set(times.astype("datetime64[ns]").tolist())
    bad = []
    for s in spec.init_times:
        t = np.datetime64(s, "ns")
        need = [t - k * step for k in range(task.input_frames)]
        if not all(x.astype("datetime64[ns]").tolist() in have for x in need):
            bad.append(s)
    if bad:
        raise DataError(
            f"init times {bad[:5]}{' ...' if len(bad) > 5 else ''} lack input frames in the data: each needs its "
            f"{task.input_frames} input frames ({task.step_hours} h apart, ending at the init time) in "
            f"{spec.data!r}, which covers {str(times[0])[:19]} .. {str(times[-1])[:19]} "
            f"(time spacing: {time_spacing(times)})"
        )
    problem = model.grid_problem(lat, lon)
    if problem:
        raise DataError(f"--model {spec.model} does not fit --data {spec.data}: {problem}")
    check_memory(spec, task, lat.size, lon.size, memory)
    # Fail before the store exists: the model must build on this grid (checks every parameter's
    # name/shape against the architecture) and every initial condition must be finite.
    model.build(lat, lon)
    check_initial_conditions(ds, model, spec)
    attrs = model.attrs()
    attrs.update(
        {
            "seed": spec.seed,
            "data": source_path(spec.data),
            "stats": spec.stats_dir,
            "ensemble_size": spec.members,
            "conventions": "WeatherBench 2 forecast schema: time = init time, prediction_timedelta = lead time, realization = member",
            "created_by": "gencast-rmmd forecast",
        }
    )
    block = min(spec.member_block, spec.members)
    fs, out_path = filesystem(spec.out)  # `out` may be a URL (gs://... for workers on Dataflow)
    if fs.exists(out_path):
        if (fs.isdir(out_path) and not fs.ls(out_path)) or (
            is_url(spec.out) and store_lib.creation_interrupted(spec.out, spec.store_spec())
        ):
            fs.rm(out_path, recursive=True)
        else:
            store_lib.open_existing(
                spec.out,
                spec.store_spec(),
                {"stats_sha256": spec.stats_dir, "data_store_id": spec.data},
            )
    if not fs.exists(out_path):
        # A store that cannot fit even at half its raw size (float32 fields compress little) is
        # refused before it is made; a resumed one already holds part of its data.
        check_room(spec.out, store_bytes(spec, task, lat.size, lon.size) // 2)
        tmpl = store_lib.template(
            task,
            lat,
            lon,
            np.array(spec.init_times, "datetime64[ns]"),
            spec.lead_steps,
            spec.members,
            block,
            attrs,
        )
        store_lib.publish(spec.out, tmpl, spec.store_spec())  # appears once its metadata is whole
    done = store_lib.done_regions(spec.out)
    missing = [(i, m) for (i, m) in spec.items() if not done[i, m : m + spec.member_block].all()]
    return missing, attrs


def run_forecast(
    model: str,
    stats_dir: str,
    data: str,
    out: str,
    init_times: Sequence[str],
    members: int,
    lead_steps: int | None = None,
    lead_time: str | None = None,
    seed: int = 0,
    member_block: int = 8,
    engine: str = "local",
    beam_args: Sequence[str] = (),
    data_config: str | None = None,
    progress: bool = True,
) -> dict:
    """Run (or resume) a forecast campaign; returns a summary dict (also printed by the CLI)."""
    if engine not in ("local", "beam"):
        raise ConfigError(f"engine must be 'local' or 'beam', found {engine!r}")
    if not isinstance(members, int) or members <= 0:
        raise ConfigError(f"--members must be a positive integer, found {members!r}")
    if problem := seed_problem(seed):  # the run key takes the seed's low 32 bits only
        raise ConfigError(f"--seed: {problem}")
    check_out_dir(out, "a new path")  # the store is a directory (or a prefix at a URL)
    _WORKERS.clear()  # checkpoints/data may have been rewritten at the same paths since a previous run
    base = ForecastSpec(
        model,
        stats_dir,
        data,
        out,
        (),
        members,
        1,
        seed,
        max(1, min(member_block, members)),
        data_config,
    )
    fmodel = load_model(base)  # loaded once; the local engine's worker reuses it
    # Opened once (a store by URL costs round trips per open): an unreadable store fails here,
    # before its id is looked up; `prepare` and the local engine's worker use it.
    ds = open_data(data)
    step_hours = fmodel.task.step_hours
    n = lead_steps_from(lead_steps, lead_time, step_hours)
    inits = parse_init_times(init_times, step_hours)
    spec = ForecastSpec(
        model=model,
        stats_dir=stats_dir,
        data=data,
        out=out,
        init_times=tuple(str(np.datetime_as_string(t, unit="s")) for t in inits),
        members=members,
        lead_steps=n,
        seed=seed,
        member_block=min(member_block, members),
        data_config=data_config,
        # Resuming must not mix members of two models: a checkpoint retrained at the same path
        # does not match the store it would resume into.
        model_sha256=None if persistence_noise(model) is not None else file_sha256(model),
        # Nor members normalised with statistics recomputed at the same path, nor members started
        # from a data store re-made there (a store without an id, e.g. ARCO-ERA5, records None).
        stats_sha256=stats_sha256(stats_dir),
        data_store_id=store_id(data),
    )
    t0 = time.time()
    # The work items run in this process, or in workers on this machine (a local Beam runner).
    memory = available_memory() if engine == "local" or runs_here(beam_args) else None
    missing, attrs = prepare(spec, fmodel, ds, memory)
    total = len(spec.items())
    if missing:
        if engine == "local":
            from tqdm import tqdm

            w = _worker(spec, fmodel, ds)
            log_path = out.rstrip("/") + METRICS_SUFFIX
            for item in tqdm(missing, desc="forecast regions", unit="region", disable=not progress):
                t_item = time.time()
                w.run(item)
                dt = time.time() - t_item
                n_mem = min(spec.member_block, spec.members - item[1])
                _append_jsonl(
                    log_path,
                    {
                        "init_time": spec.init_times[item[0]],
                        "members": [item[1], item[1] + n_mem],
                        "seconds": round(dt, 4),
                        "member_steps_per_s": round(n_mem * n / dt, 3) if dt > 0 else None,
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    },
                )
        else:
            run_beam(spec, missing, beam_args)
    complete = store_lib.mark_complete(out)
    summary = {
        "out": out,
        "model": attrs["model"],
        "sampler": attrs["sampler"],
        "nfe_per_step": attrs["nfe_per_step"],
        "init_times": len(spec.init_times),
        "members": members,
        "lead_steps": n,
        "regions_total": total,
        "regions_written": len(missing),
        "complete": complete,
        "seconds": round(time.time() - t0, 2),
    }
    if not complete:
        raise OutputError(
            f"forecast store {out!r} is incomplete after the run; re-run the same command to resume"
        )
    return summary


def _append_jsonl(path: str, record: dict) -> None:
    """Append one JSON line to a local file, or to an object at a URL (object stores cannot
    append: the small log is read and written again whole)."""
    line = json.dumps(record) + "\n"
    if not is_url(path):
        with open(path, "a") as f:
            f.write(line)
        return
    fs, p = filesystem(path)
    old = fs.cat_file(p) if fs.exists(p) else b""
    fs.pipe_file(p, old + line.encode())


def _run_item(item, spec: ForecastSpec):
    return _worker(spec).run(item)


def run_beam(
    spec: ForecastSpec, items: Sequence[tuple[int, int]], beam_args: Sequence[str] = ()
) -> None:
    """Run work items as a Beam pipeline (one region write per element)."""
    import apache_beam as beam

    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        (
            p
            | "work_items" >> beam.Create(list(items))
            | "shuffle" >> beam.Reshuffle()
            | "rollout_and_write" >> beam.Map(_run_item, spec=spec)
        )


__all__ = [
    "run_forecast",
    "ForecastSpec",
    "parse_init_times",
    "lead_steps_from",
    "initial_conditions",
]
