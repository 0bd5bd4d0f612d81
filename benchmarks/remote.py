"""Reading stores by URL: what an object store's round trips cost, and what concurrent reads win
back (prints JSON).

Usage: python benchmarks/remote.py [--latency-ms 30] [--store PATH] [--block 32] [--examples 20]

The store (default: the cached embedded nature run) is served over loopback HTTP by a threaded
server that waits `--latency-ms` before answering each request (a stand-in for GCS, whose
requests take tens of ms). Side by side in one run:
- the statistics pipeline's block reads (`pipelines.stats._read_block`, every variable of
  `--block` times): one variable after another vs all variables at once (what it does by URL),
  and from local disk;
- the whole statistics pipeline (`compute_stats_beam`, in-process runner) by URL, both ways;
- training examples (`ExampleSource`, which fetches a URL store's variables concurrently) by URL
  and from local disk.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def serve(directory: str, latency_s: float) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A threaded HTTP server for `directory` on a free loopback port, `latency_s` per request."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=directory, **k)

        def send_head(self):
            time.sleep(latency_s)
            return super().send_head()

        def log_message(self, *a):
            pass

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 256  # the default 5 drops connections under concurrent reads
        daemon_threads = True

    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def main() -> None:
    import numpy as np
    import xarray as xr

    from gencast_rmmd.data import stats as st
    from gencast_rmmd.data.config import load_data_config
    from gencast_rmmd.data.examples import ExampleSource
    from gencast_rmmd.data.nature_run import embedded_store
    from gencast_rmmd.safety import load_or_data_error
    from pipelines import stats as stats_pipe

    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-ms", type=float, default=30.0)
    ap.add_argument("--store", default=None)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=8, help="blocks timed per read mode")
    ap.add_argument("--examples", type=int, default=20)
    args = ap.parse_args()
    cfg = load_data_config("embedded")
    store = args.store or str(embedded_store(None, cfg.nature_run, cfg.task.pressure_levels))
    store = os.path.abspath(store)
    srv, base = serve(os.path.dirname(store), args.latency_ms / 1e3)
    url = f"{base}/{os.path.basename(store)}"
    ds = xr.open_zarr(store)
    names = [k for k, v in ds.data_vars.items() if "time" in v.dims]
    n = ds.sizes["time"]
    starts = list(range(0, n, args.block))[: args.blocks]
    out: dict = {
        "store": store,
        "latency_ms_per_request": args.latency_ms,
        "variables": len(names),
        "block_times": args.block,
        "blocks_timed": len(starts),
    }

    def block_reads(path: str, threads: int) -> float:
        stats_pipe._open.cache_clear()
        stats_pipe._open(path)  # metadata, not timed
        t0 = time.perf_counter()
        for lo in starts:
            view = stats_pipe._open(path)[names].isel(time=slice(lo, lo + args.block))
            load_or_data_error(view, path, threads=threads)
        return (time.perf_counter() - t0) / len(starts)

    out["block_read_s_local"] = round(block_reads(store, 1), 3)
    out["block_read_s_url_one_variable_at_a_time"] = round(block_reads(url, 1), 3)
    out["block_read_s_url_concurrent"] = round(block_reads(url, len(names)), 3)
    out["block_read_speedup_concurrent"] = round(
        out["block_read_s_url_one_variable_at_a_time"] / out["block_read_s_url_concurrent"], 2
    )

    real = stats_pipe.load_or_data_error

    def one_at_a_time(obj, store, where="", threads=1):
        return real(obj, store, where=where)  # threads ignored: the read before concurrency

    for mode, loader in (("one_variable_at_a_time", one_at_a_time), ("concurrent", real)):
        stats_pipe.load_or_data_error = loader
        stats_pipe._open.cache_clear()
        with tempfile.TemporaryDirectory(prefix="remote_bench_stats_") as d:
            t0 = time.perf_counter()
            stats_pipe.compute_stats_beam(url, d, block=args.block)
            out[f"stats_pipeline_s_url_{mode}"] = round(time.perf_counter() - t0, 2)
    stats_pipe.load_or_data_error = real
    out["stats_pipeline_speedup_concurrent"] = round(
        out["stats_pipeline_s_url_one_variable_at_a_time"] / out["stats_pipeline_s_url_concurrent"],
        2,
    )

    with tempfile.TemporaryDirectory(prefix="remote_bench_stats_") as d:
        st.save_stats(st.compute_stats(ds.isel(time=slice(0, 200))), d)
        idx = np.random.default_rng(0).integers(0, 500, size=args.examples)
        for where, path in (("local", store), ("url", url)):
            src = ExampleSource(path, cfg.task, d)
            src[0]  # open
            t0 = time.perf_counter()
            for i in idx:
                src[int(i)]
            out[f"example_ms_{where}"] = round((time.perf_counter() - t0) / idx.size * 1e3, 1)
    srv.shutdown()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
