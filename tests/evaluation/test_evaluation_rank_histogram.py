"""Rank histograms: xskillscore on tie-free data, tie randomization, reliability index."""

from __future__ import annotations

import numpy as np
import xarray as xr
import xskillscore as xs

from gencast_rmmd.evaluation.rank_histogram import (
    observation_ranks,
    outlier_rate,
    reliability_index,
)


def test_matches_xskillscore_without_ties():
    rng = np.random.default_rng(0)
    m, n = 6, 3000
    ens = rng.standard_normal((m, n))
    y = rng.standard_normal(n) * 1.3 + 0.2
    ranks = observation_ranks(ens, y, rng)
    ours = np.bincount(ranks, minlength=m + 1)
    obs = xr.DataArray(y, dims="x")
    fc = xr.DataArray(ens.T, dims=("x", "member"))
    ref = xs.rank_histogram(obs, fc, dim="x", member_dim="member")
    np.testing.assert_array_equal(ours, ref.values)


def test_ties_are_randomized_uniformly():
    # All members equal the truth: the rank must be uniform over 0..M, not piled in one bin.
    rng = np.random.default_rng(1)
    m, n = 4, 50_000
    ens = np.zeros((m, n))
    ranks = observation_ranks(ens, np.zeros(n), rng)
    freq = np.bincount(ranks, minlength=m + 1) / n
    se = np.sqrt(0.2 * 0.8 / n)
    assert np.all(np.abs(freq - 0.2) < 5 * se), freq
    # Partial ties: 2 of 4 members tie at the truth, 1 below -> ranks uniform on {1, 2, 3}.
    ens = np.stack([np.full(n, -1.0), np.zeros(n), np.zeros(n), np.full(n, 2.0)])
    ranks = observation_ranks(ens, np.zeros(n), rng)
    assert set(np.unique(ranks)) == {1, 2, 3}
    np.testing.assert_allclose(np.bincount(ranks)[1:] / n, 1 / 3, atol=5 * np.sqrt(2 / 9 / n))


def test_reliability_measures():
    flat = np.full(9, 10.0)
    assert reliability_index(flat) == 0.0
    u = np.array([5.0, 1, 1, 1, 5])
    assert reliability_index(u) > 0.5
    np.testing.assert_allclose(outlier_rate(u), 10 / 13)
    np.testing.assert_allclose(outlier_rate(flat), 2 / 9)
