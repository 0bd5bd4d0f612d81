"""`gencast-rmmd image teacher | distill | pareto --out DIR` (the secondary image path).

- `teacher`: train the reward and evaluation classifiers and the U-ViT teacher, evaluate it.
- `distill`: the above, then phase-1 MMD distillation of a K-step student (K = 8 by default),
  evaluated against the teacher.
- `pareto`: the above, then the lambda sweep of RMMD and the baselines (DRaFT, ReFL, DI++,
  HyperNoise) on each reward, with `DIR/pareto.csv` and `DIR/pareto.png`.

Each stage reuses what an earlier run left in DIR, unless a file it was made from changed. The
default config is the embedded digits (`configs/image/digits.yaml`); `--data PATH.npz` with
`--config imagenet64` trains on downsampled ImageNet. See docs/image.md.
"""

from __future__ import annotations

import json


def register(sub) -> None:
    from gencast_rmmd.cli import add_progress_argument, add_set_argument

    p = sub.add_parser(
        "image",
        help="class-conditional image diffusion: teacher, MMD, RMMD Pareto",
        description="The same method for class-conditional image diffusion: each stage runs "
        "the ones before it that are not done, in one run directory (docs/image.md).",
    )
    isub = p.add_subparsers(dest="image_command", metavar="STAGE")
    helps = {
        "teacher": "train the classifiers and the U-ViT teacher; evaluate teacher samples",
        "distill": "teacher, then phase-1 MMD distillation of the K-step student",
        "pareto": "distill, then the RMMD / DRaFT / ReFL / DI++ / HyperNoise lambda sweep and "
        "Pareto plot",
    }
    for name, text in helps.items():
        q = isub.add_parser(name, help=text, description=text)
        q.add_argument("--out", required=True, help="run directory (created; stages resume)")
        q.add_argument(
            "--config", default="digits", help="image config name or path (default: digits)"
        )
        q.add_argument("--data", default=None, help="downsampled-ImageNet .npz (sets data.path)")
        add_progress_argument(q)
        add_set_argument(q, "mmd.optim.learning_rate=1e-4")
        q.set_defaults(func=_run, stage=name, out_lock=f"image {name}")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _run(args) -> int:
    from gencast_rmmd.config import load_config
    from gencast_rmmd.image import pipeline
    from gencast_rmmd.image.config import ImageConfig

    overrides = list(args.overrides)
    if args.data:
        overrides += ["data.source=npz", f"data.path={args.data}"]
    cfg = load_config(ImageConfig, args.config, overrides, kind="image")
    ctx = pipeline.make_context(cfg, args.out, progress=not args.no_progress, command=args.stage)
    if args.stage == "teacher":
        pipeline.stage_teacher(ctx)
        print(json.dumps(json.loads((ctx.out / "teacher_eval.json").read_text())))
    elif args.stage == "distill":
        print(json.dumps(pipeline.stage_distill(ctx)))
    else:
        s = pipeline.stage_pareto(ctx)
        print(
            json.dumps(
                {
                    "rewards_where_rmmd_dominates_draft_and_refl": s[
                        "rewards_where_rmmd_dominates_draft_and_refl"
                    ],
                    "csv": str(ctx.out / "pareto.csv"),
                    "plot": str(ctx.out / "pareto.png"),
                }
            )
        )
    return 0
