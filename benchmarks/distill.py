"""Distillation speed; prints one JSON object.

- training steps/s of phase 1 (MMD, alternating: mean over aux and student steps) and phase 2
  (RMMD, on-policy continuous, M = 2 members, simultaneous aux+student update) with the tiny
  GenCast (configs/model/tiny.yaml) on the embedded 32 x 64 grid and task, random weights and
  random normalized batches (speed does not depend on the values);
- one 12 h forecast step: the K-step student (8 evaluations) vs the teacher's DPM-Solver++ 2S
  with 20 noise levels (39 evaluations, GenCast's sampler) and 30 levels (59, RMMD's teacher),
  same process, same weights; the wall-clock ratio teacher/student and the NFE ratio.

Usage: python benchmarks/distill.py [--batch 2] [--repeats 3] [--config tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _time(fn, repeats):
    fn()  # compile / warm up
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t0)
    return min(best)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="tiny", help="model config (configs/model/)")
    ap.add_argument("--batch", type=int, default=2, help="conditionings per training step")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=4, help="timed training steps per phase")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from gencast_rmmd.config import load_config
    from gencast_rmmd.data.config import load_data_config
    from gencast_rmmd.distill import student_sampler as ss
    from gencast_rmmd.distill.gencast import DistillConfig, gencast_weights
    from gencast_rmmd.distill.trainer import build_phase_trainer
    from gencast_rmmd.model import dpm_solver, sh_noise
    from gencast_rmmd.model.configs import ModelConfig
    from gencast_rmmd.model.denoiser import Conditioning, build_denoiser

    model = load_config(ModelConfig, args.config, kind="model")
    task = load_data_config("embedded").task
    lay = task.layout
    lat = -87.1875 + 5.625 * np.arange(32)
    lon = 5.625 * np.arange(64)
    den = build_denoiser(
        model.denoiser_architecture_config, task, lat, lon, model.noise_encoder_config
    )
    params = jax.jit(den.init)(jax.random.key(0), *den.example_inputs(1))
    noise_fn = sh_noise.make_sh_noise_fn(lat, lon)
    dcfg = load_config(DistillConfig, "tiny", kind="distill")
    weights = jnp.asarray(gencast_weights(dcfg.weights, lat, lay))
    rng = np.random.default_rng(0)
    b = args.batch

    def batch(step):
        r = np.random.default_rng(step)
        return {
            "inputs": r.normal(size=(b, 32, 64, lay.n_inputs)).astype(np.float32),
            "forcings": r.normal(size=(b, 32, 64, lay.n_forcings)).astype(np.float32),
            "targets": r.normal(size=(b, 32, 64, lay.n_targets)).astype(np.float32),
        }

    out: dict = {
        "device": str(jax.devices()[0].platform),
        "devices": jax.device_count(),
        "model": args.config,
        "grid": [32, 64],
        "channels_out": lay.n_targets,
        "batch": b,
    }
    for phase in ("mmd", "rmmd"):
        pcfg = getattr(dcfg, phase)
        pcfg = dataclasses.replace(
            pcfg,
            loop=dataclasses.replace(
                pcfg.loop, num_steps=10**6, batch_size=b, grad_accum_steps=1, progress=False
            ),
        )
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_phase_trainer(
                pcfg,
                dcfg.student_sampler,
                tmp,
                denoise_fn=den.apply,
                noise_fn=noise_fn,
                target_fn=lambda bt: bt["targets"],
                cond_fn=lambda bt: Conditioning(bt["inputs"], bt["forcings"]),
                weights=weights,
            )
            groups = pcfg.objective.trainable_groups()
            state = trainer.init_state({g: params for g in groups})
            frozen = {g: params for g in pcfg.objective.required_groups() if g not in groups}
            frozen = jax.tree.map(jnp.asarray, frozen)
            # compile every rule once
            for step in range(2):
                state, m = trainer.train_step(state, frozen, batch(step), trainer.schedule(step))
            jax.block_until_ready(m["loss"])
            t0 = time.perf_counter()
            for step in range(2, 2 + args.train_steps):
                state, m = trainer.train_step(state, frozen, batch(step), trainer.schedule(step))
            jax.block_until_ready(m["loss"])
            dt = time.perf_counter() - t0
            out[f"{phase}_steps_per_sec"] = args.train_steps / dt
            out[f"{phase}_examples_per_sec"] = args.train_steps * b / dt
            trainer.ckpt.close()

    # One 12 h step (a single member).
    x, sigma, cond = den.example_inputs(1)
    shape = x.shape
    student_cfg = dcfg.student_sampler
    stu = jax.jit(lambda r: ss.sample(den.apply, params, r, cond, shape, noise_fn, student_cfg))
    t_stu = _time(lambda: jax.block_until_ready(stu(jax.random.PRNGKey(1))), args.repeats)
    out["student_nfe"] = ss.num_evaluations(student_cfg)
    out["student_step_seconds"] = t_stu
    for levels in (20, 30):
        tcfg = dataclasses.replace(model.sampler_config, num_noise_levels=levels)
        tea = jax.jit(
            lambda r, tcfg=tcfg: dpm_solver.sample(
                den.apply, params, r, cond, shape, noise_fn, tcfg
            )
        )
        t_tea = _time(
            lambda tea=tea: jax.block_until_ready(tea(jax.random.PRNGKey(1))), args.repeats
        )
        nfe = dpm_solver.num_evaluations(tcfg)
        out[f"teacher{levels}_nfe"] = nfe
        out[f"teacher{levels}_step_seconds"] = t_tea
        out[f"teacher{levels}_over_student_wallclock"] = t_tea / t_stu
        out[f"teacher{levels}_over_student_nfe"] = nfe / out["student_nfe"]
    _ = rng
    print(json.dumps(out))


if __name__ == "__main__":
    main()
