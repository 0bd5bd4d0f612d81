"""The embedded nature run: dinosaur's primitive-equation core with Held-Suarez forcing.

No ERA5 is reachable from a new user's machine or from CI, so the default data set is real
physics instead: a dry dynamical core on the sphere (dinosaur's sigma-coordinate primitive
equations, semi-implicit IMEX RK3 time stepping) forced as Held & Suarez (1994) prescribe
(Newtonian relaxation to a zonally symmetric radiative-equilibrium temperature, Rayleigh friction
in the boundary layer). After a spin-up the flow has two mid-latitude westerly jets with baroclinic
eddies, i.e. weather: fronts, cyclones and their decorrelation over a few days.

Output (12-hourly by default), written in ERA5 long names and SI units on the 5.625 deg
equiangular 32x64 grid (lat = -87.1875 + 5.625 i, lon = 5.625 j, evaluated exactly from the
spectral coefficients, so no horizontal interpolation error):

- `temperature`, `geopotential`, `u_component_of_wind`, `v_component_of_wind` on pressure levels:
  interpolated linearly in log-pressure between the model's sigma levels; below the lowest model
  level (also below the ground, as ERA5 does) temperature follows the standard lapse rate
  6.5 K/km, geopotential the matching hypsometric equation and the winds stay at their lowest-level
  value; above the top level the temperature and winds stay constant and the geopotential is
  isothermal-hypsometric. Never NaN.
- proxies for the surface variables (documented, not ERA5's physics): `2m_temperature` is the
  lowest-level temperature brought to the surface pressure with the 6.5 K/km lapse rate;
  `10m_u/v_component_of_wind` are the lowest-level winds (sigma ~ 0.94); `mean_sea_level_pressure`
  is the surface pressure reduced to sea level with the standard-atmosphere barometric formula.
- statics: `geopotential_at_surface` = g * the model's (spectrally truncated) orography, one
  idealized Gaussian mountain; `land_sea_mask` = 1 on the mountain's "continent" (where the
  untruncated mountain exceeds 5% of its peak), else 0.
- the four progress forcings from the output times (the nature run itself has no seasons or
  diurnal cycle; the calendar starts at `start_time`).

Determinism: the initial state is an isothermal atmosphere at rest plus a small surface-pressure
bump whose position is drawn from the seed, so each seed gives its own, reproducible trajectory.
`embedded_store()` builds the default run once and caches it (`$GENCAST_RMMD_CACHE`, default
`~/.cache/gencast_rmmd`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import shutil
import tempfile
import time

import numpy as np
import xarray as xr

from gencast_rmmd.data.config import NatureRunConfig
from gencast_rmmd.data.era5 import STORE_ID_ATTR, content_store_id, quiet_v3_consolidation
from gencast_rmmd.errors import DataError
from gencast_rmmd.locks import file_lock

R_DRY = 287.04  # J kg-1 K-1 (Held-Suarez / dinosaur value is within 0.1%; we use the model's)
G = 9.80665
LAPSE_RATE = 0.0065  # K m-1, standard atmosphere
OUT_LAT = -87.1875 + 5.625 * np.arange(32)
OUT_LON = 5.625 * np.arange(64)
# Bumped whenever the output changes for the same config, so stale caches are not reused.
NATURE_RUN_VERSION = 1
# The store attributes that record what a nature run was built with: its `NatureRunConfig` as
# JSON, and the `NATURE_RUN_VERSION` that built it.
CONFIG_ATTR = "gencast_rmmd_nature_run"
VERSION_ATTR = "gencast_rmmd_nature_run_version"

STATE_VARIABLES = (
    "temperature",
    "geopotential",
    "u_component_of_wind",
    "v_component_of_wind",
    "2m_temperature",
    "10m_u_component_of_wind",
    "10m_v_component_of_wind",
    "mean_sea_level_pressure",
)


def cache_dir() -> pathlib.Path:
    """Where cached stores live: `$GENCAST_RMMD_CACHE` or `~/.cache/gencast_rmmd`."""
    return pathlib.Path(
        os.environ.get("GENCAST_RMMD_CACHE", pathlib.Path.home() / ".cache" / "gencast_rmmd")
    )


# --------------------------------------------------------------------------------------------
# Vertical interpolation (numpy; fields [..., sigma, lat, lon])
# --------------------------------------------------------------------------------------------


def sigma_to_pressure(
    fields: dict[str, np.ndarray],
    sigma: np.ndarray,
    surface_pressure: np.ndarray,
    levels_pa: np.ndarray,
    gas_constant: float = R_DRY,
    gravity: float = G,
) -> dict[str, np.ndarray]:
    """Interpolate sigma-level fields to pressure levels (see the module docstring for the rules).

    Args:
      fields: must hold "temperature" [T, K, lat, lon] (K) and "geopotential" (m2 s-2); any other
        entries (winds) are interpolated linearly in log p with constant extrapolation.
      sigma: [K] ascending sigma of the level centres (top first).
      surface_pressure: [T, lat, lon] in Pa.
      levels_pa: [P] target pressures in Pa, ascending.
    Returns the same keys with shape [T, P, lat, lon].
    """
    sigma = np.asarray(sigma, np.float64)
    ps = np.asarray(surface_pressure, np.float64)[:, None]  # [T, 1, y, x]
    logp_model = np.log(sigma)[None, :, None, None] + np.log(ps)  # [T, K, y, x]
    n_k = sigma.size
    out = {k: [] for k in fields}
    a = gas_constant * LAPSE_RATE / gravity
    for p in np.asarray(levels_pa, np.float64):
        lp = np.log(p)
        # index of the model level just below (larger pressure) the target, per column
        below = (logp_model < lp).sum(axis=1)  # 0..K
        k1 = np.clip(below, 1, n_k - 1)
        k0 = k1 - 1
        x0 = np.take_along_axis(logp_model, k0[:, None], 1)[:, 0]
        x1 = np.take_along_axis(logp_model, k1[:, None], 1)[:, 0]
        w = np.clip((lp - x0) / (x1 - x0), 0.0, 1.0)
        top = below == 0
        bottom = below == n_k
        p_top = np.exp(logp_model[:, 0])
        p_bot = np.exp(logp_model[:, -1])
        t_top = fields["temperature"][:, 0].astype(np.float64)
        t_bot = fields["temperature"][:, -1].astype(np.float64)
        for name, f in fields.items():
            f = f.astype(np.float64)
            f0 = np.take_along_axis(f, k0[:, None], 1)[:, 0]
            f1 = np.take_along_axis(f, k1[:, None], 1)[:, 0]
            v = f0 + w * (f1 - f0)
            if name == "temperature":
                v = np.where(bottom, t_bot * (p / p_bot) ** a, v)
                v = np.where(top, t_top, v)
            elif name == "geopotential":
                z_bot = f[:, -1] - (gravity * t_bot / LAPSE_RATE) * ((p / p_bot) ** a - 1.0)
                z_top = f[:, 0] + gas_constant * t_top * np.log(p_top / p)
                v = np.where(bottom, z_bot, v)
                v = np.where(top, z_top, v)
            else:
                v = np.where(bottom, f[:, -1], v)
                v = np.where(top, f[:, 0], v)
            out[name].append(v)
    return {k: np.stack(v, axis=1).astype(np.float32) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# The simulation
# --------------------------------------------------------------------------------------------


def _mountain(lon_rad: np.ndarray, lat_rad: np.ndarray, height: float) -> np.ndarray:
    """One Gaussian mountain centred at 40N, 90E, ~15 deg wide (m)."""
    dlon = np.mod(lon_rad - np.deg2rad(90.0) + np.pi, 2 * np.pi) - np.pi
    dlat = lat_rad - np.deg2rad(40.0)
    r2 = (dlon * np.cos(lat_rad) / np.deg2rad(15.0)) ** 2 + (dlat / np.deg2rad(12.0)) ** 2
    return height * np.exp(-r2)


@dataclasses.dataclass
class _Model:
    make_trajectory: object  # n -> jitted (state) -> (state, nodal outputs of n output steps)
    initial_state: object  # seed -> initial state
    sigma: np.ndarray
    orography_m: np.ndarray  # [lat, lon] on the output grid
    mask: np.ndarray
    scales: dict
    gas_constant: float
    gravity: float


def _model_key(cfg: NatureRunConfig) -> NatureRunConfig:
    """The part of the config that determines the compiled model (not seed or run length)."""
    return dataclasses.replace(cfg, seed=0, spinup_days=0, days=1, start_time="2000-01-01")


@functools.lru_cache(maxsize=4)
def _build_model(cfg: NatureRunConfig) -> _Model:
    """Build (and cache, so that runs differing only in seed or length share compiled code)."""
    import jax
    import jax.numpy as jnp
    from dinosaur import (
        coordinate_systems,
        held_suarez,
        primitive_equations,
        primitive_equations_states,
        scales,
        sigma_coordinates,
        spherical_harmonic,
        time_integration,
        xarray_utils,
    )

    units = scales.units
    grid = getattr(spherical_harmonic.Grid, f"T{cfg.truncation}")()
    vertical = sigma_coordinates.SigmaCoordinates.equidistant(cfg.sigma_layers)
    coords = coordinate_systems.CoordinateSystem(horizontal=grid, vertical=vertical)
    specs = primitive_equations.PrimitiveEquationsSpecs.from_si()
    lon, sin_lat = grid.nodal_mesh
    height = _mountain(lon, np.arcsin(sin_lat), cfg.mountain_height_m)
    init_fn, aux = primitive_equations_states.isothermal_rest_atmosphere(
        coords,
        specs,
        p0=1e5 * units.pascal,
        p1=cfg.perturbation_pa * units.pascal,
        surface_height=height * units.meter,
    )
    ref_temps = aux[xarray_utils.REF_TEMP_KEY]
    orography = primitive_equations.truncated_modal_orography(aux[xarray_utils.OROGRAPHY], coords)
    equation = time_integration.compose_equations(
        [
            primitive_equations.PrimitiveEquations(ref_temps, orography, coords, specs),
            held_suarez.HeldSuarezForcingSigma(coords, specs, ref_temps),
        ]
    )
    dt = specs.nondimensionalize(cfg.dt_minutes * units.minute)
    step = time_integration.imex_rk_sil3(equation, dt)
    # Scale-selective hyper-diffusion-like filter on the smallest scales (the setting dinosaur's
    # Held-Suarez examples use); without it energy piles up at the truncation and the run blows up.
    step = time_integration.step_with_filters(
        step,
        [time_integration.exponential_step_filter(grid, dt, tau=0.0087504, order=1.5, cutoff=0.8)],
    )
    inner = int(round(cfg.output_hours * 60 / cfg.dt_minutes))

    # The output grid: same spectral truncation, equiangular nodes without poles. Spectral
    # coefficients are grid independent, so evaluating them there is exact interpolation.
    out_grid = spherical_harmonic.Grid(
        longitude_wavenumbers=grid.longitude_wavenumbers,
        total_wavenumbers=grid.total_wavenumbers,
        longitude_nodes=64,
        latitude_nodes=32,
        latitude_spacing="equiangular",
    )
    out_coords = coordinate_systems.CoordinateSystem(horizontal=out_grid, vertical=vertical)
    nodal_oro = out_grid.to_nodal(orography)

    def diagnostics(state):
        u, v = spherical_harmonic.vor_div_to_uv_nodal(out_grid, state.vorticity, state.divergence)
        temp = ref_temps[:, None, None] + out_grid.to_nodal(state.temperature_variation)
        phi = primitive_equations.get_geopotential_on_sigma(
            temp,
            nodal_orography=nodal_oro,
            sigma=out_coords.vertical,
            gravity_acceleration=specs.gravity_acceleration,
            ideal_gas_constant=specs.ideal_gas_constant,
        )
        ps = jnp.exp(out_grid.to_nodal(state.log_surface_pressure))[0]
        return {"u": u, "v": v, "t": temp, "phi": phi, "ps": ps}

    trajectories: dict[int, object] = {}

    def make_trajectory(n: int):
        if n not in trajectories:
            trajectories[n] = jax.jit(
                time_integration.trajectory_from_step(step, n, inner, post_process_fn=diagnostics)
            )
        return trajectories[n]

    def initial_state(seed: int):
        return init_fn(jax.random.PRNGKey(seed))

    lon_o, sin_lat_o = out_grid.nodal_mesh
    mask = (_mountain(lon_o, np.arcsin(sin_lat_o), 1.0) > 0.05).astype(np.float32)
    oro_m = np.asarray(specs.dimensionalize(np.asarray(nodal_oro), units.meter).m)

    def scale(unit) -> float:
        return float(specs.dimensionalize(1.0, unit).m)

    return _Model(
        make_trajectory=make_trajectory,
        initial_state=initial_state,
        sigma=np.asarray(vertical.centers),
        orography_m=oro_m.T,  # dinosaur nodal arrays are [lon, lat]
        mask=mask.T,
        scales={
            "velocity": scale(units.m / units.s),
            "temperature": scale(units.degK),
            "geopotential": scale(units.m**2 / units.s**2),
            "pressure": scale(units.pascal),
        },
        gas_constant=specs.ideal_gas_constant * scale(units.m**2 / units.s**2) / scale(units.degK),
        gravity=G,
    )


def _postprocess(
    nodal: dict[str, np.ndarray], model: _Model, levels_hpa: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Nondimensional nodal diagnostics [T, K, lon, lat] -> dimensional ERA5 fields [T, ., lat, lon]."""
    sc = model.scales

    def tr(x):  # [..., lon, lat] -> [..., lat, lon]
        return np.swapaxes(np.asarray(x, np.float64), -1, -2)

    t = tr(nodal["t"]) * sc["temperature"]
    phi = tr(nodal["phi"]) * sc["geopotential"]
    u = tr(nodal["u"]) * sc["velocity"]
    v = tr(nodal["v"]) * sc["velocity"]
    ps = tr(nodal["ps"]) * sc["pressure"]
    on_p = sigma_to_pressure(
        {"temperature": t, "geopotential": phi, "u_component_of_wind": u, "v_component_of_wind": v},
        model.sigma,
        ps,
        np.asarray(levels_hpa, np.float64) * 100.0,
        gas_constant=model.gas_constant,
        gravity=model.gravity,
    )
    a = model.gas_constant * LAPSE_RATE / model.gravity
    p_bot = model.sigma[-1] * ps
    t2m = t[:, -1] * (ps / p_bot) ** a
    z_s = model.orography_m[None]
    mslp = ps * (1.0 + LAPSE_RATE * z_s / t2m) ** (1.0 / a)
    on_p.update(
        {
            "2m_temperature": t2m.astype(np.float32),
            "10m_u_component_of_wind": u[:, -1].astype(np.float32),
            "10m_v_component_of_wind": v[:, -1].astype(np.float32),
            "mean_sea_level_pressure": mslp.astype(np.float32),
        }
    )
    return on_p


UNITS = {
    "temperature": "K",
    "geopotential": "m**2 s**-2",
    "u_component_of_wind": "m s**-1",
    "v_component_of_wind": "m s**-1",
    "2m_temperature": "K",
    "10m_u_component_of_wind": "m s**-1",
    "10m_v_component_of_wind": "m s**-1",
    "mean_sea_level_pressure": "Pa",
    "geopotential_at_surface": "m**2 s**-2",
    "land_sea_mask": "1",
}


def missing_variables(task) -> list[str]:
    """The variables `task` (a `TaskConfig`) reads or predicts that a nature-run store lacks: the
    store holds the fields of `UNITS` (state and statics) and the four progress forcings."""
    from gencast_rmmd.data.task import GENCAST_FORCINGS

    return sorted(set(task.variables) - set(UNITS) - set(GENCAST_FORCINGS))


def check_task(task, advice: str) -> None:
    """DataError naming the variables of `task` the nature run cannot feed (`missing_variables`),
    followed by `advice` (what the caller's user can do instead); checked before a nature run is
    built (minutes), not when a later stage finds the variables missing."""
    missing = missing_variables(task)
    if missing:
        raise DataError(
            f"the embedded nature run has no {', '.join(missing)}, which the task needs (it holds "
            "temperature, geopotential, winds, their surface proxies, the statics and the "
            f"progress forcings); {advice}"
        )


PROXY_NOTES = {
    "2m_temperature": "proxy: lowest sigma-level temperature taken to the surface pressure at 6.5 K/km",
    "10m_u_component_of_wind": "proxy: lowest sigma-level (sigma~0.94) zonal wind",
    "10m_v_component_of_wind": "proxy: lowest sigma-level (sigma~0.94) meridional wind",
    "mean_sea_level_pressure": "proxy: surface pressure reduced to sea level (standard atmosphere)",
    "land_sea_mask": "proxy: 1 on the idealized mountain continent",
}


def simulate(
    cfg: NatureRunConfig,
    levels_hpa: tuple[int, ...],
    *,
    progress: bool = True,
    chunk_days: int = 30,
) -> xr.Dataset:
    """Run the nature run and return it as an in-memory canonical Dataset (float32, SI units).

    Dims: time (`days * 24 / output_hours` steps from `start_time`), level (`levels_hpa`), lat (32),
    lon (64). Spin-up (`spinup_days`) is discarded. Memory: the output only (about 36 floats per
    grid point and time for 8 levels, ~200 MB for two years at 12 h).
    """
    from tqdm.auto import tqdm

    from gencast_rmmd.data.era5 import add_progress_forcings

    per_day = 24 // cfg.output_hours
    n_spin = cfg.spinup_days * per_day
    n_out = cfg.days * per_day
    # One compiled trajectory of `chunk` output steps serves both the spin-up (outputs dropped)
    # and the output: compiling the model step once saves most of a short run's time. The chunk
    # divides both lengths so nothing is simulated twice or skipped.
    g = math.gcd(n_spin, n_out) if n_spin else n_out
    chunk = max(d for d in range(1, min(g, chunk_days * per_day) + 1) if g % d == 0)
    model = _build_model(_model_key(cfg))
    trajectory = model.make_trajectory(chunk)
    state = model.initial_state(cfg.seed)
    bar = tqdm(
        total=n_spin + n_out, desc="nature run (12 h steps)", disable=not progress, unit="step"
    )
    for _ in range(n_spin // chunk):
        state, _ = trajectory(state)
        bar.update(chunk)
    pieces: list[dict[str, np.ndarray]] = []
    for _ in range(n_out // chunk):
        state, nodal = trajectory(state)
        nodal = {k: np.asarray(v) for k, v in nodal.items()}
        pieces.append(_postprocess(nodal, model, levels_hpa))
        bar.update(chunk)
    bar.close()
    data = {k: np.concatenate([p[k] for p in pieces], axis=0) for k in pieces[0]}
    bad = [k for k, v in data.items() if not np.all(np.isfinite(v))]
    if bad:
        raise RuntimeError(f"nature run produced non-finite values in {bad}; lower dt_minutes")
    start = np.datetime64(cfg.start_time, "ns")
    times = start + np.arange(n_out) * np.timedelta64(cfg.output_hours, "h")
    coords = {
        "time": times,
        "level": np.asarray(levels_hpa, np.int64),
        "lat": OUT_LAT,
        "lon": OUT_LON,
    }
    variables = {}
    for name, x in data.items():
        dims = ("time", "level", "lat", "lon") if x.ndim == 4 else ("time", "lat", "lon")
        variables[name] = (dims, x)
    variables["geopotential_at_surface"] = (
        ("lat", "lon"),
        (model.orography_m * G).astype(np.float32),
    )
    variables["land_sea_mask"] = (("lat", "lon"), model.mask.astype(np.float32))
    ds = xr.Dataset(variables, coords=coords)
    for name in ds.data_vars:
        ds[name].attrs["units"] = UNITS[name]
        if name in PROXY_NOTES:
            ds[name].attrs["comment"] = PROXY_NOTES[name]
    ds = add_progress_forcings(ds)
    ds["level"].attrs["units"] = "hPa"
    ds.attrs.update(
        {
            "title": "gencast-rmmd embedded nature run (dinosaur primitive equations, Held-Suarez)",
            CONFIG_ATTR: json.dumps(dataclasses.asdict(cfg)),
            VERSION_ATTR: NATURE_RUN_VERSION,
        }
    )
    return ds


def _check_out(out: str | os.PathLike, overwrite: bool) -> pathlib.Path:
    """`out` as a local path, refused (before the simulation) when it is a URL, exists without
    `overwrite`, or cannot be a directory."""
    from gencast_rmmd.errors import OutputError
    from gencast_rmmd.remote import check_local_out_dir, is_url

    if not is_url(out) and os.path.exists(out) and not overwrite:
        raise OutputError(
            f"output {os.fspath(out)!r} already exists (pass --overwrite to replace it)"
        )
    # a URL, a file there (even with --overwrite), or a file above it
    return check_local_out_dir(out, "another path", "data nature-run")


def write_store(ds: xr.Dataset, out: str | os.PathLike, overwrite: bool = False) -> pathlib.Path:
    """Write `ds` as Zarr with chunks of one time step, to a temp name then moved into place,
    with `STORE_ID_ATTR` set to a digest of `ds` (`content_store_id`): what is made from the store
    tells it from one re-made there with other content, and stays current when it is rebuilt
    bit-identically."""
    out = _check_out(out, overwrite)
    ds = ds.assign_attrs({STORE_ID_ATTR: content_store_id(ds)})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        encoding = {}
        for name, da in ds.data_vars.items():
            chunks = tuple(1 if d == "time" else da.sizes[d] for d in da.dims)
            encoding[name] = {"chunks": chunks}
        # Consolidated metadata lets every reader open the store without a per-array listing
        # (and without xarray's "failed to open with consolidated metadata" warning).
        with quiet_v3_consolidation():
            ds.to_zarr(tmp / "store.zarr", mode="w", encoding=encoding, consolidated=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "store.zarr", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def output_bytes(cfg: NatureRunConfig, levels_hpa: tuple[int, ...]) -> int:
    """Bytes of the output's float32 state fields: `STATE_VARIABLES` (on every level where they
    have one) on the output grid at every output time."""
    from gencast_rmmd.data.task import has_level

    per_point = sum(len(levels_hpa) if has_level(v) else 1 for v in STATE_VARIABLES)
    n_out = cfg.days * (24 // cfg.output_hours)
    return n_out * OUT_LAT.size * OUT_LON.size * per_point * 4


FEWER_DAYS = "build fewer --days"  # the memory refusal's remedy where the days are a CLI flag


def check_resources(
    cfg: NatureRunConfig,
    levels_hpa: tuple[int, ...],
    out: str | os.PathLike,
    memory: int | None,
    fewer: str = FEWER_DAYS,
) -> None:
    """Refuse, before the simulation, a run whose output cannot be held in `memory` bytes (None:
    unknown, not checked) or written to the disk of `out`: `simulate` holds the simulated pieces
    and their concatenation at once (twice `output_bytes`), and the store takes at least half of
    it (the written stores measured more than all of it). `fewer`: the remedy, naming the
    setting the days come from."""
    from gencast_rmmd.remote import check_room
    from gencast_rmmd.runtime import check_memory

    need = 2 * output_bytes(cfg, levels_hpa)
    check_memory(
        need,
        memory,
        f"a nature run of {cfg.days} days",
        "in memory while it is built",
        fewer,
    )
    check_room(out, need // 4)


def build(
    out: str | os.PathLike,
    cfg: NatureRunConfig,
    levels_hpa: tuple[int, ...],
    *,
    overwrite: bool = False,
    progress: bool = True,
    fewer: str = FEWER_DAYS,
) -> dict:
    """Simulate and write the store; returns a summary (seconds, seconds per simulated day).
    `fewer`: how to ask for fewer days, said when they do not fit in memory."""
    from gencast_rmmd.runtime import available_memory

    _check_out(out, overwrite)  # before the (long) simulation
    check_resources(cfg, levels_hpa, out, available_memory(), fewer)
    t0 = time.perf_counter()
    ds = simulate(cfg, levels_hpa, progress=progress)
    t1 = time.perf_counter()
    write_store(ds, out, overwrite=overwrite)
    t2 = time.perf_counter()
    sim_days = cfg.spinup_days + cfg.days
    return {
        "out": str(out),
        "simulated_days": sim_days,
        "simulate_s": round(t1 - t0, 2),
        "write_s": round(t2 - t1, 2),
        "s_per_simulated_day": round((t1 - t0) / sim_days, 4),
        "times": int(ds.sizes["time"]),
    }


def _default_embedded():
    from gencast_rmmd.data.config import load_data_config

    return load_data_config("embedded")


def cache_key(cfg: NatureRunConfig, levels_hpa: tuple[int, ...]) -> str:
    """Stable hash of everything that determines the store's contents."""
    blob = json.dumps(
        {"cfg": dataclasses.asdict(cfg), "levels": list(levels_hpa), "v": NATURE_RUN_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def embedded_store(
    cache_dir: str | os.PathLike | None = None,
    config: NatureRunConfig | None = None,
    levels_hpa: tuple[int, ...] | None = None,
    *,
    progress: bool = True,
    fewer: str = "set fewer nature_run.days in the data config",
) -> pathlib.Path:
    """Path of the cached nature-run store, building it on first use (one build per machine).

    Defaults come from `configs/data/embedded.yaml` (its `nature_run` section and task levels).
    Concurrent callers wait on a file lock instead of building twice. `fewer`: the remedy said
    when the days do not fit in memory, naming the setting they come from.
    """
    if config is None or levels_hpa is None:
        default = _default_embedded()
        config = config or default.nature_run
        levels_hpa = levels_hpa or default.task.pressure_levels
    root = pathlib.Path(cache_dir) if cache_dir is not None else globals()["cache_dir"]()
    path = root / f"nature_run-{cache_key(config, tuple(levels_hpa))}.zarr"
    if (path / "zarr.json").exists():
        return path
    with file_lock(root / f".{path.name}.lock"):
        if not (path / "zarr.json").exists():
            build(path, config, tuple(levels_hpa), overwrite=True, progress=progress, fewer=fewer)
    return path
