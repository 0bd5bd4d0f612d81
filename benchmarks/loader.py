"""Loader throughput on the embedded nature-run store: examples/s and batches/s (prints JSON).

Usage: python benchmarks/loader.py [--store PATH] [--stats DIR] [--batch 4] [--batches 40]
                                   [--train-metrics RUN/metrics.jsonl]
Without --store, the cached embedded store is used (built on first use). Without --stats, the
statistics are computed in-process from the first 200 times (enough for normalization here).
Both read paths are timed: Zarr directly and the memory-mapped `local_cache` copy, through grain
(`make_loader`) and through `ShuffledBatches`, the synchronous batcher the trainers call every
step; `trainer_mode` is what the trainers' default `local_cache: auto` picks for this store. The
loader must be >= 10x faster than a training step (issue 2): with --train-metrics (default: the
demo teacher's `runs/quickstart/teacher/metrics.jsonl` when present) the JSON also has the
median training steps/s logged there and `loader_to_train_ratio` (ShuffledBatches batches/s in
the trainers' mode / training steps/s).
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
    from gencast_rmmd.data.examples import ExampleSource, make_loader, resolve_local_cache
    from gencast_rmmd.data.nature_run import embedded_store
    from gencast_rmmd.training.loop import ShuffledBatches

    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None)
    ap.add_argument("--stats", default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--train-metrics", default="runs/quickstart/teacher/metrics.jsonl")
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
        batches = ShuffledBatches(src, args.batch, seed=0, keys=("inputs", "forcings", "targets"))
        batches(0)
        t0 = time.perf_counter()
        for step in range(1, args.batches + 1):
            batches(step)
        results[f"{mode}_shuffled_batches_per_s"] = round(
            args.batches / (time.perf_counter() - t0), 2
        )
    auto = resolve_local_cache("auto", ExampleSource(store, cfg.task, stats_dir))
    results["trainer_mode"] = "zarr" if auto is None else "local_cache"
    if args.train_metrics and os.path.exists(args.train_metrics):
        with open(args.train_metrics) as f:
            rates = [json.loads(line).get("steps_per_sec") for line in f if line.strip()]
        rates = [r for r in rates if r]
        if rates:
            train = float(np.median(rates))
            results["train_metrics"] = args.train_metrics
            results["train_steps_per_s"] = round(train, 3)
            results["loader_to_train_ratio"] = round(
                results[f"{results['trainer_mode']}_shuffled_batches_per_s"] / train, 1
            )
    results["load_average_1min"] = os.getloadavg()[0]
    print(json.dumps(results))


if __name__ == "__main__":
    from gencast_rmmd import runtime

    runtime.tune_allocator()  # as the CLI does (GENCAST_RMMD_MALLOC; benchmarks/allocator.py)
    main()
