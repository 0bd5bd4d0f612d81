"""`gencast-rmmd data` sub-commands: nature-run, prepare, stats, validate, cache."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    from gencast_rmmd.cli import add_progress_argument, add_set_argument

    p = sub.add_parser(
        "data",
        help="data: embedded nature run, prepare ERA5 stores, statistics, validation",
        description="Data layer commands (docs/data.md).",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    nr = dsub.add_parser(
        "nature-run",
        help="build the embedded dinosaur Held-Suarez nature run as an ERA5-named Zarr store",
        description="Build the embedded nature run (dinosaur's primitive-equation core with "
        "Held-Suarez forcing) and write it as an ERA5-named Zarr store: the offline data of the "
        "quickstart, which builds it once into its cache (docs/data.md).",
    )
    nr.add_argument("--out", required=True, help="output Zarr path")
    nr.add_argument("--config", default="embedded", help="data config (default: embedded)")
    nr.add_argument("--spinup-days", type=int, default=None, help="days discarded as spin-up")
    nr.add_argument("--days", type=int, default=None, help="days of 12-hourly output")
    nr.add_argument("--seed", type=int, default=None, help="seed of the initial perturbation")
    nr.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_set_argument(nr, "nature_run.truncation=31")
    add_progress_argument(nr)
    nr.set_defaults(func=_nature_run, out_lock="data nature-run")

    pr = dsub.add_parser(
        "prepare",
        help="source (ARCO-ERA5, Zarr/NetCDF, embedded) -> canonical training Zarr (Beam)",
        description="Beam pipeline options go after '--' (e.g. -- --runner=DataflowRunner ...).",
    )
    pr.add_argument("--source", default=None, help="store path/URL (default: the config's source)")
    pr.add_argument("--config", required=True, help="data config (path or name in configs/data)")
    pr.add_argument("--out", required=True, help="output Zarr path (re-run to resume)")
    pr.add_argument("--steps-per-item", type=int, default=8, help="time steps per Beam work item")
    pr.add_argument("--overwrite", action="store_true", help="replace a foreign existing output")
    add_set_argument(pr, "time_start=2016-01-01")
    pr.add_argument("beam_args", nargs=argparse.REMAINDER, help="Beam pipeline options after '--'")
    pr.set_defaults(func=_prepare, out_lock="data prepare")

    st = dsub.add_parser(
        "stats",
        help="mean/stddev/diffs-stddev/min by level (GenCast's four stats files, Beam)",
        description="Beam pipeline options go after '--'.",
    )
    st.add_argument("--data", required=True, help="canonical Zarr store")
    st.add_argument("--out", required=True, help="output directory for the four NetCDF files")
    st.add_argument("--step-hours", type=int, default=12, help="difference step (default 12 h)")
    st.add_argument("--block", type=int, default=32, help="time steps per Beam work item")
    st.add_argument("beam_args", nargs=argparse.REMAINDER, help="Beam pipeline options after '--'")
    st.set_defaults(func=_stats, out_lock="data stats")

    va = dsub.add_parser(
        "validate",
        help="check a store against a task config",
        description="Check a store against a data config's task: variables, levels, dims, grid, "
        "time axis, dtypes, NaN/Inf, an unfinished `data prepare`; every problem is listed with "
        "what was expected and found (exit status 2). A valid store is described: its times, its "
        "training examples in total and by split; a split with no example, or a time_start/"
        "time_stop the store does not reach, is a note on stderr, not a problem.",
    )
    va.add_argument("--data", required=True, help="store path (Zarr or NetCDF)")
    va.add_argument("--config", required=True, help="data config (path or name in configs/data)")
    va.add_argument(
        "--no-values", action="store_true", help="skip the NaN/Inf scan (schema checks only)"
    )
    add_set_argument(va, "time_stop=2019-12-31")
    va.set_defaults(func=_validate)

    ca = dsub.add_parser(
        "cache",
        help="list the local caches (nature runs, example copies, copies of URLs); --prune",
        description="Lists what the local caches hold and which entries are stale (docs/data.md, "
        "'Local caches'); --prune deletes the stale ones.",
    )
    ca.add_argument("--prune", action="store_true", help="delete the stale entries")
    ca.add_argument("--json", action="store_true", help="print the entries as JSON")
    ca.set_defaults(func=_cache)


def _nature_run(args) -> int:
    import dataclasses

    from gencast_rmmd.config import seed_problem
    from gencast_rmmd.data import nature_run
    from gencast_rmmd.data.config import load_data_config
    from gencast_rmmd.errors import ConfigError

    cfg = load_data_config(args.config, args.overrides)
    nr = cfg.nature_run
    changes = {
        k: v
        for k, v in (
            ("spinup_days", args.spinup_days),
            ("days", args.days),
            ("seed", args.seed),
        )
        if v is not None
    }
    if changes:
        nr = dataclasses.replace(nr, **changes)
        try:
            nr.validate()
        except ValueError as e:
            raise ConfigError(f"data nature-run: {e}") from None
        if args.seed is not None and (problem := seed_problem(args.seed)):
            raise ConfigError(f"data nature-run: --seed: {problem}")
    summary = nature_run.build(
        args.out,
        nr,
        cfg.task.pressure_levels,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(json.dumps(summary))
    return 0


def _prepare(args) -> int:
    from gencast_rmmd.data.config import load_data_config
    from pipelines import cli_beam_args
    from pipelines.prepare import prepare

    _require_positive(args, "steps_per_item")
    cfg = load_data_config(args.config, args.overrides)
    source = args.source or cfg.source
    beam_args = cli_beam_args(args.beam_args)
    summary = prepare(
        source,
        cfg,
        args.out,
        beam_args=beam_args,
        steps_per_item=args.steps_per_item,
        overwrite=args.overwrite,
    )
    print(json.dumps(summary))
    return 0


def _stats(args) -> int:
    from gencast_rmmd.data.stats import STATS_FILES
    from pipelines import cli_beam_args
    from pipelines.stats import compute_stats_beam

    _require_positive(args, "step_hours", "block")
    beam_args = cli_beam_args(args.beam_args)
    compute_stats_beam(
        args.data, args.out, step_hours=args.step_hours, block=args.block, beam_args=beam_args
    )
    print(json.dumps({"out": args.out, "files": list(STATS_FILES.values())}))
    return 0


def _require_positive(args, *names: str) -> None:
    """ConfigError naming the first option among `names` that is not >= 1."""
    from gencast_rmmd.errors import ConfigError

    for name in names:
        value = getattr(args, name)
        if value < 1:
            option = "--" + name.replace("_", "-")
            raise ConfigError(f"{option}: expected an integer >= 1, found {value}")


def _validate(args) -> int:
    from gencast_rmmd.data.config import load_data_config
    from gencast_rmmd.data.validate import validate_store

    cfg = load_data_config(args.config, args.overrides)
    info, notes = validate_store(
        args.data,
        cfg.task,
        check_values=not args.no_values,
        splits=cfg.splits,
        window=(cfg.time_start, cfg.time_stop),
    )
    splits = ", ".join(f"{k} {n}" for k, n in info["splits"].items())
    if info["times"]:
        print(
            f"store {args.data}: no problem for task {args.config!r}; {info['times']} times "
            f"{info['first']} .. {info['last']}, {info['examples']} examples"
            + (f" (by split: {splits})" if splits else "")
        )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps({"data": args.data, "config": args.config, "problems": 0, **info}))
    return 0


def _cache(args) -> int:
    from gencast_rmmd.data import caches

    entries = caches.cache_entries()
    freed = caches.prune(entries) if args.prune else 0
    if args.json:
        print(
            json.dumps(
                {
                    "roots": {k: str(v) for k, v in caches.cache_roots().items()},
                    "entries": [
                        dict(vars(e), path=str(e.path), removed=args.prune and e.stale is not None)
                        for e in entries
                    ],
                    "freed_bytes": freed,
                },
                indent=1,
            )
        )
        return 0
    for kind, root in caches.cache_roots().items():
        print(f"{kind} cache: {root}")
    rows = [(e.kind, _size(e.bytes), e.stale or "current", e.source, str(e.path)) for e in entries]
    if rows:
        head = ("kind", "size", "state", "copy of", "path")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        for r in [head, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    total = sum(e.bytes for e in entries)
    stale = sum(e.bytes for e in entries if e.stale is not None)
    n_stale = sum(e.stale is not None for e in entries)
    print(f"{len(entries)} entries, {_size(total)}; {n_stale} stale, {_size(stale)}", end="")
    if args.prune:
        print(f": deleted, {_size(freed)} freed")
    else:
        print(" (gencast-rmmd data cache --prune deletes them)" if n_stale else "")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError
