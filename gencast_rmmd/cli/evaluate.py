"""`gencast-rmmd evaluate`: score an ensemble forecast store against ERA5-schema truth."""

from __future__ import annotations

import argparse
import json

from gencast_rmmd.cli import add_progress_argument


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score ensemble forecasts: fair CRPS / RMSE / spread-skill scorecards, rank histograms, report",
        description=(
            "Score a forecast store (WeatherBench 2 schema) against a truth store aligned by valid "
            "time = init + lead. Writes scorecard.nc, scorecard.csv, rank_histograms.nc, PNG plots "
            "and report.html to --out. Beam pipeline options go after '--' (e.g. -- --runner=DataflowRunner ...)."
        ),
    )
    p.add_argument("--forecast", required=True, help="forecast Zarr store")
    p.add_argument("--truth", required=True, help="truth store (Zarr or netCDF) in ERA5 names")
    p.add_argument(
        "--out",
        required=True,
        help="output directory (created; replaced if it holds a previous evaluation)",
    )
    p.add_argument(
        "--baseline", default=None, help="baseline forecast store for a relative scorecard"
    )
    p.add_argument(
        "--ensemble-dim",
        default="realization",
        help="name of the forecast's member dim: realization (ours, WB2), sample (GenCast), number (ECMWF)",
    )
    p.add_argument(
        "--variables", nargs="+", default=None, help="variables to score (default: all in common)"
    )
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="score init times whose valid times fall in the model's training period (flagged in the report)",
    )
    p.add_argument(
        "--engine", choices=("beam", "memory"), default="beam", help="Beam pipeline or plain loop"
    )
    p.add_argument("--lead-chunk", type=int, default=1, help="lead times per work item (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the rank-histogram tie-breaking")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--work-dir",
        default=None,
        help="URL the Beam workers write their statistics to (default: the pipeline's "
        "--temp_location when it is a URL, e.g. on Dataflow; else a local directory)",
    )
    add_progress_argument(p)
    p.add_argument("beam_args", nargs=argparse.REMAINDER, help="Beam pipeline options after '--'")
    p.set_defaults(func=_run, out_lock="evaluate")


def _run(args) -> int:
    from pipelines import cli_beam_args
    from pipelines.evaluate import evaluate

    beam_args = cli_beam_args(args.beam_args)
    res = evaluate(
        forecast_path=args.forecast,
        truth_path=args.truth,
        out_dir=args.out,
        baseline_path=args.baseline,
        ensemble_dim=args.ensemble_dim,
        variables=args.variables,
        allow_overlap=args.allow_overlap,
        engine=args.engine,
        beam_args=beam_args,
        seed=args.seed,
        lead_chunk=args.lead_chunk,
        plots=not args.no_plots,
        work_dir=args.work_dir,
        progress=not args.no_progress,
    )
    print(json.dumps({"out": res.out_dir, "summary": res.summary}, default=str))
    return 0
