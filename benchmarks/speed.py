"""Teacher vs student wall-clock per 12 h step, measured side by side in one process (JSON).

    python benchmarks/speed.py [--run runs/quickstart] [--members 4] [--repeats 5] [--one-member]
    python benchmarks/speed.py --teacher T.npz --student S.npz --stats DIR --data STORE

Uses the teacher (DPM-Solver++ 2S at the quickstart's noise levels) and the student of a
quickstart run directory, under the allocator setting of `GENCAST_RMMD_MALLOC`
(gencast_rmmd/runtime.py; benchmarks/allocator.py compares the settings). Without a run
directory, it first runs `gencast-rmmd quickstart --fast` into `runs/bench-fast` (toy sizes: the
ratio is still meaningful, since both models share one architecture and the ratio is set by the
number of network evaluations and the overhead). `--teacher/--student/--stats/--data` time two
checkpoints directly instead (the store gives only the grid: a copy with one time step will do,
which is how tools/device_check.sh times a quickstart run's models on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import jax


def _context(run: pathlib.Path):
    """The quickstart context of `run` when its final student exists, else None."""
    from gencast_rmmd.cli.quickstart_chain import Context

    if not (run / "quickstart.yaml").exists():
        return None
    ctx = Context.from_run(run)
    return ctx if ctx.student_npz.exists() else None


def resolve_run(run_dir: str):
    """(quickstart context, data store) of `run_dir`, or of `runs/bench-fast` (made first with
    `quickstart --fast` when needed) where `run_dir` has no final student."""
    ctx = _context(pathlib.Path(run_dir))
    if ctx is None:
        run = pathlib.Path("runs/bench-fast")
        if _context(run) is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gencast_rmmd",
                    "quickstart",
                    "--fast",
                    "--no-progress",
                    "--out",
                    str(run),
                ],
                check=True,
            )
        ctx = _context(run)
    store = ctx.store  # the store the run used (the nature run or --data)
    if not store or ("://" not in store and not pathlib.Path(store).exists()):
        from gencast_rmmd.config import load_config
        from gencast_rmmd.data import nature_run
        from gencast_rmmd.data.config import DataConfig

        data_cfg = load_config(DataConfig, ctx.data_yaml)
        store = str(
            nature_run.embedded_store(
                config=data_cfg.nature_run, levels_hpa=data_cfg.task.pressure_levels
            )
        )
    return ctx, store


def run_arguments(members: int = 4, repeats: int = 5) -> argparse.ArgumentParser:
    """The options of the benchmarks that time a quickstart run's models: --run, --members,
    --repeats (speed.py, allocator.py, step_breakdown.py)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/quickstart", help="quickstart run directory")
    ap.add_argument("--members", type=int, default=members, help="ensemble members per call")
    ap.add_argument("--repeats", type=int, default=repeats, help="timed rounds")
    return ap


def checkpoint_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options naming the two checkpoints directly, instead of a quickstart run."""
    ap.add_argument("--teacher", help="teacher checkpoint (.npz; with --student, --stats, --data)")
    ap.add_argument("--student", help="student checkpoint (.npz)")
    ap.add_argument("--stats", help="normalisation stats dir of both checkpoints")
    ap.add_argument("--data", help="store whose lat/lon grid the models run on")
    ap.add_argument(
        "--one-member", action="store_true", help="also time one member per call ('one_member')"
    )
    return ap


def resolve_models(args: argparse.Namespace) -> tuple[dict[str, str], str, str]:
    """({teacher, student} checkpoints, stats dir, store) from --teacher/--student/--stats/--data
    when given, else from the quickstart run --run (the student as the run forecast it)."""
    given = [args.teacher, args.student, args.stats, args.data]
    if any(given):
        if not all(given):
            raise SystemExit("speed.py: --teacher, --student, --stats and --data go together")
        for path in given:
            if "://" not in path and not pathlib.Path(path).exists():
                raise SystemExit(f"speed.py: {path} does not exist")
        return {"teacher": args.teacher, "student": args.student}, args.stats, args.data
    from gencast_rmmd.cli.quickstart_chain import forecast_npz

    ctx, store = resolve_run(args.run)
    # The student as the run forecast it (at the eta tuned on its validation window, if any).
    models = {"teacher": str(ctx.teacher_eval_npz), "student": str(forecast_npz(ctx, "student"))}
    return models, str(ctx.stats_dir), store


def main() -> None:
    args = checkpoint_arguments(run_arguments()).parse_args()
    from gencast_rmmd import runtime

    allocator = runtime.tune_allocator()
    models, stats_dir, store = resolve_models(args)
    from gencast_rmmd.cli.quickstart_chain import measure_step_seconds

    res = measure_step_seconds(
        models, stats_dir, store, args.members, args.repeats, one_member=args.one_member
    )
    out = {
        "benchmark": "speed",
        "device": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "allocator": allocator,
        "members": args.members,
        "repeats": args.repeats,
        "teacher": models["teacher"],
        "student": models["student"],
        **ratios(res),
    }
    if "one_member" in res:
        out["one_member"] = ratios(res["one_member"])
    print(json.dumps(out))


def ratios(res: dict) -> dict:
    """The headline figures of one `measure_step_seconds` group (teacher vs student), with the
    ratios summary.json reports (`speedup*` there, named by what they divide here)."""
    from gencast_rmmd.cli.quickstart_chain import paired_ratio, speed_ratio

    t, s = res["teacher"], res["student"]
    wall = speed_ratio(res, "seconds")
    return {
        "teacher_nfe": t["nfe"],
        "student_nfe": s["nfe"],
        "teacher_step_seconds": t["seconds"],
        "student_step_seconds": s["seconds"],
        "wall_clock_speedup": wall,
        "wall_clock_speedup_median": speed_ratio(res, "median_seconds"),
        "cpu_seconds_speedup_median": speed_ratio(res, "median_cpu_seconds"),
        "wall_clock_speedup_paired": paired_ratio(res),
        "nfe_ratio": speed_ratio(res, "nfe"),
        "overhead_efficiency": wall / speed_ratio(res, "nfe"),
    }


if __name__ == "__main__":
    main()
