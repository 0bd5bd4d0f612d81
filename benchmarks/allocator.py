"""The C allocator setting (gencast_rmmd/runtime.py) vs glibc's default, side by side (JSON).

    python benchmarks/allocator.py [--run runs/quickstart] [--members 4] [--repeats 5] \
        [--train rmmd]

An allocator setting is process-wide, so each mode (`off`, `keep`, `one-arena`) gets its own
worker processes: one loads the teacher and the student of a quickstart run once (the run's models,
or `runs/bench-fast` made first, as benchmarks/speed.py does) and compiles their 12 h ensemble
steps; with `--train`, another builds a training step for each distillation phase listed (the tiny
model with random weights, batch 2, as benchmarks/distill.py). Forecast and training steps need
separate processes: glibc's default raises its mmap threshold (up to 32 MiB) each time it frees a
large mapped block, so once a process has run a training step, `off` no longer maps (and faults
in) the forecast step's blocks, and it would measure like `keep`. The workers then take turns, one
step of each per turn and round, so that every mode sees the same background load; only one worker
runs at a time. Per mode and step: minimum and median wall seconds, median CPU seconds and median
minor page faults; each mode's median speed-up over `off` (paired by round); per mode the teacher /
student ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

MODES = ("off", "keep", "one-arena")


def worker(run: str, members: int, train: list[str]) -> None:
    """Serve rounds on stdin ("r" per line): with `train`, one training step of each phase listed;
    without, one timed 12 h step of the run's teacher and student per round."""
    from gencast_rmmd import runtime

    mode = runtime.tune_allocator()
    import jax

    calls = {}  # (benchmarks/ is on sys.path: main() put it there)
    with contextlib.ExitStack() as stack:
        if train:
            from distill import build_setup, training_step

            setup = build_setup("tiny", "embedded", None, 2)
            for phase in train:
                step_fn = stack.enter_context(training_step(phase, setup))
                for step in range(2):  # compile every rule once
                    jax.block_until_ready(step_fn(step)["loss"])
                calls[f"{phase}_train"] = lambda r, f=step_fn: f(r + 2)["loss"]
        else:
            from speed import resolve_run

            from gencast_rmmd.cli.quickstart_chain import build_step_calls, forecast_npz

            ctx, store = resolve_run(run)
            runs = build_step_calls(
                {
                    "teacher": str(ctx.teacher_eval_npz),
                    "student": str(forecast_npz(ctx, "student")),
                },
                str(ctx.stats_dir),
                store,
                {"": members},
            )
            calls = {name: call for (_, name), (call, _, _) in runs.items()}
        _serve(mode, calls)


def _serve(mode: str, calls: dict) -> None:
    print(json.dumps({"ready": mode}), flush=True)
    import jax

    for line in sys.stdin:
        r = int(line)
        out = {}
        for name, call in calls.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(call(r))
            out[name] = {
                "wall": time.perf_counter() - t0,
                "cpu": time.process_time() - c0,
                "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0,
            }
        print(json.dumps(out), flush=True)


def _start(mode: str, run: str, members: int, train: str) -> subprocess.Popen:
    env = dict(os.environ, GENCAST_RMMD_MALLOC=mode)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--run", run]
    cmd += ["--members", str(members), "--train", train]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _read(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"allocator worker exited with status {proc.wait()}")
    return json.loads(line)


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from speed import run_arguments

    ap = run_arguments()
    ap.add_argument(
        "--train",
        default="rmmd",
        help="distillation phases whose training step is timed too (comma-separated, '' for none;"
        " the tiny model with random weights, as benchmarks/distill.py)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.run, args.members, [p for p in args.train.split(",") if p])
        return
    kinds = [""] + ([args.train] if args.train else [])  # forecast steps, training steps
    procs, applied = {}, {}
    try:
        for mode in MODES:  # one at a time: compiling in parallel would slow every worker
            for kind in kinds:
                procs[mode, kind] = _start(mode, args.run, args.members, kind)
                applied[mode] = _read(procs[mode, kind])["ready"]
        rounds: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for r in range(args.repeats):
            for mode in MODES:
                merged = {}
                for kind in kinds:
                    proc = procs[mode, kind]
                    proc.stdin.write(f"{r}\n")
                    proc.stdin.flush()
                    merged.update(_read(proc))
                rounds[mode].append(merged)
    finally:
        for proc in procs.values():
            if proc.stdin:
                proc.stdin.close()
            proc.wait()

    def series(mode, name, key):
        return np.array([rd[name][key] for rd in rounds[mode]], float)

    result: dict = {"benchmark": "allocator", "members": args.members, "repeats": args.repeats}
    for mode in MODES:
        per = {"applied": applied[mode]}
        for name in rounds[mode][0]:  # teacher, student, then each "<phase>_train"
            wall = series(mode, name, "wall")
            per[name] = {
                "seconds": float(wall.min()),
                "median_seconds": float(np.median(wall)),
                "median_cpu_seconds": float(np.median(series(mode, name, "cpu"))),
                "median_page_faults": float(np.median(series(mode, name, "faults"))),
                "speedup_vs_off_paired": float(np.median(series("off", name, "wall") / wall)),
            }
        t, s = series(mode, "teacher", "wall"), series(mode, "student", "wall")
        per["teacher_over_student"] = {
            "minima": float(t.min() / s.min()),
            "medians": float(np.median(t) / np.median(s)),
            "paired": float(np.median(t / s)),
        }
        result[mode] = per
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
