"""Evaluation throughput and memory; prints one JSON object.

- throughput: (init, lead) chunks per second of the per-chunk statistics
  (`gencast_rmmd.evaluation.statistics.chunk_statistics`: fair CRPS skill/spread with one sort,
  ensemble-mean SE, variance, debiased SE, rank histograms, 4 regions) against a plain
  scoringrules + numpy computation of the same numbers (sr.crps_ensemble(estimator="fair") per
  point, numpy for the rest), on the same preloaded chunks; the two are checked to agree.
- end to end: chunks/s of the whole in-memory and Beam (in-process runner) pipelines incl. Zarr
  reads.
- peak memory: peak RSS (VmHWM) of a fresh subprocess evaluating 4 and 16 init times (the in-memory
  pipeline streams chunks, so this should not grow with the number of init times).

Usage: python benchmarks/evaluate.py [--members 16] [--lat 32] [--leads 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def plain_chunk(f, t, pairs, w):
    """The same statistics with scoringrules + numpy, no shared code with the pipeline."""
    import scoringrules as sr

    out = []
    for var, lev in pairs:
        x = (
            (f[var] if lev is None else f[var].sel(level=lev))
            .transpose("realization", "latitude", "longitude")
            .values.astype(np.float64)
        )
        y = (
            (t[var] if lev is None else t[var].sel(level=lev))
            .transpose("latitude", "longitude")
            .values.astype(np.float64)
        )
        m = x.shape[0]
        crps = sr.crps_ensemble(y, np.moveaxis(x, 0, -1), estimator="fair")
        mean = x.mean(0)
        var_ = x.var(0, ddof=1)
        se = (mean - y) ** 2
        ranks = (x < y).sum(0)
        fields = [crps, se, var_, se - var_ / m]
        row = []
        for wr in w:  # regions
            ww = wr[:, None] * np.ones_like(y)
            ww = ww / ww.sum()
            vals = [(ww * fld).sum() for fld in fields]
            hist = np.bincount(ranks.ravel(), weights=ww.ravel(), minlength=m + 1)
            row.append((vals, hist))
        out.append(row)
    return out


def bench_compute(args, tmp):
    from gencast_rmmd.evaluation.regions import region_weights
    from gencast_rmmd.evaluation.statistics import chunk_statistics
    from gencast_rmmd.evaluation.stores import canonical_grid
    from gencast_rmmd.evaluation.synthetic import synthetic_pair

    fc, tr = synthetic_pair(
        n_init=4,
        n_lead=args.leads,
        members=args.members,
        n_lat=args.lat,
        n_lon=2 * args.lat,
        levels=(250, 500, 700, 850),
    )
    tr = canonical_grid(tr)
    pairs = [("2m_temperature", None)] + [("temperature", lev) for lev in (250, 500, 700, 850)]
    chunks = []
    for i in range(fc.sizes["time"]):
        for j in range(fc.sizes["prediction_timedelta"]):
            f = fc.isel(time=i, prediction_timedelta=j).load()
            chunks.append((f, tr.sel(time=f.time + f.prediction_timedelta).load()))
    w = region_weights(fc["latitude"].values)
    # warm-up (numba/gufunc compilation, imports)
    chunk_statistics(*chunks[0], pairs, ensemble_dim="realization", rng=np.random.default_rng(0))
    plain_chunk(*chunks[0], pairs, w)
    t0 = time.perf_counter()
    ours = [
        chunk_statistics(f, t, pairs, ensemble_dim="realization", rng=np.random.default_rng(0))
        for f, t in chunks
    ]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = [plain_chunk(f, t, pairs, w) for f, t in chunks]
    t_plain = time.perf_counter() - t0
    # Same numbers (global CRPS of every chunk and row).
    diff = max(
        abs(float((o.crps_skill - 0.5 * o.crps_spread).isel(region=0).values[k]) - p[k][0][0][0])
        for o, p in zip(ours, plain)
        for k in range(len(pairs))
    )
    return {
        "chunks": len(chunks),
        "chunk_shape": {
            "members": args.members,
            "lat": args.lat,
            "lon": 2 * args.lat,
            "variable_levels": len(pairs),
        },
        "ours_chunks_per_s": round(len(chunks) / t_ours, 2),
        "plain_scoringrules_numpy_chunks_per_s": round(len(chunks) / t_plain, 2),
        "speedup": round(t_plain / t_ours, 2),
        "max_abs_crps_difference": diff,
    }


def bench_pipelines(args, tmp):
    from gencast_rmmd.evaluation.synthetic import write_synthetic_pair
    from pipelines.evaluate import evaluate

    f, t = os.path.join(tmp, "f.zarr"), os.path.join(tmp, "t.zarr")
    write_synthetic_pair(
        f, t, n_init=4, n_lead=args.leads, members=args.members, n_lat=args.lat, n_lon=2 * args.lat
    )
    n = 4 * args.leads
    out = {}
    for engine in ("memory", "beam"):
        t0 = time.perf_counter()
        evaluate(f, t, os.path.join(tmp, f"e_{engine}"), engine=engine, plots=False)
        out[f"{engine}_end_to_end_chunks_per_s"] = round(n / (time.perf_counter() - t0), 2)
    return out


def bench_memory(args, tmp):
    from gencast_rmmd.evaluation.synthetic import write_synthetic_pair

    res = {}
    for n_init in (4, 16):
        f, t = os.path.join(tmp, f"m{n_init}_f.zarr"), os.path.join(tmp, f"m{n_init}_t.zarr")
        write_synthetic_pair(
            f,
            t,
            n_init=n_init,
            n_lead=args.leads,
            members=args.members,
            n_lat=args.lat,
            n_lon=2 * args.lat,
        )
        size_mb = (
            sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(f) for fn in fns)
            / 2**20
        )
        for engine in ("memory", "beam"):
            # Peak RSS from VmHWM (per address space, reset by exec): ru_maxrss would inherit the
            # parent's high-water mark through fork.
            code = (
                "import sys, json; sys.path.insert(0, {!r});"
                "from pipelines.evaluate import evaluate;"
                "evaluate({!r}, {!r}, {!r}, engine={!r}, plots=False);"
                "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0];"
                "print(int(hwm.split()[1]) / 1024)"
            ).format(os.getcwd(), f, t, os.path.join(tmp, f"me{n_init}{engine}"), engine)
            p = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            res[f"{engine}_peak_rss_mb_{n_init}_inits"] = round(
                float(p.stdout.strip().splitlines()[-1]), 1
            )
        res[f"forecast_store_mb_{n_init}_inits"] = round(size_mb, 1)
    res["rss_growth_4_to_16_inits_mb"] = {
        e: round(res[f"{e}_peak_rss_mb_16_inits"] - res[f"{e}_peak_rss_mb_4_inits"], 1)
        for e in ("memory", "beam")
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--lat", type=int, default=32)
    ap.add_argument("--leads", type=int, default=4)
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        out = {"benchmark": "evaluate", "compute": bench_compute(args, tmp)}
        out["pipelines"] = bench_pipelines(args, tmp)
        out["memory"] = bench_memory(args, tmp)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    from gencast_rmmd import runtime

    runtime.tune_allocator()  # as the CLI does (GENCAST_RMMD_MALLOC; benchmarks/allocator.py)
    main()
