"""Scorecard heatmap values: a colour scale that stays finite."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from gencast_rmmd.evaluation.plots import heatmap_values, scorecard_heatmap
from gencast_rmmd.evaluation.statistics import VL_DIM


def _card(spread_skill: np.ndarray) -> xr.Dataset:
    rows, leads = spread_skill.shape
    value = np.full((1, 2, rows, leads), 1.0)
    value[0, 1] = spread_skill
    return xr.Dataset(
        {"value": (("region", "metric", VL_DIM, "lead_time"), value)},
        coords={
            "region": ["global"],
            "metric": ["crps", "spread_skill"],
            VL_DIM: [f"v{i}" for i in range(rows)],
            "lead_time": 12 * np.arange(1, leads + 1),
        },
    )


def test_zero_spread_keeps_the_colour_scale_finite(tmp_path):
    """One zero-spread entry (a deterministic member set: log2 0 = -inf) made the colour limit
    infinite, which drew every entry white; it now takes the most under-dispersed colour and
    the others keep their scale. No warning either."""
    ratios = np.array([[0.5, 2.0, 1.0], [0.0, 1.0, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z, label, sig, lim = heatmap_values(_card(ratios), "spread_skill")
        scorecard_heatmap(_card(ratios), "spread_skill", str(tmp_path / "h.png"))
    assert lim == 1.0 and sig is None and "log2" in label
    np.testing.assert_array_equal(z[0], [-1.0, 1.0, 0.0])
    assert z[1, 0] == -1.0 and np.isnan(z[1, 2])  # clipped; a missing entry stays blank
    assert (tmp_path / "h.png").stat().st_size > 1000
    # Nothing finite at all: a unit scale.
    assert heatmap_values(_card(np.zeros((2, 3))), "spread_skill")[3] == 1.0
