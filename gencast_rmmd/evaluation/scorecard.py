"""Finalize averaged statistics into scorecards, compare with a baseline, test significance.

`finalize` turns init-time means of the additive chunk statistics (`statistics.STATISTICS`) into
the scorecard metrics (reference notes §4.3 and §9):

- `crps`          mean(crps_skill) - mean(crps_spread)/2            (fair CRPS)
- `rmse`          sqrt(mean((xbar - y)^2))                          (ensemble-mean RMSE; sqrt after
                                                                     the space and time means)
- `spread_skill`  sqrt((M+1)/M) * sqrt(mean(s^2) / mean((xbar - y)^2))   (Fortin et al. 2014: 1 for
                                                                     a perfect M-member ensemble)

Comparisons with `--baseline` give the percent change 100 (f - b)/b per entry (negative = the
forecast has lower error), a win rate, and a significance mark per entry from a paired test over
init times (`paired_significance`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats
import xarray as xr

from gencast_rmmd.evaluation.rank_histogram import outlier_rate, reliability_index
from gencast_rmmd.evaluation.statistics import VL_DIM

METRICS = ("crps", "rmse", "spread_skill")
ERROR_METRICS = ("crps", "rmse")  # lower is better; compared with the baseline
SIGNIFICANCE_LEVEL = 0.05


def _lead_hours(ds: xr.Dataset) -> xr.Dataset:
    """Rename `prediction_timedelta` to `lead_time` in integer hours."""
    if "prediction_timedelta" in ds.dims:
        hours = (ds["prediction_timedelta"].values // np.timedelta64(1, "h")).astype(np.int64)
        ds = ds.rename({"prediction_timedelta": "lead_time"}).assign_coords(lead_time=hours)
        ds["lead_time"].attrs["units"] = "hours"
    return ds


def metric_values(stats: xr.Dataset, ensemble_size: int) -> xr.DataArray:
    """Scorecard metrics from (time-averaged or per-init) statistics.

    Args:
      stats: variables `crps_skill, crps_spread, ensemble_mean_se, ensemble_variance` with any dims.
      ensemble_size: M, for the (M+1)/M spread/skill correction.
    Returns:
      DataArray with a leading `metric` dim (`METRICS`), other dims as in `stats`.
    """
    m = ensemble_size
    crps = stats["crps_skill"] - 0.5 * stats["crps_spread"]
    rmse = np.sqrt(stats["ensemble_mean_se"])
    ssr = np.sqrt((m + 1) / m * stats["ensemble_variance"] / stats["ensemble_mean_se"])
    return xr.concat([crps, rmse, ssr], dim=xr.DataArray(list(METRICS), dims="metric"))


def finalize(mean_stats: xr.Dataset, ensemble_size: int, attrs: dict | None = None) -> xr.Dataset:
    """The scorecard of one model from its init-time-mean statistics.

    Args:
      mean_stats: dims (prediction_timedelta, region, variable-level[, bin]).
    Returns:
      Dataset with `value` of dims (metric, variable-level, lead_time, region); lead_time in hours.
    """
    ds = _lead_hours(mean_stats)
    value = metric_values(ds, ensemble_size).transpose("metric", VL_DIM, "lead_time", "region")
    out = xr.Dataset({"value": value})
    out.attrs.update(attrs or {})
    return out


def rank_histograms(mean_stats: xr.Dataset) -> xr.Dataset:
    """Averaged rank histograms plus their reliability index and outlier rate.

    Returns Dataset: `rank_histogram` (variable-level, lead_time, region, bin) frequencies summing
    to 1 over `bin`; `reliability_index` sum_k |p_k - 1/(M+1)| (Delle Monache et al. 2006);
    `outlier_rate` p_0 + p_M (ideal 2/(M+1)).
    """
    ds = _lead_hours(mean_stats)
    h = ds["rank_histogram"].transpose(VL_DIM, "lead_time", "region", "bin")
    h = h / h.sum("bin")
    return xr.Dataset(
        {
            "rank_histogram": h,
            "reliability_index": (h.dims[:-1], reliability_index(h.values)),
            "outlier_rate": (h.dims[:-1], outlier_rate(h.values)),
        }
    )


def paired_significance(diff: np.ndarray, axis: int = 0, level: float = SIGNIFICANCE_LEVEL):
    """Two-sided paired t-test over init times with an AR(1) effective sample size.

    Consecutive init times are correlated, which makes a plain t-test over-confident. Following
    the usual practice for forecast score differences (e.g. Geer 2016; GenCast's scorecards also
    use paired tests over init times), the variance of the mean of d_t = score_f(t) - score_b(t)
    is inflated with the lag-1 autocorrelation rho of d (clipped to [0, 0.99]):
    n_eff = n (1 - rho) / (1 + rho); t = mean(d) / (sd(d) / sqrt(n_eff)), df = n_eff - 1.

    NaN differences (an init time left out of a model's means: no valid point there) are left
    out of the test, as of the means: n counts the finite ones, and a lag-1 product with a missing
    neighbour counts as 0.

    Args:
      diff: per-init score differences, init times (sorted) along `axis`.
    Returns:
      (p_value, significant) arrays without `axis`; p = NaN and not significant when n < 3 or
      the differences are all identical.
    """
    d = np.moveaxis(np.asarray(diff, dtype=np.float64), axis, 0)
    ok = np.isfinite(d)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, d, 0.0).sum(axis=0) / n
        a = np.where(ok, d - mean, 0.0)
        sd = np.sqrt((a**2).sum(axis=0) / (n - 1))
        rho = (a[1:] * a[:-1]).sum(axis=0) / (a**2).sum(axis=0)
        rho = np.clip(np.nan_to_num(rho, nan=0.0), 0.0, 0.99)
        n_eff = np.maximum(n * (1 - rho) / (1 + rho), 2.0)
        t = mean / (sd / np.sqrt(n_eff))
        p = 2 * scipy.stats.t.sf(np.abs(t), df=n_eff - 1)
    p = np.where((n >= 3) & (sd > 0), p, np.nan)
    return p, np.nan_to_num(p, nan=1.0) < level


def compare(
    scorecard: xr.Dataset,
    baseline: xr.Dataset,
    per_init: xr.Dataset | None = None,
    baseline_per_init: xr.Dataset | None = None,
) -> xr.Dataset:
    """Add the baseline comparison to a scorecard.

    Args:
      scorecard, baseline: outputs of `finalize` on the same entries.
      per_init, baseline_per_init: per-init `crps_skill, crps_spread, ensemble_mean_se` with dims
        (time, prediction_timedelta, region, variable-level), for the significance test (CRPS is
        tested on per-init CRPS, RMSE on per-init ensemble-mean MSE, which orders the same way).
    Returns:
      scorecard plus `baseline_value`, `relative_change` (percent, 100 (f - b)/b) and `significant`
      (bool; only for `crps` and `rmse`), `p_value`.
    """
    f, b = xr.align(scorecard["value"], baseline["value"], join="inner")
    out = xr.Dataset({"value": f, "baseline_value": b})
    out["relative_change"] = 100.0 * (f - b) / b
    sig = xr.zeros_like(f, dtype=bool)
    pval = xr.full_like(f, np.nan)
    if per_init is not None and baseline_per_init is not None:
        pf, pb = xr.align(_lead_hours(per_init), _lead_hours(baseline_per_init), join="inner")
        pf, pb = pf.sortby("time"), pb.sortby("time")
        series = {
            "crps": (pf["crps_skill"] - 0.5 * pf["crps_spread"])
            - (pb["crps_skill"] - 0.5 * pb["crps_spread"]),
            "rmse": pf["ensemble_mean_se"] - pb["ensemble_mean_se"],
        }
        for metric, d in series.items():
            d = d.transpose("time", VL_DIM, "lead_time", "region")
            d = d.sel({VL_DIM: f[VL_DIM], "lead_time": f["lead_time"], "region": f["region"]})
            p, s = paired_significance(d.values, axis=0)
            pval.loc[{"metric": metric}] = p
            sig.loc[{"metric": metric}] = s
    out["significant"] = sig
    out["p_value"] = pval
    out.attrs.update(scorecard.attrs)
    return out


def tidy_table(scorecard: xr.Dataset):
    """The scorecard as a tidy pandas DataFrame.

    Columns: metric, variable, level (empty for surface variables), lead_time_hours, region,
    value, and with a baseline also baseline_value, relative_change, significant.
    """
    import pandas as pd

    cols = ["value"] + [
        c for c in ("baseline_value", "relative_change", "significant") if c in scorecard
    ]
    rows = []
    v = scorecard.transpose("metric", VL_DIM, "lead_time", "region")
    arrays = {c: v[c].values for c in cols}
    variables = v["variable"].values
    levels = v["level"].values
    for i, metric in enumerate(v["metric"].values):
        for j in range(v.sizes[VL_DIM]):
            lev = "" if not np.isfinite(levels[j]) else str(int(levels[j]))
            for k, lead in enumerate(v["lead_time"].values):
                for r, region in enumerate(v["region"].values):
                    row = {
                        "metric": str(metric),
                        "variable": str(variables[j]),
                        "level": lev,
                        "lead_time_hours": int(lead),
                        "region": str(region),
                    }
                    for c in cols:
                        x = arrays[c][i, j, k, r]
                        row[c] = bool(x) if c == "significant" else float(x)
                    rows.append(row)
    return pd.DataFrame(
        rows, columns=["metric", "variable", "level", "lead_time_hours", "region"] + cols
    )


def summary(scorecard: xr.Dataset, region: str = "global") -> dict:
    """Headline figures of a scorecard, as plain Python numbers (for summary.json and the report).

    Keys: ensemble_size, n_entries (variable-level x lead time), models (role -> model name;
    roles "forecast" and, with a baseline, "baseline"), spread_skill (role -> mean spread/skill
    over entries), spread_skill_deviation (role -> mean |ssr - 1|), mean_crps / mean_rmse; with a
    baseline also win_rate_crps / win_rate_rmse (fraction of entries where the forecast's error is
    lower), mean_crps_change_percent / mean_rmse_change_percent, significant_wins_crps /
    significant_losses_crps (counts). Per-model figures are keyed by role, not name: a forecast
    and a baseline may share a name (two checkpoints of one "teacher").
    """
    sc = scorecard.sel(region=region)
    out: dict = {
        "region": region,
        "ensemble_size": int(scorecard.attrs.get("ensemble_size", -1)),
        "n_entries": int(sc.sizes[VL_DIM] * sc.sizes["lead_time"]),
        "mean_crps": _mean(sc["value"].sel(metric="crps")),
        "mean_rmse": _mean(sc["value"].sel(metric="rmse")),
        "spread_skill": {},
        "spread_skill_deviation": {},
        "models": {},
    }
    for role, var in (("forecast", "value"), ("baseline", "baseline_value")):
        if var not in sc:
            continue
        ssr = sc[var].sel(metric="spread_skill")
        out["models"][role] = scorecard.attrs.get(f"{role}_model", role)
        out["spread_skill"][role] = _mean(ssr)
        out["spread_skill_deviation"][role] = _mean(abs(ssr - 1))
    if "baseline_value" in sc:
        for metric in ERROR_METRICS:
            f = sc["value"].sel(metric=metric)
            b = sc["baseline_value"].sel(metric=metric)
            ok = np.isfinite(f) & np.isfinite(b)
            out[f"win_rate_{metric}"] = _mean((f < b).where(ok))
            out[f"mean_{metric}_change_percent"] = _mean(sc["relative_change"].sel(metric=metric))
            s = sc["significant"].sel(metric=metric)
            out[f"significant_wins_{metric}"] = int(((f < b) & s).sum())
            out[f"significant_losses_{metric}"] = int(((f > b) & s).sum())
    return out


def _mean(da: xr.DataArray) -> float:
    x = float(da.mean(skipna=True))
    return x if math.isfinite(x) else float("nan")


def load_summary(eval_dir: str, region: str = "global") -> dict:
    """`summary` of a finished evaluation directory (reads its scorecard.nc).

    The quickstart writes this to summary.json: win rate, mean CRPS/RMSE change, spread/skill per
    role (forecast, baseline).
    """
    import os

    from gencast_rmmd.evaluation.netcdf_io import read_netcdf

    return summary(read_netcdf(os.path.join(eval_dir, "scorecard.nc")), region=region)
