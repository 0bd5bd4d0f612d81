"""Where the time of one 12 h ensemble step goes: network calls, noise draws, the rest (JSON).

    python benchmarks/step_breakdown.py [--run runs/quickstart] [--members 8] [--repeats 6]

Loads the teacher and the student of a quickstart run (or `runs/bench-fast`, as
benchmarks/speed.py) and times, side by side in alternating rounds in one process, vmapped over
`--members` and jitted:

- `teacher`, `student`: the 12 h step as the forecast pipeline runs it;
- `teacher_no_noise`, `student_no_noise`: the same step with the noise function returning zeros
  (no spherical-harmonic draws);
- `calls_<n>` for n in {teacher NFE, student NFE}: n denoiser calls in one `fori_loop`, each
  feeding the next (the network alone, inside a loop as in the samplers).

Derived (from the minima): the network cost per call `d` (calls_n / n), each sampler's noise cost
(step - step without noise) and what is left after its calls and draws (`rest`), and the ratios
teacher / student with and without noise next to the NFE ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def build(ckpt_path: str, lat, lon, zero_noise: bool):
    """(step(params, rng, inputs, forcings), den, params, cfg, sample_fn) as the forecast model
    builds it (gencast_rmmd/forecast/model.py), optionally with zero noise."""
    import jax.numpy as jnp

    from gencast_rmmd.distill import student_sampler
    from gencast_rmmd.model import checkpoint as ckpt_lib
    from gencast_rmmd.model import dpm_solver, sh_noise
    from gencast_rmmd.model.denoiser import Conditioning

    ckpt = ckpt_lib.load_checkpoint(ckpt_path)
    tree = (ckpt.extra or {}).get("student_sampler_config")
    if tree:
        cfg = ckpt_lib.config_from_tree(student_sampler.StudentSamplerConfig, tree, "student")
        sample_fn, nfe = student_sampler.sample, student_sampler.num_evaluations(cfg)
    else:
        cfg = ckpt.sampler_config
        sample_fn, nfe = dpm_solver.sample, dpm_solver.num_evaluations(cfg)
    den, params = ckpt_lib.denoiser_from_checkpoint(ckpt, lat, lon, source=ckpt_path)
    noise_fn = sh_noise.make_sh_noise_fn(lat, lon)
    if zero_noise:
        noise_fn = lambda rng, shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    shape = (1, len(lat), len(lon), ckpt.task_config.layout.n_targets)

    def step(params, rng, inputs, forcings):
        cond = Conditioning(inputs[None], forcings[None])
        return sample_fn(den.apply, params, rng, cond, shape, noise_fn, cfg)[0]

    return step, den, params, int(nfe), shape, ckpt.task_config.layout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/quickstart")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    from gencast_rmmd import runtime

    allocator = runtime.tune_allocator()
    import jax
    import jax.numpy as jnp
    import xarray as xr

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from speed import resolve_run

    from gencast_rmmd.cli.quickstart_chain import time_in_rounds
    from gencast_rmmd.model.denoiser import Conditioning

    ctx, store = resolve_run(args.run)
    with xr.open_zarr(store) as ds:
        lat, lon = ds["lat"].values, ds["lon"].values
    m = args.members
    keys = lambda r: jax.random.split(jax.random.PRNGKey(r + 1), m)  # noqa: E731
    calls, nfes = {}, {}
    for name, path in (("teacher", ctx.teacher_eval_npz), ("student", ctx.student_npz)):
        for zero in (False, True):
            step, den, params, nfe, shape, lay = build(str(path), lat, lon, zero)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((m, len(lat), len(lon), lay.n_inputs)).astype(np.float32)
            f = rng.standard_normal((m, len(lat), len(lon), lay.n_forcings)).astype(np.float32)
            fn = jax.jit(jax.vmap(step, in_axes=(None, 0, 0, 0)))
            key = name + ("_no_noise" if zero else "")
            calls[key] = lambda r, fn=fn, p=params, x=x, f=f: fn(p, keys(r), x, f)
            nfes[name] = nfe
            if name == "teacher" and not zero:
                net = (den, params, shape, x, f)
    den, params, shape, x, f = net  # the network alone in a loop, with the teacher's weights
    x0 = np.random.default_rng(1).standard_normal((m,) + shape[1:]).astype(np.float32)
    for n in sorted(set(nfes.values())):

        def loop(params, x0, inputs, forcings, n=n):
            cond = Conditioning(inputs[None], forcings[None])
            sig = jnp.geomspace(80.0, 0.05, n).astype(jnp.float32)

            def body(i, x):
                return den.apply(params, x, sig[i][None], cond)

            return jax.lax.fori_loop(0, n, body, x0[None])[0]

        lfn = jax.jit(jax.vmap(loop, in_axes=(None, 0, 0, 0)))
        calls[f"calls_{n}"] = lambda r, g=lfn, p=params: g(p, x0, x, f)
    for call in calls.values():  # compile and warm up
        jax.block_until_ready(call(-1))
    t = time_in_rounds(calls, args.repeats)
    sec = {k: v["seconds"] for k, v in t.items()}
    nt, ns = nfes["teacher"], nfes["student"]
    d = sec[f"calls_{nt}"] / nt
    out = {
        "benchmark": "step_breakdown",
        "members": m,
        "repeats": args.repeats,
        "allocator": allocator,
        "nfe": nfes,
        "seconds": sec,
        "median_seconds": {k: v["median_seconds"] for k, v in t.items()},
        "network_call_seconds": d,
        f"network_call_seconds_{ns}_in_loop": sec[f"calls_{ns}"] / ns,
    }
    for name, nfe in nfes.items():
        noise = sec[name] - sec[f"{name}_no_noise"]
        out[name] = {
            "calls_seconds": nfe * d,
            "noise_seconds": noise,
            "rest_seconds": sec[name] - nfe * d - noise,
        }
    out["ratio"] = {
        "nfe": nt / ns,
        "step": sec["teacher"] / sec["student"],
        "step_no_noise": sec["teacher_no_noise"] / sec["student_no_noise"],
        "calls_in_loop": sec[f"calls_{nt}"] / sec[f"calls_{ns}"],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
