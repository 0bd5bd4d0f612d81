"""Additive per-chunk statistics: one (init time, lead time) of an ensemble against the truth.

Each chunk holds all members and the full globe of one forecast at one lead time. Per
variable/level and region it yields latitude-weighted spatial means of pointwise quantities that
are *additive*, so averaging chunks over init times (`xbeam.Mean(skipna=True)`, or running sums
and counts in memory) and finalizing afterwards gives the same numbers however the work is split
(reference notes §9):

- `crps_skill`   (1/M) sum_i |x_i - y|
- `crps_spread`  1/(M(M-1)) sum_{i!=j} |x_i - x_j|   (one sort per chunk; crps = skill - spread/2)
- `ensemble_mean_se`  (xbar - y)^2
- `ensemble_variance` member variance with ddof = 1
- `debiased_ensemble_mean_se`  (xbar - y)^2 - s^2/M   (unbiased for (mu - y)^2; WB2's debiased MSE)
- `rank_histogram`  latitude-weighted frequency of the observation's rank, M + 1 bins, random
  tie-breaking (dim `bin`)

Points where the truth or any member is NaN (e.g. sea-surface temperature over land) are left out
of the spatial means (their weight is removed from numerator and denominator); a region with no
valid point gets NaN, which the mean over init times then leaves out. `forecast_missing`, also
additive, is the latitude-weighted fraction of the points with a finite truth where some member
is NaN or infinite: points a forecast failed at, which the scores above do not count as errors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from gencast_rmmd.evaluation.crps import spread_from_sorted
from gencast_rmmd.evaluation.rank_histogram import observation_ranks
from gencast_rmmd.evaluation.regions import REGIONS, region_weights

STATISTICS = (
    "crps_skill",
    "crps_spread",
    "ensemble_mean_se",
    "ensemble_variance",
    "debiased_ensemble_mean_se",
)
VL_DIM = "variable-level"

VariableLevel = tuple[str, "int | None"]


def variable_level_label(var: str, level: int | None) -> str:
    """Label of one scorecard row: 'temperature/850' or '2m_temperature'."""
    return var if level is None else f"{var}/{int(level)}"


def variable_level_coords(pairs: Sequence[VariableLevel]) -> dict[str, tuple]:
    """Coordinates of the `variable-level` dim: labels plus `variable` and `level` (NaN = surface)."""
    return {
        VL_DIM: (VL_DIM, [variable_level_label(v, lev) for v, lev in pairs]),
        "variable": (VL_DIM, [v for v, _ in pairs]),
        "level": (VL_DIM, np.array([np.nan if lev is None else lev for _, lev in pairs], float)),
    }


def _region_means(field: np.ndarray, mask: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Masked latitude-weighted means. field, mask: [L, lat, lon]; w: [R, lat] -> [L, R]."""
    num = np.where(mask, field, 0.0).sum(axis=-1) @ w.T
    den = mask.sum(axis=-1).astype(np.float64) @ w.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def pointwise_statistics(
    ensemble: np.ndarray, truth: np.ndarray, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The pointwise fields behind `STATISTICS` for one variable.

    Args:
      ensemble: [M, ...] members; truth: [...] observation (same units).
      rng: used for rank tie-breaking only.
    Returns:
      (fields, ranks, valid): fields maps each name in `STATISTICS` to a float64 [...] array,
      ranks int64 [...] in [0, M], valid bool [...] (finite truth and members).
    """
    x = np.asarray(ensemble, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    m = x.shape[0]
    valid = np.isfinite(y) & np.isfinite(x).all(axis=0)
    x = np.where(valid, x, 0.0)
    y = np.where(valid, y, 0.0)
    xs = np.sort(x, axis=0)  # the one sort per chunk: CRPS spread (and cheap rank counting)
    mean = xs.mean(axis=0)
    var = xs.var(axis=0, ddof=1) if m > 1 else np.zeros_like(mean)
    se = (mean - y) ** 2
    fields = {
        "crps_skill": np.abs(xs - y).mean(axis=0),
        "crps_spread": spread_from_sorted(xs, axis=0),
        "ensemble_mean_se": se,
        "ensemble_variance": var,
        "debiased_ensemble_mean_se": se - var / m if m > 1 else np.full_like(se, np.nan),
    }
    ranks = observation_ranks(xs, y, rng, axis=0)
    return fields, ranks, valid


def chunk_statistics(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    pairs: Sequence[VariableLevel],
    *,
    ensemble_dim: str,
    rng: np.random.Generator,
    regions: dict[str, tuple[float, float]] | None = None,
) -> xr.Dataset:
    """Region means of the additive statistics for one forecast chunk.

    Args:
      forecast: one init time and lead time: variables with dims (ensemble_dim, [level], latitude,
        longitude), latitude increasing.
      truth: the verifying state: same variables with dims ([level], latitude, longitude) on the
        same grid.
      pairs: (variable, level or None) rows to score, in output order.
      rng: numpy Generator for rank tie-breaking (seed it per (init, lead) for reproducibility).
      regions: name -> (south, north) latitude band; default `REGIONS`.
    Returns:
      Dataset with variables `STATISTICS` and `forecast_missing` of dims (region,
      variable-level) and `rank_histogram` of dims (region, variable-level, bin); attr
      `ensemble_size`.
    """
    regions = REGIONS if regions is None else regions
    lat = forecast["latitude"].values
    w = region_weights(lat, regions)
    m = forecast.sizes[ensemble_dim]
    n_r, n_v = len(regions), len(pairs)
    out = {name: np.full((n_r, n_v), np.nan) for name in STATISTICS + ("forecast_missing",)}
    hist = np.full((n_r, n_v, m + 1), np.nan)

    by_var: dict[str, list[int]] = {}
    for i, (v, _) in enumerate(pairs):
        by_var.setdefault(v, []).append(i)
    for var in sorted(by_var):
        rows = by_var[var]
        levels = [pairs[i][1] for i in rows]
        fda = forecast[var]
        tda = truth[var]
        if levels[0] is not None:
            fda = fda.sel(level=levels)
            tda = tda.sel(level=levels)
            fx = fda.transpose(ensemble_dim, "level", "latitude", "longitude").values
            ty = tda.transpose("level", "latitude", "longitude").values
        else:
            fx = fda.transpose(ensemble_dim, "latitude", "longitude").values[:, None]
            ty = tda.transpose("latitude", "longitude").values[None]
        fields, ranks, valid = pointwise_statistics(fx, ty, rng)
        for name in STATISTICS:
            out[name][:, rows] = _region_means(fields[name], valid, w).T
        observed = np.isfinite(ty)
        out["forecast_missing"][:, rows] = _region_means(observed & ~valid, observed, w).T
        # Rank frequencies: weighted bincount over (level, lat, rank), then latitude weights.
        n_l, n_lat = ranks.shape[0], ranks.shape[1]
        idx = (np.arange(n_l)[:, None, None] * n_lat + np.arange(n_lat)[None, :, None]) * (m + 1)
        counts = np.bincount(
            (idx + ranks).ravel(),
            weights=valid.ravel().astype(np.float64),
            minlength=n_l * n_lat * (m + 1),
        ).reshape(n_l, n_lat, m + 1)
        den = valid.sum(axis=-1).astype(np.float64) @ w.T  # [L, R]
        with np.errstate(invalid="ignore", divide="ignore"):
            hist[:, rows, :] = np.einsum("lab,ra->rlb", counts, w) / den.T[:, :, None]

    coords = {"region": ("region", list(regions)), "bin": ("bin", np.arange(m + 1))}
    coords.update(variable_level_coords(pairs))
    data = {name: (("region", VL_DIM), v) for name, v in out.items()}
    data["rank_histogram"] = (("region", VL_DIM, "bin"), hist)
    return xr.Dataset(data, coords=coords, attrs={"ensemble_size": m})
