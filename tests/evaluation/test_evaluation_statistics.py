"""Per-chunk statistics vs brute force; calibration of synthetic ensembles; latitude weights."""

from __future__ import annotations

import numpy as np
import pytest
import scoringrules as sr
import xarray as xr

from gencast_rmmd.evaluation.regions import REGIONS, latitude_weights, region_weights
from gencast_rmmd.evaluation.scorecard import finalize, rank_histograms
from gencast_rmmd.evaluation.statistics import VL_DIM, chunk_statistics, pointwise_statistics
from gencast_rmmd.evaluation.stores import canonical_grid
from gencast_rmmd.evaluation.synthetic import synthetic_pair


def test_latitude_weights():
    lat = -87.1875 + 5.625 * np.arange(32)
    w = latitude_weights(lat)
    np.testing.assert_allclose(w.mean(), 1.0)
    # Proportional to cos(lat) to first order on a regular grid without poles.
    np.testing.assert_allclose(
        w / w.sum(), np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).sum(), rtol=2e-3
    )
    # With poles: half-width polar cells get a tiny weight; still exact area fractions.
    lat_p = np.linspace(-90, 90, 19)
    wp = latitude_weights(lat_p)
    np.testing.assert_allclose(
        wp[0] / wp[9], (1 - np.sin(np.deg2rad(85))) / (2 * np.sin(np.deg2rad(5)))
    )
    with pytest.raises(ValueError):
        latitude_weights(lat[::-1])
    rw = region_weights(lat)
    assert rw.shape == (len(REGIONS), 32)
    tro = rw[list(REGIONS).index("tropics")]
    assert np.all(tro[np.abs(lat) > 20] == 0) and np.all(tro[np.abs(lat) <= 20] > 0)


def _brute_force_global(fc, tr, var, level, m):
    """Lat-weighted global means computed point by point with scoringrules."""
    x = fc[var] if level is None else fc[var].sel(level=level)
    y = tr[var] if level is None else tr[var].sel(level=level)
    x = x.transpose("realization", "latitude", "longitude").values.astype(np.float64)
    y = y.transpose("latitude", "longitude").values.astype(np.float64)
    w = latitude_weights(fc["latitude"].values)[:, None] * np.ones_like(y)
    w = w / w.sum()
    crps = sr.crps_ensemble(y, np.moveaxis(x, 0, -1), estimator="fair")
    mean = x.mean(0)
    var_ = x.var(0, ddof=1)
    return {
        "crps": (w * crps).sum(),
        "se": (w * (mean - y) ** 2).sum(),
        "var": (w * var_).sum(),
        "debiased": (w * ((mean - y) ** 2 - var_ / m)).sum(),
    }


def test_chunk_statistics_match_brute_force():
    fc, tr = synthetic_pair(n_init=1, n_lead=1, members=5, n_lat=8, n_lon=16, seed=3)
    tr = canonical_grid(tr)
    f = fc.isel(time=0, prediction_timedelta=0)
    t = tr.sel(time=fc.time[0] + fc.prediction_timedelta[0])
    pairs = [("2m_temperature", None), ("temperature", 500), ("temperature", 850)]
    st = chunk_statistics(f, t, pairs, ensemble_dim="realization", rng=np.random.default_rng(0))
    for var, lev in pairs:
        ref = _brute_force_global(f, t, var, lev, 5)
        row = st.sel(region="global").isel({VL_DIM: pairs.index((var, lev))})
        np.testing.assert_allclose(
            float(row.crps_skill - 0.5 * row.crps_spread), ref["crps"], rtol=1e-6
        )
        np.testing.assert_allclose(float(row.ensemble_mean_se), ref["se"], rtol=1e-6)
        np.testing.assert_allclose(float(row.ensemble_variance), ref["var"], rtol=1e-6)
        np.testing.assert_allclose(
            float(row.debiased_ensemble_mean_se), ref["debiased"], rtol=1e-6, atol=1e-9
        )
        np.testing.assert_allclose(float(row.rank_histogram.sum()), 1.0)
    assert st.rank_histogram.sizes["bin"] == 6


def test_nan_points_are_left_out():
    rng = np.random.default_rng(0)
    ens = rng.standard_normal((4, 1, 6, 8))
    y = rng.standard_normal((1, 6, 8))
    y_nan = y.copy()
    y_nan[0, :, :4] = np.nan  # e.g. SST over land
    fields, _, valid = pointwise_statistics(ens, y_nan, rng)
    assert valid.sum() == 24 and all(np.isfinite(v).all() for v in fields.values())
    full, _, _ = pointwise_statistics(ens[..., 4:], y[..., 4:], rng)
    np.testing.assert_allclose(fields["crps_skill"][..., 4:], full["crps_skill"])


def test_forecast_missing_is_the_share_of_observed_points_a_member_failed_at():
    """`forecast_missing`: the latitude-weighted share of the points with a finite truth where
    some member is NaN or infinite (those points are left out of the scores); a member NaN where
    the truth is NaN too (sea-surface temperature over land) does not count."""
    fc, tr = synthetic_pair(n_init=1, n_lead=1, members=4, n_lat=8, n_lon=16, seed=3)
    tr = canonical_grid(tr)
    f = fc.isel(time=0, prediction_timedelta=0).copy(deep=True)
    t = tr.sel(time=fc.time[0] + fc.prediction_timedelta[0]).copy(deep=True)
    pairs = [("2m_temperature", None), ("temperature", 500), ("temperature", 850)]
    f["2m_temperature"][1, 2, :4] = np.nan  # one member fails at 4 points of latitude row 2
    f["2m_temperature"][3, 5, 0] = np.inf
    f["2m_temperature"][0, 6, :] = np.nan  # ... and along row 6, where the truth is NaN too
    t["2m_temperature"][6, :] = np.nan
    f["temperature"].loc[dict(realization=2, level=500)] = np.nan  # a whole level of a member
    st = chunk_statistics(f, t, pairs, ensemble_dim="realization", rng=np.random.default_rng(0))
    miss = st["forecast_missing"].sel(region="global").values
    w = latitude_weights(f["latitude"].values)
    observed = np.ones((8, 16)) * w[:, None]
    observed[6] = 0.0
    expected_2m = (4 * w[2] + w[5]) / observed.sum()
    np.testing.assert_allclose(miss, [expected_2m, 1.0, 0.0], rtol=1e-12)
    f0 = fc.isel(time=0, prediction_timedelta=0)
    clean = chunk_statistics(f0, t, pairs, ensemble_dim="realization", rng=np.random.default_rng(0))
    assert (clean["forecast_missing"] == 0).all()


def _calibration(spread_factor, members=8, n_init=6):
    fc, tr = synthetic_pair(
        n_init=n_init,
        n_lead=2,
        members=members,
        n_lat=24,
        n_lon=48,
        spread_factor=spread_factor,
        seed=11,
    )
    tr = canonical_grid(tr)
    pairs = [("2m_temperature", None), ("temperature", 500), ("temperature", 850)]
    per_lead = []
    for j in range(2):
        total = 0
        for i in range(n_init):
            f = fc.isel(time=i, prediction_timedelta=j)
            t = tr.sel(time=f.time + f.prediction_timedelta)
            rng = np.random.default_rng([i, j])
            total = total + chunk_statistics(f, t, pairs, ensemble_dim="realization", rng=rng)
        per_lead.append(
            (total / n_init).expand_dims(prediction_timedelta=[fc.prediction_timedelta.values[j]])
        )
    mean = xr.concat(per_lead, dim="prediction_timedelta")
    return finalize(mean, members), rank_histograms(mean)


def test_calibrated_ensemble_is_flat_with_unit_spread_skill():
    card, hist = _calibration(1.0)
    ssr = card["value"].sel(metric="spread_skill", region="global").values
    # ~6900 points per entry: SSR sampling s.e. ~0.015 (lat-weighted), tolerance 0.06.
    np.testing.assert_allclose(ssr, 1.0, atol=0.06)
    h = hist["rank_histogram"].sel(region="global").values  # [VL, lead, bin]
    n = 6 * 24 * 48
    se = np.sqrt((1 / 9) * (8 / 9) / n) * 1.1  # 1.1: lat weighting lowers the effective n
    assert np.all(np.abs(h - 1 / 9) < 5 * se), np.abs(h - 1 / 9).max()
    assert float(hist["reliability_index"].sel(region="global").max()) < 0.1


def test_under_dispersed_ensemble_is_u_shaped():
    card, hist = _calibration(0.4)
    ssr = card["value"].sel(metric="spread_skill", region="global").values
    assert np.all(ssr < 0.6)
    h = hist["rank_histogram"].sel(region="global").values
    edges = h[..., [0, -1]]
    middle = h[..., 1:-1]
    assert np.all(edges.min(-1) > 2 * middle.max(-1))  # U shape
    assert float(hist["reliability_index"].sel(region="global").min()) > 0.5
