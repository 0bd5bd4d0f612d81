"""`gencast-rmmd forecast`: ensemble forecasts from a teacher/student checkpoint into a Zarr store."""

from __future__ import annotations

import argparse
import json

from gencast_rmmd.cli import add_progress_argument


def register(sub) -> None:
    p = sub.add_parser(
        "forecast",
        help="run ensemble forecasts (init times x members) into a WeatherBench 2-schema Zarr store",
        description=(
            "Autoregressive ensemble forecasts. --model is a checkpoint (.npz; a distilled student "
            "when it carries extra:student_sampler_config, else the DPM-Solver++ 2S teacher) or "
            "'persistence[:NOISE]' (baseline). Re-running the same command resumes an interrupted "
            "store. Beam pipeline options go after '--' (with --engine beam)."
        ),
    )
    p.add_argument("--model", required=True, help="checkpoint path, or persistence[:NOISE]")
    p.add_argument(
        "--stats", required=True, help="normalization stats dir (gencast-rmmd data stats)"
    )
    p.add_argument("--data", required=True, help="data store holding the initial conditions")
    p.add_argument(
        "--init-times",
        nargs="+",
        required=True,
        help="ISO init times and/or ranges START/END[/STEP], e.g. 2001-10-01T00/2001-10-05T12/12h",
    )
    p.add_argument("--members", type=int, required=True, help="ensemble size M (>= 1)")
    lead = p.add_mutually_exclusive_group(required=True)
    lead.add_argument("--lead-steps", type=int, default=None, help="number of 12 h steps")
    lead.add_argument(
        "--lead-time", default=None, help="forecast length, a multiple of 12 h (e.g. 240h, 10D)"
    )
    p.add_argument("--out", required=True, help="output Zarr store (created, or resumed)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="run seed; member i of init t uses fold_in(fold_in(seed, t), i)",
    )
    p.add_argument(
        "--member-block", type=int, default=8, help="members per work item / compiled call"
    )
    p.add_argument(
        "--engine", choices=("local", "beam"), default="local", help="plain loop or Beam pipeline"
    )
    p.add_argument(
        "--data-config",
        default=None,
        help="data config whose task the persistence baseline uses (default: embedded; a checkpoint "
        "carries its own task)",
    )
    add_progress_argument(p)
    p.add_argument("beam_args", nargs=argparse.REMAINDER, help="Beam pipeline options after '--'")
    p.set_defaults(func=_run, out_lock="forecast")


def _run(args) -> int:
    from pipelines import cli_beam_args
    from pipelines.forecast import run_forecast

    summary = run_forecast(
        model=args.model,
        stats_dir=args.stats,
        data=args.data,
        out=args.out,
        init_times=args.init_times,
        members=args.members,
        lead_steps=args.lead_steps,
        lead_time=args.lead_time,
        seed=args.seed,
        member_block=args.member_block,
        engine=args.engine,
        beam_args=cli_beam_args(args.beam_args),
        data_config=args.data_config,
        progress=not args.no_progress,
    )
    print(json.dumps(summary))
    return 0
