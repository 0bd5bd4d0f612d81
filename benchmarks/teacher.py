"""Teacher speed: denoiser forward, one 12 h sampling step (DPM-Solver++ 2S), training steps/s.

Prints one JSON object. Architectures:
- `tiny` (configs/model/tiny.yaml) on the embedded 5.625 deg 32x64 grid with the embedded task;
- `mini` (configs/model/gencast_1p0deg_mini.yaml, 57.5 M parameters) on the 1 deg 181x360 grid
  with GenCast's full task (264 input channels). On CPU only one forward is measured by default;
  its sampling step time is then `forward x network evaluations` (marked "estimated"); pass
  `--mini-sample` to time a real step.

Batch 1, float32, weights randomly initialized (speed does not depend on the values). Times are
medians over `--repeats` runs after one compile/warm-up run; compile times are reported apart.

Usage: python benchmarks/teacher.py [--skip-mini] [--mini-sample] [--repeats N] [--train-steps N]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gencast_rmmd.config import load_config
from gencast_rmmd.data.config import load_data_config
from gencast_rmmd.data.task import gencast_task
from gencast_rmmd.model import dpm_solver
from gencast_rmmd.model import grid as grid_lib
from gencast_rmmd.model.configs import ModelConfig
from gencast_rmmd.model.denoiser import Conditioning, build_denoiser, count_params
from gencast_rmmd.model.sh_noise import make_sh_noise_fn
from gencast_rmmd.training.teacher import GROUP, make_teacher_loss

CPU_TIMES: dict[str, float] = {}


def _timed(fn, repeats: int, name: str = "") -> tuple[float, float]:
    """(first call seconds incl. compile, median wall seconds of `repeats` later calls).

    The median process CPU seconds per call are recorded in CPU_TIMES[name]: on a shared machine
    wall time includes waiting for the cores, CPU time does not (but sums over XLA threads)."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    if name:
        CPU_TIMES[name] = statistics.median(cpu) if cpu else float("nan")
    return first, statistics.median(times) if times else float("nan")


def _setup(model: ModelConfig, task, lat, lon):
    den = build_denoiser(
        model.denoiser_architecture_config, task, lat, lon, model.noise_encoder_config
    )
    x, sigma, cond = den.example_inputs(batch=1)
    params = jax.jit(den.init)(jax.random.key(0), x, sigma, cond)
    rng = np.random.default_rng(0)
    cond = Conditioning(
        jnp.asarray(rng.normal(size=cond.inputs.shape), jnp.float32),
        jnp.asarray(rng.normal(size=cond.forcings.shape), jnp.float32),
    )
    return den, params, cond


def bench_arch(
    name: str,
    model: ModelConfig,
    task,
    lat,
    lon,
    repeats: int,
    sample: bool,
    train_steps: int,
    train_batch: int,
):
    out: dict = {"arch": name, "grid": f"{len(lat)}x{len(lon)}"}
    t = time.perf_counter()
    den, params, cond = _setup(model, task, lat, lon)
    out["build_and_init_s"] = time.perf_counter() - t
    n, k = count_params(params)
    out.update(
        num_params=n,
        num_tensors=k,
        attention_type=den.arch.sparse_transformer_config.attention_type,
    )
    lay = task.layout
    shape = (1, len(lat), len(lon), lay.n_targets)
    x = jax.random.normal(jax.random.key(1), shape)
    sigma = jnp.full((1,), 1.0)
    fwd = jax.jit(den.apply)
    first, med = _timed(lambda: fwd(params, x, sigma, cond), repeats, "forward")
    out["forward_compile_and_first_s"] = first
    out["forward_s"] = med
    cfg = model.sampler_config
    nfe = dpm_solver.num_evaluations(cfg)
    out["sampler_network_evaluations"] = nfe
    if sample:
        noise_fn = make_sh_noise_fn(lat, lon)
        step = jax.jit(
            functools.partial(dpm_solver.sample, den.apply, shape=shape, noise_fn=noise_fn, cfg=cfg)
        )
        first, med = _timed(
            lambda: step(params, jax.random.key(2), cond), max(1, repeats // 2), "sample"
        )
        out["sample_step_compile_and_first_s"] = first
        out["sample_step_12h_s"] = med
        out["sample_step_overhead_vs_forward"] = med / (nfe * out["forward_s"])
    else:
        out["sample_step_12h_s_estimated"] = nfe * out["forward_s"]
    if train_steps:
        noise_fn = make_sh_noise_fn(lat, lon)
        loss_fn = make_teacher_loss(
            den,
            noise_fn,
            model.noise_config,
            grid_lib.latitude_weights(lat),
            grid_lib.channel_weights(lay),
        )
        opt = optax.adam(1e-4)
        opt_state = opt.init(params)

        @jax.jit
        def train_step(p, s, batch, rng):
            (loss, _), g = jax.value_and_grad(
                lambda q: loss_fn({GROUP: q}, batch, rng), has_aux=True
            )(p)
            upd, s = opt.update(g, s, p)
            return optax.apply_updates(p, upd), s, loss

        b = train_batch
        rng = np.random.default_rng(3)
        batch = {
            "inputs": jnp.asarray(rng.normal(size=(b,) + cond.inputs.shape[1:]), jnp.float32),
            "forcings": jnp.asarray(rng.normal(size=(b,) + cond.forcings.shape[1:]), jnp.float32),
            "targets": jnp.asarray(rng.normal(size=(b,) + shape[1:]), jnp.float32),
        }
        state = {"p": params, "s": opt_state}

        def one():
            state["p"], state["s"], loss = train_step(
                state["p"], state["s"], batch, jax.random.key(4)
            )
            return loss

        first, med = _timed(one, train_steps, "train")
        out["train_batch_size"] = b
        out["train_step_compile_and_first_s"] = first
        out["train_step_s"] = med
        out["train_steps_per_s"] = 1.0 / med
        out["train_examples_per_s"] = b / med
    out["cpu_seconds_per_call"] = dict(CPU_TIMES)
    CPU_TIMES.clear()
    out["load_average_1min"] = os.getloadavg()[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-mini", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--mini-sample", action="store_true", help="time a real Mini sampling step")
    ap.add_argument("--mini-train", action="store_true", help="time Mini training steps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--train-batch", type=int, default=4)
    args = ap.parse_args()

    result = {
        "benchmark": "teacher",
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu": platform.processor() or platform.machine(),
        "results": [],
    }
    emb = load_data_config("embedded")
    lat = -87.1875 + 5.625 * np.arange(32)
    lon = 5.625 * np.arange(64)
    if not args.skip_tiny:
        tiny = load_config(ModelConfig, "tiny", kind="model")
        result["results"].append(
            bench_arch(
                "tiny",
                tiny,
                emb.task,
                lat,
                lon,
                args.repeats,
                True,
                args.train_steps,
                args.train_batch,
            )
        )
    if not args.skip_mini:
        mini = load_config(ModelConfig, "gencast_1p0deg_mini", kind="model")
        lat1 = np.linspace(-90.0, 90.0, 181)
        lon1 = np.arange(360.0)
        result["results"].append(
            bench_arch(
                "mini",
                mini,
                gencast_task(),
                lat1,
                lon1,
                max(1, min(args.repeats, 2)),
                args.mini_sample,
                args.train_steps if args.mini_train else 0,
                1,
            )
        )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    from gencast_rmmd import runtime

    runtime.tune_allocator()  # as the CLI does (GENCAST_RMMD_MALLOC; benchmarks/allocator.py)
    main()
