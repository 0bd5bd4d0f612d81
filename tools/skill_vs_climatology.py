"""Fair CRPS of a forecast store against a per-grid-point Gaussian climatology, per lead time.

Usage: python tools/skill_vs_climatology.py FORECAST.zarr TRUTH.zarr CLIM_START CLIM_END
          [--vars temperature:850 geopotential:500 ...]
Prints JSON: for each variable(-level), the forecast's area-weighted fair CRPS per lead, the
climatology's (Gaussian with the per-point mean/std over CLIM_START..CLIM_END of the truth
store, normally the training period), the last lead up to which the forecast is better at
every lead, and the members' activity: their mean squared anomaly about the climatological mean
over the climatological variance (area-weighted). A stable model keeps it near that of the truth
(printed too, about 1); a rollout that drifts off the climate shows it growing with lead time.
Also the CRPS ratio (forecast / climatology, area-weighted within the region) per lead in each
of the evaluation's regions but the globe (tropics and northern and southern extratropics,
`gencast_rmmd.evaluation.regions`), to show where skill is lost.
This is how the teacher's skill numbers in the notes (issue 3) were measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gaussian_crps(mu, sd, y):
    import numpy as np
    from scipy.stats import norm

    z = (y - mu) / sd
    return sd * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))


def main() -> None:
    import numpy as np
    import xarray as xr

    from gencast_rmmd.evaluation.crps import fair_crps
    from gencast_rmmd.evaluation.regions import REGIONS, region_weights
    from gencast_rmmd.model.grid import latitude_weights

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("forecast")
    ap.add_argument("truth")
    ap.add_argument("clim_start")
    ap.add_argument("clim_end")
    ap.add_argument("--vars", nargs="+", default=["temperature:850", "geopotential:500"])
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fc = xr.open_zarr(args.forecast, chunks=None)
        truth = xr.open_zarr(args.truth, chunks=None)
    t_lat = "lat" if "lat" in truth.dims else "latitude"
    t_lon = "lon" if "lon" in truth.dims else "longitude"
    truth = truth.rename({t_lat: "latitude", t_lon: "longitude"})
    w = latitude_weights(fc["latitude"].values)[:, None]
    out = {}
    for spec in args.vars:
        name, _, level = spec.partition(":")
        f, t = fc[name], truth[name]
        if level:
            f, t = f.sel(level=int(level)), t.sel(level=int(level))
        clim = t.sel(time=slice(args.clim_start, args.clim_end))
        mu, sd = clim.mean("time").values, clim.std("time").values
        leads = fc["prediction_timedelta"].values
        model, ref = np.zeros(leads.size), np.zeros(leads.size)
        regions = {k: v for k, v in REGIONS.items() if k != "global"}
        reg_w = region_weights(fc["latitude"].values, regions)  # [region, lat]
        by_region = np.zeros((2, len(regions), leads.size))  # forecast, climatology
        act, act_truth = np.zeros(leads.size), np.zeros(leads.size)
        clim_var = float(np.mean(sd**2 * w))
        inits = fc["time"].values
        for t0 in inits:
            ens = f.sel(time=t0).values  # [lead, member, lat, lon]
            for i, lead in enumerate(leads):
                y = t.sel(time=t0 + lead).values
                crps_f = fair_crps(ens[i], y, axis=0)
                crps_c = gaussian_crps(mu, sd, y)
                model[i] += float(np.mean(crps_f * w))
                ref[i] += float(np.mean(crps_c * w))
                by_region[:, :, i] += (reg_w @ crps_f.mean(-1), reg_w @ crps_c.mean(-1))
                act[i] += float(np.mean((ens[i] - mu) ** 2 * w)) / clim_var
                act_truth[i] += float(np.mean((y - mu) ** 2 * w)) / clim_var
        model, ref = model / inits.size, ref / inits.size
        act, act_truth = act / inits.size, act_truth / inits.size
        hours = (leads / np.timedelta64(1, "h")).astype(int).tolist()
        better = model < ref
        upto = 0
        for h, b in zip(hours, better):
            if h == 0:
                continue
            if not b:
                break
            upto = h
        out[spec] = {
            "lead_hours": hours,
            "crps": np.round(model, 4).tolist(),
            "crps_climatology": np.round(ref, 4).tolist(),
            "beats_climatology_up_to_hours": upto,
            "activity": np.round(act, 3).tolist(),
            "activity_truth": np.round(act_truth, 3).tolist(),
        }
        for j, r in enumerate(regions):
            out[spec][f"crps_ratio_{r}"] = np.round(by_region[0, j] / by_region[1, j], 3).tolist()
    out["inits"] = int(fc.sizes["time"])
    out["members"] = int(fc.sizes["realization"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
