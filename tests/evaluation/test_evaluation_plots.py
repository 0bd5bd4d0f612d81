"""Scorecard heatmap values: a colour scale that stays finite; rank-histogram panels."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from gencast_rmmd.evaluation import plots
from gencast_rmmd.evaluation.plots import heatmap_values, scorecard_heatmap
from gencast_rmmd.evaluation.statistics import VL_DIM, variable_level_coords


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


def test_rank_histogram_panels_show_their_own_row(tmp_path, monkeypatch):
    """With more than MAX_ROWS variable-levels only some rows are drawn; each panel's bars and RI
    came from position r of the drawn rows but its title from the picked row, so panels below
    the first skipped row were mislabelled. Row i's bars and RI here all equal i."""
    levels = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)
    pairs = [(v, lev) for v in ("geopotential", "temperature") for lev in levels]
    n, nb = len(pairs), 3
    assert n > plots.MAX_ROWS
    h = np.broadcast_to(np.arange(n, dtype=float)[:, None, None, None], (n, 1, 1, nb))
    coords = variable_level_coords(pairs)
    coords.update(lead_time=[12], region=["global"], bin=np.arange(nb))
    hist = xr.Dataset(
        {
            "rank_histogram": ((VL_DIM, "lead_time", "region", "bin"), h),
            "reliability_index": ((VL_DIM, "lead_time", "region"), h[..., 0]),
        },
        coords=coords,
    )
    figs, close = [], plots.plt.close
    monkeypatch.setattr(plots.plt, "close", figs.append)  # keep the figure to inspect it
    plots.rank_histogram_grid(hist, str(tmp_path / "rh.png"))
    labels = list(hist[VL_DIM].values)
    axes = figs[0].axes
    assert len(axes) == plots.MAX_ROWS
    shown = set()
    for ax in axes:
        label, ri = ax.get_title().split(" +12h RI=")
        row = labels.index(label)
        shown.add(label)
        assert float(ri) == row
        assert [p.get_height() for p in ax.patches] == [row] * nb
    assert {"temperature/500", "temperature/850"} <= shown  # preferred levels are kept
    close(figs[0])
