"""Memory of the image path's training steps against gradient accumulation; prints one JSON object.

For a config (default `imagenet64`, the U-ViT of 64x64 ImageNet at its batch of 256), each
step is compiled, never run, from abstract arguments (`jax.eval_shape`: nothing is allocated),
and XLA's memory analysis of the compiled program is read: `temp` (activations and scratch),
`arguments` and `outputs` in GB. Measured for the teacher's step, the phase-1 MMD step of
each update rule (`mmd.update_schedule`) and the phase-2 RMMD step (on-policy, the `bw` reward;
the classifier reward adds a small CNN), at `grad_accum_steps` 1, 2, 4, 8 (`--accum`), each
batch fixed at the config's. The figures are for the backend it runs on (XLA CPU here; an
accelerator's scheduler differs), so run it on the machine that will train.

Usage: python benchmarks/image_memory.py [--config imagenet64] [--accum 1 2 4 8]
       [--stages teacher mmd finetune] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GB = 1e9
STAGES = ("teacher", "mmd", "finetune")


def _analysis(jitted, *args) -> dict:
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    out = {"compile_s": round(seconds, 1)}
    if m is None:  # a backend without the analysis
        return out
    for name in ("temp", "argument", "output", "alias"):
        v = getattr(m, f"{name}_size_in_bytes", None)
        if v is not None:
            out[f"{name}_gb"] = round(v / GB, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="imagenet64")
    ap.add_argument("--accum", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from gencast_rmmd.config import load_config
    from gencast_rmmd.errors import ConfigError
    from gencast_rmmd.image import finetune, training
    from gencast_rmmd.image.config import ImageConfig
    from gencast_rmmd.image.model import build_model
    from gencast_rmmd.image.rewards import bw_reward

    try:
        cfg = load_config(ImageConfig, args.config, args.set, kind="image")
    except ConfigError as e:  # the images are never read (only their shape): any path will do
        if "needs data.path" not in str(e):
            raise
        cfg = load_config(
            ImageConfig, args.config, [*args.set, "data.path=unread.npz"], kind="image"
        )
    shape = (cfg.data.resolution, cfg.data.resolution, cfg.data.channels)
    model = build_model(cfg.model, cfg.schedule, shape, cfg.data.num_classes)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    n_params = sum(int(x.size) for x in jax.tree.leaves(params))
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    result = {
        "config": args.config,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "parameters": n_params,
        "image_shape": list(shape),
        "steps": [],
    }

    def batch(size: int, accum: int, dropout: bool) -> dict:  # as DataParallel.batch lays it out
        return {
            "images": jax.ShapeDtypeStruct((accum, size // accum, *shape), jnp.float32),
            "labels": jax.ShapeDtypeStruct((accum, size // accum), jnp.int32),
            "dropout": key if dropout else None,
        }

    for accum in args.accum:
        if "teacher" in args.stages:
            tcfg = dataclasses.replace(cfg.teacher, grad_accum_steps=accum)
            tcfg.validate()
            opt = training.make_optimizer(tcfg.optim, tcfg.steps)
            step = training.teacher_step(tcfg, model, opt)
            opt_state = jax.eval_shape(opt.init, params)
            row = _analysis(
                step, params, params, opt_state, batch(tcfg.batch_size, accum, False), key
            )
            result["steps"].append(
                {
                    "stage": "teacher",
                    "batch_size": tcfg.batch_size,
                    "grad_accum_steps": accum,
                    **row,
                }
            )
            print(json.dumps(result["steps"][-1]), file=sys.stderr)
        if "mmd" in args.stages:
            mcfg = dataclasses.replace(cfg.mmd, grad_accum_steps=accum)
            mcfg.validate()
            ocfg = training.mmd_objective_config(mcfg)
            objective = training.image_objective(model, mcfg.sampler, ocfg)
            init, step = training.make_distill_step(
                objective, ocfg, training.mmd_optimizers(mcfg, mcfg.steps)
            )
            trainable = {"student": params, "aux": params}
            opt_state = jax.eval_shape(init, trainable)
            b = batch(mcfg.batch_size, accum, mcfg.dropout)
            for name, jitted in step.rules.items():
                row = _analysis(jitted, trainable, {"teacher": params}, opt_state, b, key)
                result["steps"].append(
                    {"stage": f"mmd/{name}", "batch_size": mcfg.batch_size,
                     "grad_accum_steps": accum, **row}
                )  # fmt: skip
                print(json.dumps(result["steps"][-1]), file=sys.stderr)
        if "finetune" in args.stages:
            fcfg = dataclasses.replace(cfg.finetune, grad_accum_steps=accum)
            fcfg.validate()
            start = finetune.StartPoint(params, params, cfg.mmd.sampler, cfg.mmd.s_floor)
            opt = training.make_optimizer(fcfg.optim, fcfg.steps)
            step = finetune._rmmd_step(model, start, fcfg, (bw_reward,), opt)
            trainable = {"student": params, "aux": params}
            frozen = {"teacher": params, "student_frozen": params, "aux_frozen": params}
            b = batch(fcfg.batch_size, accum, fcfg.dropout)
            row = _analysis(
                step, trainable, frozen, jax.eval_shape(opt.init, trainable), b, key,
                jnp.float32(1.0), jnp.int32(0),
            )  # fmt: skip
            result["steps"].append(
                {"stage": "finetune/rmmd", "batch_size": fcfg.batch_size,
                 "grad_accum_steps": accum, **row}
            )  # fmt: skip
            print(json.dumps(result["steps"][-1]), file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
