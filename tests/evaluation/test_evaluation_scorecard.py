"""Scorecard finalization, baseline comparison, significance test, tidy table, summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from gencast_rmmd.evaluation.scorecard import (
    compare,
    finalize,
    paired_significance,
    summary,
    tidy_table,
)
from gencast_rmmd.evaluation.statistics import STATISTICS, VL_DIM, variable_level_coords


def _stats(scale: float, n_time: int | None = None, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    pairs = [("2m_temperature", None), ("temperature", 850)]
    coords = {
        "region": ["global", "tropics"],
        "prediction_timedelta": np.array([12, 24], "timedelta64[h]").astype("timedelta64[ns]"),
    }
    coords.update(variable_level_coords(pairs))
    shape = (2, 2, 2)
    dims = ("prediction_timedelta", "region", VL_DIM)
    data = {}
    for name in STATISTICS:
        data[name] = (dims, scale * (1 + 0.1 * rng.random(shape)))
    ds = xr.Dataset(data, coords=coords)
    if n_time:
        ds = xr.concat(
            [ds * (1 + 0.05 * rng.standard_normal()) for _ in range(n_time)], dim="time"
        ).assign_coords(time=pd.date_range("2020-01-01", periods=n_time, freq="12h"))
    return ds


def test_finalize_formulas():
    st = _stats(1.0)
    card = finalize(st, ensemble_size=4)
    v = card["value"]
    assert v.dims == ("metric", VL_DIM, "lead_time", "region")
    np.testing.assert_array_equal(card["lead_time"].values, [12, 24])
    np.testing.assert_allclose(
        v.sel(metric="crps").transpose("lead_time", "region", VL_DIM),
        st.crps_skill - 0.5 * st.crps_spread,
    )
    np.testing.assert_allclose(
        v.sel(metric="rmse").transpose("lead_time", "region", VL_DIM), np.sqrt(st.ensemble_mean_se)
    )
    ssr = np.sqrt(5 / 4 * st.ensemble_variance / st.ensemble_mean_se)
    np.testing.assert_allclose(
        v.sel(metric="spread_skill").transpose("lead_time", "region", VL_DIM), ssr
    )


def test_paired_significance():
    rng = np.random.default_rng(0)
    n = 60
    shifted = -0.5 + rng.standard_normal((n, 5))
    noise = rng.standard_normal((n, 5))
    p1, s1 = paired_significance(shifted)
    assert s1.all() and np.all(p1 < 0.05)
    # Pure noise: at alpha=0.05 about 5% false positives; over 400 columns expect ~20, allow < 45.
    _, s0 = paired_significance(rng.standard_normal((n, 400)))
    assert s0.sum() < 45
    # Strong autocorrelation shrinks the effective sample: same mean shift, fewer significant.
    ar = np.cumsum(rng.standard_normal((n, 200)), axis=0) * 0.3 + 0.2
    iid = rng.standard_normal((n, 200)) * ar.std(axis=0) + 0.2
    assert paired_significance(ar)[1].sum() <= paired_significance(iid)[1].sum()
    p, s = paired_significance(noise[:2])
    assert np.isnan(p).all() and not s.any()
    # NaN differences (init times left out of a model's means) are left out of the test too:
    # a column with one gap is still tested; fewer than 3 finite values, or none, are not.
    gappy = shifted.copy()
    gappy[5, 0] = np.nan
    gappy[2:, 1] = np.nan
    gappy[:, 2] = np.nan
    p, s = paired_significance(gappy)
    assert s[0] and p[0] < 0.05 and np.isnan(p[1:3]).all() and not s[1:3].any()
    np.testing.assert_array_equal(p[3:], p1[3:])  # untouched columns: unchanged


def test_compare_summary_and_tidy_table():
    f_mean, b_mean = _stats(1.0), _stats(1.2, seed=1)
    card = finalize(f_mean, 4, {"forecast_model": "student", "ensemble_size": 4})
    base = finalize(b_mean, 4)
    f_init, b_init = _stats(1.0, n_time=10), _stats(1.2, n_time=10, seed=1)
    cmp_ = compare(card, base, f_init, b_init)
    cmp_.attrs["baseline_model"] = "teacher"
    rel = cmp_["relative_change"].sel(metric="crps")
    np.testing.assert_allclose(
        rel,
        100
        * (cmp_["value"] - cmp_["baseline_value"]).sel(metric="crps")
        / cmp_["baseline_value"].sel(metric="crps"),
    )
    assert not cmp_["significant"].sel(metric="spread_skill").any()
    s = summary(cmp_)
    wins = float(
        (cmp_["value"] < cmp_["baseline_value"]).sel(metric="crps", region="global").mean()
    )
    assert s["win_rate_crps"] == wins
    assert s["models"] == {"forecast": "student", "baseline": "teacher"}
    assert set(s["spread_skill"]) == set(s["spread_skill_deviation"]) == {"forecast", "baseline"}
    table = tidy_table(cmp_)
    assert list(table.columns) == [
        "metric",
        "variable",
        "level",
        "lead_time_hours",
        "region",
        "value",
        "baseline_value",
        "relative_change",
        "significant",
    ]
    assert len(table) == 3 * 2 * 2 * 2
    surf = table[table.variable == "2m_temperature"]
    assert (surf.level == "").all() and (
        table[table.variable == "temperature"].level == "850"
    ).all()
    assert set(table.metric) == {"crps", "rmse", "spread_skill"}
    row = table[
        (table.metric == "rmse")
        & (table.variable == "temperature")
        & (table.lead_time_hours == 24)
        & (table.region == "tropics")
    ]
    expected = float(
        cmp_["value"].sel(metric="rmse", lead_time=24, region="tropics").isel({VL_DIM: 1})
    )
    assert float(row.value.iloc[0]) == expected
    plain = tidy_table(card)
    assert list(plain.columns) == [
        "metric",
        "variable",
        "level",
        "lead_time_hours",
        "region",
        "value",
    ]


def test_summary_keeps_both_models_when_they_share_a_name(tmp_path):
    """Per-model summary figures were keyed by model name, so a baseline with the forecast's
    name (every teacher is "teacher") overwrote the forecast's spread/skill; they are keyed by
    role now, with the names under `models` (and beside the roles in the report)."""
    from gencast_rmmd.evaluation.report import write_report

    f_mean, b_mean = _stats(1.0), _stats(1.0, seed=1)
    b_mean["ensemble_variance"] = 4 * b_mean["ensemble_variance"]  # baseline: twice the spread
    attrs = {"forecast_model": "teacher", "baseline_model": "teacher", "ensemble_size": 4}
    cmp_ = compare(finalize(f_mean, 4, attrs), finalize(b_mean, 4))
    s = summary(cmp_)
    ssr = cmp_.sel(region="global", metric="spread_skill")
    assert s["models"] == {"forecast": "teacher", "baseline": "teacher"}
    assert s["spread_skill"] == {
        "forecast": float(ssr["value"].mean()),
        "baseline": float(ssr["baseline_value"].mean()),
    }
    assert s["spread_skill"]["baseline"] > 1.5 * s["spread_skill"]["forecast"]
    assert s["spread_skill_deviation"]["forecast"] == float(abs(ssr["value"] - 1).mean())
    alone = summary(finalize(f_mean, 4, attrs))
    assert alone["spread_skill"] == {"forecast": s["spread_skill"]["forecast"]}
    write_report(cmp_, xr.Dataset(), {"summary": s}, {}, str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text()
    assert f"forecast (teacher): {s['spread_skill']['forecast']:.4g}" in page
