"""`gencast-rmmd teacher train | export | info`: train a GenCast teacher, export it, describe a .npz."""

from __future__ import annotations

import argparse
import json

from gencast_rmmd.cli import add_progress_argument, add_set_argument


def register(sub) -> None:
    p = sub.add_parser(
        "teacher",
        help="train a GenCast teacher, export it as an official .npz, describe checkpoints",
        description="GenCast teacher: train | export | info (see docs/teacher.md).",
    )
    tsub = p.add_subparsers(dest="teacher_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    t = tsub.add_parser(
        "train",
        help="train (or resume) a teacher with GenCast's denoising loss",
        description=(
            "Train a GenCast denoiser on a canonical store. Resumes from the latest checkpoint "
            "when --out holds the same run. Writes run.json, checkpoints/, metrics.jsonl and, at "
            "the end, teacher.npz (official GenCast layout)."
        ),
    )
    t.add_argument("--config", required=True, help="model config (path or name in configs/model/)")
    t.add_argument("--data", required=True, help="canonical Zarr store")
    t.add_argument("--stats", required=True, help="statistics directory")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument(
        "--task",
        help="data config (path or name in configs/data/) giving the task and splits; default: "
        "the store's `gencast_rmmd_task` attribute, or configs/data/embedded.yaml for the "
        "embedded nature run",
    )
    t.add_argument(
        "--split",
        default=None,
        help="training split of the data config (default: 'train' if the config has one)",
    )
    t.add_argument("--steps", type=int, help="number of optimizer steps (training.num_steps)")
    t.add_argument("--batch-size", type=int, help="global batch size (training.batch_size)")
    t.add_argument("--grad-accum", type=int, help="gradient accumulation micro-steps")
    t.add_argument("--lr", type=float, help="peak learning rate (training.optimizer.learning_rate)")
    t.add_argument("--seed", type=int, help="seed of init, data order and noise")
    add_progress_argument(t)
    add_set_argument(t, "training.optimizer.learning_rate=1e-4")
    t.set_defaults(func=_train, out_lock="teacher train", distributed=True)

    e = tsub.add_parser(
        "export",
        help="write a trained teacher as an official GenCast .npz",
        description="Export the latest (or --step) checkpoint of a teacher run to the official "
        "GenCast .npz layout, with extra:provenance (data, training period).",
    )
    e.add_argument("--run", required=True, help="teacher run directory (from `teacher train`)")
    e.add_argument("--out", required=True, help="output .npz path")
    e.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    e.add_argument("--license", default=None, help="license string stored in the file")
    e.add_argument("--description", default=None, help="description stored in the file")
    e.set_defaults(func=_export)

    i = tsub.add_parser(
        "info",
        help="describe a GenCast .npz (official or ours)",
        description="Print description, license, task, architecture, sampler and parameter count.",
    )
    i.add_argument("file", help="checkpoint .npz")
    i.set_defaults(func=_info)


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    model, training = [], []
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        if key.startswith("training."):
            training.append(o.split("training.", 1)[1])
        elif key.startswith("model."):
            model.append(o.split("model.", 1)[1])
        else:
            model.append(o)
    return model, training


def _describe_overrides(model, overrides: list[str]):
    """`model` with its overrides named in the description (which exported checkpoints and
    `teacher info` show): the YAML's text describes the file, not the `--set` changes. An
    explicit `--set description=...` is kept as given."""
    import dataclasses

    from gencast_rmmd.config import parse_override

    parsed = [parse_override(o) for o in overrides]
    if not parsed or any(parts == ["description"] for parts, _ in parsed):
        return model
    short = ", ".join(f"{parts[-1]}={value}" for parts, value in parsed)
    return dataclasses.replace(model, description=f"{model.description}; overridden: {short}")


def _resolve_task(args):
    """(TaskConfig, (train_start, train_end) or (None, None)) from --task / store attrs."""
    from gencast_rmmd.config import (
        from_dict,
        load_config,
        load_yaml,
        load_yaml_file,
        resolve_config_path,
    )
    from gencast_rmmd.data import nature_run
    from gencast_rmmd.data.config import DataConfig
    from gencast_rmmd.data.era5 import open_store
    from gencast_rmmd.data.task import TaskConfig
    from gencast_rmmd.errors import ConfigError

    data_cfg = None
    if args.task:
        path = resolve_config_path(args.task, kind="data")
        raw = load_yaml_file(path) or {}
        if isinstance(raw, dict) and set(raw) <= {"task", "splits"}:
            task = from_dict(TaskConfig, raw.get("task") or {}, f"{path}:task")
            splits = raw.get("splits") or {}
        else:
            data_cfg = load_config(DataConfig, path, kind="data")
            task, splits = data_cfg.task, data_cfg.splits
    else:
        with open_store(args.data, chunks=None, trim_to_valid_range=False) as ds:
            attrs = dict(ds.attrs)
        if "gencast_rmmd_task" in attrs:
            task = from_dict(
                TaskConfig, load_yaml(attrs["gencast_rmmd_task"]), f"{args.data}:attrs"
            )
            splits = {}
        elif nature_run.CONFIG_ATTR in attrs:
            data_cfg = load_config(DataConfig, "embedded", kind="data")
            task, splits = data_cfg.task, data_cfg.splits
        else:
            raise ConfigError(
                f"cannot tell the task of store {args.data!r}: it has no 'gencast_rmmd_task' "
                "attribute; pass --task with a data config (e.g. configs/data/gencast_1p0deg.yaml)"
            )
    window = (None, None)
    split = args.split or ("train" if "train" in splits else None)
    if split is not None:
        if split not in splits:
            raise ConfigError(f"--split {split!r}: the data config has splits {sorted(splits)}")
        window = tuple(splits[split])
    return task, window


def model_config(config: str, overrides: list[str]):
    """The `ModelConfig` that `teacher train --config CONFIG --set ...` builds: the file with the
    overrides that are not `training.*`; `ConfigError` naming the file and key otherwise."""
    from gencast_rmmd.config import load_config
    from gencast_rmmd.model.configs import ModelConfig

    model_over = _split_overrides(overrides)[0]
    return _describe_overrides(
        load_config(ModelConfig, config, model_over, kind="model"), model_over
    )


def training_config(overrides: list[str], window=(None, None), **flags):
    """The `TeacherTrainingConfig` that `teacher train` builds: the defaults, the training
    `window` (start, end), the flags (`steps`, `batch_size`, `grad_accum`, `seed`, `lr`; None:
    not given) and the `training.*` overrides; `ConfigError` naming the key otherwise."""
    from gencast_rmmd.config import from_dict, to_dict
    from gencast_rmmd.training.teacher import TeacherTrainingConfig

    base = to_dict(TeacherTrainingConfig())
    if window[0] is not None:
        base["train_start"], base["train_end"] = window
    keys = {"steps": "num_steps", "grad_accum": "grad_accum_steps"}  # others: the field's name
    for flag, v in flags.items():
        if v is None:
            continue
        if flag == "lr":
            base["optimizer"]["learning_rate"] = v
        else:
            base[keys.get(flag, flag)] = v
    return from_dict(
        TeacherTrainingConfig,
        base,
        "teacher training settings (its flags and --set training.*)",
        _split_overrides(overrides)[1],
        shown_prefix="training.",
    )


def _train(args: argparse.Namespace) -> int:
    from gencast_rmmd.training import sharding
    from gencast_rmmd.training.teacher import train_teacher

    sharding.maybe_initialize_distributed()
    model = model_config(args.config, args.overrides)
    flags = dict(
        steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, seed=args.seed,
        lr=args.lr,
    )  # fmt: skip
    training_config(args.overrides, **flags)  # a bad flag or key is said before the store is read
    task, window = _resolve_task(args)
    training = training_config(args.overrides, window, **flags)
    summary = train_teacher(
        model,
        task,
        args.data,
        args.stats,
        args.out,
        training,
        progress=not args.no_progress,
        model_source=str(args.config),
    )
    if summary["steps"] == 0:
        loss = "n/a (num_steps=0: the exported weights are the untrained initialisation)"
    elif summary["loss"] is None:
        loss = "n/a (already complete)"
    else:
        loss = f"{summary['loss']:.4g}"
    rate = summary["steps_per_sec"]
    rate = f"{rate:.2f} steps/s" if rate else "no new steps"
    print(
        f"teacher: {summary['steps']} steps, loss {loss}, {summary['num_params']:,} parameters, "
        f"{rate}; run {summary['run_dir']}; exported {summary['export']}"
    )
    print(json.dumps(summary))
    return 0


def _export(args: argparse.Namespace) -> int:
    from gencast_rmmd.training.teacher import DEFAULT_LICENSE, export_teacher

    path = export_teacher(
        args.run,
        args.out,
        step=args.step,
        license=args.license if args.license is not None else DEFAULT_LICENSE,
        description=args.description,
    )
    print(f"teacher exported to {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from gencast_rmmd.training.teacher import describe_checkpoint

    # A local path or a URL (the official weights on GCS, fetched once into the cache); a missing
    # one is a CheckpointError naming it (`model.checkpoint.load_checkpoint`).
    print(describe_checkpoint(args.file))
    return 0
