"""`gencast-rmmd distill`: phase 1 MMD and phase 2 RMMD of a GenCast teacher (docs/distill.md)."""

from __future__ import annotations

import argparse
import json

from gencast_rmmd.cli import add_progress_argument, add_set_argument


def register(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a GenCast teacher into a K-step student (MMD, then RMMD with a CRPS reward)",
        description=(
            "Distil a teacher (official GenCast .npz, or a `teacher train` run directory) into a "
            "K-step student: phase 1 moment matching (mmd), phase 2 rewarded moment matching "
            "(rmmd). Resumes from the run directory's checkpoints. Writes OUT/<phase>/student.npz "
            "(official layout + extra:student_sampler_config, extra:provenance), metrics.jsonl "
            "and OUT/summary.json."
        ),
    )
    p.add_argument(
        "--config",
        default="rmmd_gencast",
        help="distill config (path or name in configs/distill/; default rmmd_gencast)",
    )
    p.add_argument("--teacher", required=True, help="teacher .npz or teacher run directory")
    p.add_argument("--data", required=True, help="canonical Zarr store")
    p.add_argument("--stats", required=True, help="statistics directory")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument(
        "--phase",
        choices=("mmd", "rmmd", "both"),
        default="both",
        help="mmd = phase 1, rmmd = phase 2 (needs phase 1 in OUT), both (default)",
    )
    add_progress_argument(p)
    add_set_argument(p, "rmmd.optimizer.learning_rate=1e-4")
    p.set_defaults(func=_distill, out_lock="distill", distributed=True)


def _distill(args: argparse.Namespace) -> int:
    from gencast_rmmd.config import load_config
    from gencast_rmmd.distill.gencast import DistillConfig, run_distill
    from gencast_rmmd.training import sharding

    sharding.maybe_initialize_distributed()
    cfg = load_config(DistillConfig, args.config, args.overrides, kind="distill")
    summary = run_distill(
        cfg,
        args.teacher,
        args.data,
        args.stats,
        args.out,
        args.phase,
        progress=not args.no_progress,
    )
    for ph in ("mmd", "rmmd"):
        rec = summary.get(ph)
        if rec:
            m = rec.get("last_metrics") or {}
            loss = f"{m['loss']:.4g}" if "loss" in m else "n/a"
            rate = f"{m['steps_per_sec']:.2f} steps/s" if "steps_per_sec" in m else "no steps"
            if rec["steps"] == 0:
                rate = "num_steps=0: the student is its initialisation, untrained"
            print(
                f"distill {ph}: {rec['steps']} steps, loss {loss}, {rate}; student {rec.get('student')}"
            )
    print(json.dumps(summary, default=str))
    return 0
