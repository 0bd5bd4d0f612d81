"""`gencast-rmmd quickstart`: the whole chain on the embedded default, with a report.

See `gencast_rmmd/cli/quickstart_chain.py` for the stages and `configs/quickstart/` for the
profiles.
"""

from __future__ import annotations

import argparse

from gencast_rmmd.cli import add_progress_argument, add_set_argument


def register(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole chain on the embedded nature run: teacher, RMMD student, scorecard, report",
        description=(
            "Nature run (cached) -> statistics -> tiny GenCast teacher -> phase 1 MMD -> phase 2 "
            "RMMD -> teacher and student ensemble forecasts on held-out init times -> scorecard "
            "with the teacher as baseline -> DIR/report.html and DIR/summary.json. Each stage "
            "skips itself when its output is complete, so re-running resumes."
        ),
    )
    p.add_argument("--out", required=True, help="output directory (created; resumable)")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--profile",
        default=None,
        help="size profile: default (make demo, ~15 min), fast (~3 min), result (make result), "
        "or a YAML path",
    )
    size.add_argument("--fast", action="store_true", help="same as --profile fast")
    p.add_argument("--data", default=None, help="run on this ERA5-schema store instead")
    p.add_argument(
        "--data-config", default=None, help="data config of --data (task, splits; configs/data/)"
    )
    add_progress_argument(p)
    add_set_argument(p, "teacher_learning_rate=1e-4")
    p.set_defaults(func=_run, out_lock="quickstart")


def _run(args: argparse.Namespace) -> int:
    from gencast_rmmd.cli import quickstart_chain as chain
    from gencast_rmmd.errors import ConfigError
    from gencast_rmmd.remote import check_local_out_dir

    if bool(args.data) != bool(args.data_config):
        raise ConfigError("--data and --data-config go together (the store and its task)")
    profile = "fast" if args.fast else (args.profile or "default")
    cfg = chain.load_profile(profile, args.overrides)
    ctx = chain.Context(
        out=check_local_out_dir(args.out, "a directory for the run", "quickstart"),
        cfg=cfg,
        data_store=args.data,
        data_config_path=args.data_config,
        progress=not args.no_progress,
    )
    summary = chain.run_chain(ctx)
    chain.print_summary(summary, ctx.out)
    return 0
