"""Lat/lon grid rules and the loss weights that depend on the grid and the channel layout.

GenCast works on regular lat/lon grids whose latitudes are sorted ascending and whose longitudes
start at 0 and go east in equal steps. Three latitude rules are recognised, as in the public code
(reference notes §2.6):

- ``equiangular_with_poles``: equal spacing, rows at -90 and +90 (1 deg 181x360, 0.25 deg 721x1440);
  needs ``nlon == 2 * (nlat - 1)``;
- ``equiangular``: equal spacing, no pole rows (5.625 deg 32x64, WeatherBench's 64x32);
  needs ``nlon == 2 * nlat``;
- ``gauss``: Gauss-Legendre latitudes; needs ``nlon == 2 * nlat``.

The loss weights (reference notes §2.7) live here too, because the CRPS reward of the distillation
uses exactly the same weighting: `latitude_weights` (area weights, mean 1), `level_weights`
(proportional to pressure, mean 1), `GENCAST_VARIABLE_WEIGHTS` and `channel_weights`, which folds the
per-variable and per-level weights into one vector over the target channels of a task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from gencast_rmmd.data.task import ChannelLayout, has_level
from gencast_rmmd.errors import ConfigError, DataError

LatitudeSpacing = str  # "equiangular" | "equiangular_with_poles" | "gauss"

# Relative tolerance (in degrees) for recognising a grid rule from float coordinates.
_TOL_DEG = 1e-3


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """A validated regular lat/lon grid.

    Attributes:
      lat: [nlat] latitudes in degrees, ascending.
      lon: [nlon] longitudes in degrees, ``lon[j] = j * 360 / nlon``.
      spacing: the latitude rule (see the module docstring).
    """

    lat: np.ndarray
    lon: np.ndarray
    spacing: LatitudeSpacing

    @property
    def nlat(self) -> int:
        return int(self.lat.shape[0])

    @property
    def nlon(self) -> int:
        return int(self.lon.shape[0])

    @property
    def max_wavenumber(self) -> int:
        """Largest total wavenumber that the grid resolves for GenCast's noise: ``nlon / 2 - 1``."""
        return self.nlon // 2 - 1


def equiangular_latitudes(nlat: int, with_poles: bool) -> np.ndarray:
    """Ascending equiangular latitudes in degrees (cell centres, or including both poles)."""
    if with_poles:
        return np.linspace(-90.0, 90.0, nlat)
    d = 180.0 / nlat
    return -90.0 + d / 2 + d * np.arange(nlat)


def gauss_latitudes(nlat: int) -> np.ndarray:
    """Ascending Gauss-Legendre latitudes in degrees (``arcsin`` of the Legendre roots)."""
    x, _ = np.polynomial.legendre.leggauss(nlat)
    return np.degrees(np.arcsin(x))


def infer_latitude_spacing(lat: np.ndarray) -> LatitudeSpacing:
    """Classify ascending latitudes (degrees) as one of GenCast's three grid rules.

    Equal spacing reaching |lat| = 90 is ``equiangular_with_poles``; equal spacing otherwise must be
    the cell-centre rule ``equiangular``; anything else must be Gauss-Legendre latitudes. Raises
    `DataError` for unsorted latitudes or ones that match no rule.
    """
    lat = np.asarray(lat, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 2:
        raise DataError(
            f"latitudes: expected a 1-D coordinate of >= 2 values, found shape {lat.shape}"
        )
    d = np.diff(lat)
    if np.any(d <= 0):
        raise DataError(
            "latitudes: expected strictly ascending values (sort the data by latitude, south to "
            f"north), found {lat[:3].tolist()} ... {lat[-3:].tolist()}"
        )
    n = lat.size
    if np.allclose(d, d[0], atol=_TOL_DEG, rtol=0):
        if abs(abs(lat[0]) - 90.0) < _TOL_DEG and abs(lat[-1] - 90.0) < _TOL_DEG:
            spacing, ref = "equiangular_with_poles", equiangular_latitudes(n, True)
        else:
            spacing, ref = "equiangular", equiangular_latitudes(n, False)
    else:
        spacing, ref = "gauss", gauss_latitudes(n)
    if not np.allclose(lat, ref, atol=_TOL_DEG, rtol=0):
        raise DataError(
            f"latitudes: {n} values match none of the supported grids (equiangular cell centres "
            f"{equiangular_latitudes(n, False)[:2].tolist()}..., equiangular with poles "
            f"[-90, {equiangular_latitudes(n, True)[1]:.4f}, ...], Gauss-Legendre); found "
            f"{lat[:2].tolist()}..."
        )
    return spacing


def grid_spec(lat: np.ndarray, lon: np.ndarray) -> GridSpec:
    """Validate a lat/lon grid for GenCast (SH noise and loss weights) and classify it.

    Args:
      lat: [nlat] latitudes in degrees, ascending.
      lon: [nlon] longitudes in degrees starting at 0, equally spaced eastward over 360.
    Returns a `GridSpec`. Raises `DataError` naming the expected and found values otherwise.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    spacing = infer_latitude_spacing(lat)
    nlat, nlon = lat.size, lon.size
    expected_lon = 360.0 * np.arange(nlon) / max(nlon, 1)
    if lon.ndim != 1 or nlon < 4 or not np.allclose(lon, expected_lon, atol=_TOL_DEG, rtol=0):
        raise DataError(
            f"longitudes: expected {nlon} equally spaced values 0, {360.0 / max(nlon, 1):g}, ... "
            f"(degrees east), found {lon[:3].tolist()} ..."
        )
    need = 2 * (nlat - 1) if spacing == "equiangular_with_poles" else 2 * nlat
    if nlon != need:
        raise DataError(
            f"grid: a {spacing} grid with {nlat} latitudes needs {need} longitudes for "
            f"spherical-harmonic noise, found {nlon}"
        )
    return GridSpec(lat=lat, lon=lon, spacing=spacing)


def latitude_weights(lat: np.ndarray) -> np.ndarray:
    """Area weights per latitude row, normalised to mean 1 (GenCast's `normalized_latitude_weights`).

    Without pole rows the weight is ``cos(lat)``. With pole rows (equal spacing Delta reaching
    +-90 deg) a row's weight is the area of its latitude band, ``cos(lat) * sin(Delta / 2)``,
    and each pole row gets the polar cap ``sin(Delta / 4)^2`` (cos(90) would give it zero). Both are
    then divided by their mean over rows.

    Args:
      lat: [nlat] latitudes in degrees, ascending.
    Returns [nlat] float32 weights whose mean is 1.
    """
    lat = np.asarray(lat, dtype=np.float64)
    spacing = infer_latitude_spacing(lat)
    if spacing == "equiangular_with_poles":
        delta = np.deg2rad(lat[1] - lat[0])
        w = np.cos(np.deg2rad(lat)) * np.sin(delta / 2)
        w[0] = w[-1] = np.sin(delta / 4) ** 2
    else:
        w = np.cos(np.deg2rad(lat))
    return (w / w.mean()).astype(np.float32)


def level_weights(levels: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """Pressure-level weights ``level / mean(level)`` (GenCast's `normalized_level_weights`)."""
    lv = np.asarray(levels, dtype=np.float64)
    return (lv / lv.mean()).astype(np.float32)


# GenCast's per-variable loss weights (reference notes §2.7). Variables not listed weigh 1.0
# (all atmospheric variables, and 2m_temperature explicitly).
GENCAST_VARIABLE_WEIGHTS: dict[str, float] = {
    "2m_temperature": 1.0,
    "10m_u_component_of_wind": 0.1,
    "10m_v_component_of_wind": 0.1,
    "mean_sea_level_pressure": 0.1,
    "sea_surface_temperature": 0.1,
    "total_precipitation_12hr": 0.1,
}


def channel_weights(
    layout: ChannelLayout,
    variable_weights: Mapping[str, float] | None = None,
    per_level: bool = True,
) -> np.ndarray:
    """One weight per target channel that reproduces GenCast's per-variable, per-level weighting.

    GenCast's loss takes, for each variable, the mean over levels of ``level_weight * mse_level``
    and then a weighted *sum* over variables. Folded into channels, channel (v, level) weighs

        ``w_v * level / mean(levels) / n_levels``   (atmospheric v, `per_level=True`)
        ``w_v / n_levels``                          (atmospheric v, `per_level=False`)
        ``w_v``                                     (surface v)

    so that ``sum_c weight_c * mse_c`` equals GenCast's variable-summed loss. The CRPS reward of
    the distillation uses the same vector to weight per-channel CRPS.

    Args:
      layout: the task's channel layout (`task.layout`); weights follow `layout.targets`.
      variable_weights: name -> weight; defaults to `GENCAST_VARIABLE_WEIGHTS`; names not given
        weigh 1.0. Unknown names (not targets of the task), a negative or non-finite weight, or
        all targets weighing 0 raise `ConfigError`.
      per_level: apply the pressure-proportional level weights.
    Returns [C_out] float32.
    """
    weights = dict(GENCAST_VARIABLE_WEIGHTS if variable_weights is None else variable_weights)
    targets = {v for (v, _, _) in layout.targets}
    if variable_weights is not None:
        unknown = sorted(set(weights) - targets)
        if unknown:
            raise ConfigError(
                f"variable_weights: {unknown} are not target variables of the task "
                f"(targets: {sorted(targets)})"
            )
        bad = {k: v for k, v in weights.items() if not (np.isfinite(float(v)) and float(v) >= 0)}
        if bad:
            name = sorted(bad)[0]
            raise ConfigError(
                f"variable_weights: a weight must be finite and >= 0, found {name}: {bad[name]}"
            )
        if weights and not any(float(weights.get(v, 1.0)) > 0 for v in targets):
            raise ConfigError("variable_weights: every target variable weighs 0; nothing to fit")
    levels = sorted({lev for (_, _, lev) in layout.targets if lev is not None})
    lw = dict(zip(levels, level_weights(levels))) if levels else {}
    n_levels = max(len(levels), 1)
    out = np.empty(len(layout.targets), dtype=np.float64)
    for i, (v, _, lev) in enumerate(layout.targets):
        w = float(weights.get(v, 1.0))
        if has_level(v):
            w = w * (lw[lev] if per_level else 1.0) / n_levels
        out[i] = w
    return out.astype(np.float32)
