"""Where the time of one 12 h ensemble step goes: network calls, noise draws, the rest (JSON).

    python benchmarks/step_breakdown.py [--run runs/quickstart] [--members 8] [--repeats 6]

Loads the teacher and the student of a quickstart run (or `runs/bench-fast`, as
benchmarks/speed.py) and times, side by side in alternating rounds in one process, vmapped over
`--members` and jitted:

- `teacher`, `student`: the 12 h step as the forecast pipeline runs it
  (`gencast_rmmd.forecast.model.checkpoint_step`);
- `teacher_no_noise`, `student_no_noise`: the same step with the noise function returning zeros
  (no spherical-harmonic draws);
- `calls_<n>` for n in {teacher NFE, student NFE}: n denoiser calls in one `fori_loop`, each
  feeding the next (the network alone, inside a loop as in the samplers; the teacher's weights).

Derived (from the minima): the network cost per call `d` (calls_n / n), each sampler's noise cost
(step - step without noise) and what is left after its calls and draws (`rest`), and the ratios
teacher / student with and without noise next to the NFE ratio.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from speed import resolve_run, run_arguments

    args = run_arguments(members=8, repeats=6).parse_args()
    from gencast_rmmd import runtime

    allocator = runtime.tune_allocator()
    import jax
    import jax.numpy as jnp

    from gencast_rmmd.cli.quickstart_chain import forecast_npz, time_in_rounds
    from gencast_rmmd.data.era5 import open_zarr_quiet
    from gencast_rmmd.forecast.model import checkpoint_sampler, checkpoint_step
    from gencast_rmmd.model import checkpoint as ckpt_lib
    from gencast_rmmd.model.denoiser import Conditioning

    ctx, store = resolve_run(args.run)
    with open_zarr_quiet(store, chunks=None) as ds:
        lat, lon = ds["lat"].values, ds["lon"].values
    m = args.members
    vstep = lambda fn: jax.jit(jax.vmap(fn, in_axes=(None, 0, 0, 0)))  # noqa: E731
    keys = lambda r: jax.random.split(jax.random.PRNGKey(r + 1), m)  # noqa: E731
    zeros = lambda rng, shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    calls, nfes, nets = {}, {}, {}
    student = forecast_npz(ctx, "student")  # as the run forecast it (its tuned eta, if any)
    for name, path in (("teacher", ctx.teacher_eval_npz), ("student", student)):
        ckpt = ckpt_lib.load_checkpoint(str(path))
        den, params = ckpt_lib.denoiser_from_checkpoint(ckpt, lat, lon, source=str(path))
        nfes[name] = checkpoint_sampler(ckpt)[2]
        lay = ckpt.task_config.layout
        rng = np.random.default_rng(0)
        x = rng.standard_normal((m, len(lat), len(lon), lay.n_inputs)).astype(np.float32)
        f = rng.standard_normal((m, len(lat), len(lon), lay.n_forcings)).astype(np.float32)
        for suffix, noise_fn in (("", None), ("_no_noise", zeros)):
            fn = vstep(checkpoint_step(ckpt, den, lat, lon, noise_fn=noise_fn))
            calls[name + suffix] = lambda r, fn=fn, p=params, x=x, f=f: fn(p, keys(r), x, f)
        nets[name] = (den, params, x, f, (len(lat), len(lon), lay.n_targets))
    den, params, x, f, shape = nets["teacher"]
    x0 = np.random.default_rng(1).standard_normal((m,) + shape).astype(np.float32)
    for n in sorted(set(nfes.values())):

        def loop(params, x0, inputs, forcings, n=n):
            cond = Conditioning(inputs[None], forcings[None])
            sig = jnp.geomspace(80.0, 0.05, n).astype(jnp.float32)

            def body(i, y):
                return den.apply(params, y, sig[i][None], cond)

            return jax.lax.fori_loop(0, n, body, x0[None])[0]

        calls[f"calls_{n}"] = lambda r, g=vstep(loop): g(params, x0, x, f)
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
