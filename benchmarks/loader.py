"""Loader throughput on the embedded nature-run store: examples/s and batches/s (prints JSON).

Usage: python benchmarks/loader.py [--store PATH] [--stats DIR] [--batch 4] [--batches 40]
Without --store, the cached embedded store is used (built on first use). Without --stats, the
statistics are computed in-process from the first 200 times (enough for normalization here).
The loader must be >= 10x faster than a training step (issue 2); compare with the teacher's
steps/s from its own benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    import numpy as np
    import xarray as xr

    from gencast_rmmd.data import stats as st
    from gencast_rmmd.data.config import load_data_config
    from gencast_rmmd.data.examples import ExampleSource, make_loader
    from gencast_rmmd.data.nature_run import embedded_store

    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None)
    ap.add_argument("--stats", default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args()
    cfg = load_data_config("embedded")
    store = args.store or str(embedded_store(None, cfg.nature_run, cfg.task.pressure_levels))
    stats_dir = args.stats
    if stats_dir is None:
        stats_dir = tempfile.mkdtemp(prefix="loader_bench_stats_")
        ds = xr.open_zarr(store).isel(time=slice(0, 200))
        st.save_stats(st.compute_stats(ds), stats_dir)
    cache = tempfile.mkdtemp(prefix="loader_bench_cache_")
    results: dict = {"store": store, "batch_size": args.batch}
    for mode, kwargs in (("zarr", {}), ("local_cache", {"local_cache": cache})):
        t0 = time.perf_counter()
        src = ExampleSource(store, cfg.task, stats_dir, **kwargs)
        src[0]  # open the store (and, for local_cache, write the memory-mapped copy)
        results[f"{mode}_open_s"] = round(time.perf_counter() - t0, 2)
        rng = np.random.default_rng(0)
        idx = rng.integers(0, len(src), size=50)
        t0 = time.perf_counter()
        for i in idx:
            src[int(i)]
        single = (time.perf_counter() - t0) / idx.size
        results["examples"] = len(src)
        results["example_shapes"] = {
            k: list(v.shape) for k, v in src[0].items() if hasattr(v, "shape")
        }
        results[f"{mode}_single_example_ms"] = round(single * 1e3, 2)
        for threads in (1, 4):
            it = iter(make_loader(src, args.batch, seed=0, num_threads=threads))
            next(it)  # warm-up (threads start, first reads)
            t0 = time.perf_counter()
            for _ in range(args.batches):
                next(it)
            dt = time.perf_counter() - t0
            results[f"{mode}_batches_per_s_threads{threads}"] = round(args.batches / dt, 2)
            results[f"{mode}_examples_per_s_threads{threads}"] = round(
                args.batches * args.batch / dt, 1
            )
    results["load_average_1min"] = os.getloadavg()[0]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
