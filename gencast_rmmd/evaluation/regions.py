"""Latitude weights and the evaluation regions.

Latitude weights follow WeatherBench 2's convention (reference notes §1.2): each latitude row is a
cell bounded by the midpoints between neighbouring centres (with +-90 deg as the outer bounds), and
its weight is the exact integral of cos(phi) over the cell, sin(upper) - sin(lower), normalized to
mean 1. Regions are latitude bands applied as weight masks (so values outside a region can never
leak into it); band edges are inclusive, so the +-20 deg rows belong to the tropics and to the
extratropics, as in WeatherBench 2.
"""

from __future__ import annotations

import numpy as np

# name -> (southern edge, northern edge) in degrees north, inclusive.
REGIONS: dict[str, tuple[float, float]] = {
    "global": (-90.0, 90.0),
    "tropics": (-20.0, 20.0),
    "northern_extratropics": (20.0, 90.0),
    "southern_extratropics": (-90.0, -20.0),
}


def latitude_weights(lat: np.ndarray) -> np.ndarray:
    """Area weights of latitude rows, mean 1.

    Args:
      lat: [n_lat] cell-centre latitudes in degrees, strictly increasing.
    Returns:
      [n_lat] float64 weights proportional to sin(upper edge) - sin(lower edge).
    """
    lat = np.asarray(lat, dtype=np.float64)
    if lat.ndim != 1 or lat.size == 0:
        raise ValueError(f"latitude must be a non-empty 1-D array, found shape {lat.shape}")
    if lat.size > 1 and not np.all(np.diff(lat) > 0):
        raise ValueError("latitude must be strictly increasing (flip the dataset first)")
    edges = np.concatenate([[-90.0], (lat[1:] + lat[:-1]) / 2, [90.0]])
    w = np.sin(np.deg2rad(edges[1:])) - np.sin(np.deg2rad(edges[:-1]))
    return w / w.mean()


def region_weights(
    lat: np.ndarray, regions: dict[str, tuple[float, float]] | None = None
) -> np.ndarray:
    """Per-region latitude weights: [n_regions, n_lat], zero outside each band.

    Rows are not normalized; callers divide by the (masked) weight sum so that NaN points can be
    left out. A region with no latitude row raises `ValueError`.
    """
    regions = REGIONS if regions is None else regions
    lat = np.asarray(lat, dtype=np.float64)
    w = latitude_weights(lat)
    rows = []
    for name, (lo, hi) in regions.items():
        inside = (lat >= lo) & (lat <= hi)
        if not inside.any():
            raise ValueError(f"region {name!r} ({lo}..{hi} deg N) contains no latitude row")
        rows.append(np.where(inside, w, 0.0))
    return np.stack(rows)
