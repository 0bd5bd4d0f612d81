"""Distillation speed; prints one JSON object.

- training steps/s of phase 1 (MMD, alternating: mean over aux and student steps) and phase 2
  (RMMD, on-policy continuous, M = 2 members, simultaneous aux+student update) with the tiny
  GenCast (configs/model/tiny.yaml) on the embedded 32 x 64 grid and task, random weights and
  random normalized batches (speed does not depend on the values);
- one 12 h forecast step: the K-step student (8 evaluations) vs the teacher's DPM-Solver++ 2S
  with 20 noise levels (39 evaluations, GenCast's sampler) and 30 levels (59, RMMD's teacher),
  same process, same weights; the wall-clock ratio teacher/student and the NFE ratio.

Usage: python benchmarks/distill.py [--batch 2] [--repeats 3] [--config tiny]
       [--phases mmd,rmmd] [--skip-train | --skip-sample] [--memory ACCUM ...]

`--memory 1 2 4 --batch 4` gives XLA's memory analysis of each phase's step at those gradient
accumulations instead of timings (compiled, not run; for the device it runs on).

`--phases rmmd --skip-sample` times phase 2's sharded training step alone (one compilation: what
tools/device_check.sh runs first on a GPU, where compiling is the slow part).

At GenCast's real size, the forecast step only (the training part would take hours on CPU):

    python benchmarks/distill.py --config gencast_1p0deg_mini --grid 1deg --skip-train \
        --levels 30 --repeats 1

builds the Mini architecture (57.5 M parameters) on the 1 deg 181 x 360 grid with GenCast's full
task (random weights; speed does not depend on the values). All samplers are compiled ahead of
time and then timed in alternating rounds (student, teachers), without an untimed warm-up run
(one Mini teacher step takes about 12 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_setup(config: str, grid: str, distill_config: str | None, b: int):
    """The benchmark's model (random weights), grid, distill config and a `batch(step)` of `b`
    random normalized examples (speed does not depend on the values)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gencast_rmmd.config import load_config
    from gencast_rmmd.data.config import load_data_config
    from gencast_rmmd.data.task import gencast_task
    from gencast_rmmd.distill.gencast import DistillConfig, gencast_weights
    from gencast_rmmd.model import sh_noise
    from gencast_rmmd.model.configs import ModelConfig
    from gencast_rmmd.model.denoiser import build_denoiser

    model = load_config(ModelConfig, config, kind="model")
    if grid == "1deg":
        task = gencast_task()
        lat, lon = np.linspace(-90.0, 90.0, 181), np.arange(360.0)
    else:
        task = load_data_config("embedded").task
        lat, lon = -87.1875 + 5.625 * np.arange(32), 5.625 * np.arange(64)
    lay = task.layout
    den = build_denoiser(
        model.denoiser_architecture_config, task, lat, lon, model.noise_encoder_config
    )
    dname = distill_config or ("rmmd_gencast" if grid == "1deg" else "tiny")
    dcfg = load_config(DistillConfig, dname, kind="distill")

    def batch(step):
        r = np.random.default_rng(step)
        return {
            "inputs": r.normal(size=(b, len(lat), len(lon), lay.n_inputs)).astype(np.float32),
            "forcings": r.normal(size=(b, len(lat), len(lon), lay.n_forcings)).astype(np.float32),
            "targets": r.normal(size=(b, len(lat), len(lon), lay.n_targets)).astype(np.float32),
        }

    return types.SimpleNamespace(
        model=model,
        lat=lat,
        lon=lon,
        layout=lay,
        den=den,
        params=jax.jit(den.init)(jax.random.key(0), *den.example_inputs(1)),
        noise_fn=sh_noise.make_sh_noise_fn(lat, lon),
        distill_config=dname,
        dcfg=dcfg,
        weights=jnp.asarray(gencast_weights(dcfg.weights, lat, lay)),
        batch=batch,
    )


@contextlib.contextmanager
def training_step(phase: str, setup, accum: int = 1):
    """A phase's training step on `build_setup`'s model and batches, as `step_fn(step) ->
    metrics` (the state kept inside); every trainable group and frozen model starts from the
    setup's weights, `accum` accumulation micro-batches per training step.
    `step_fn.lower(step)` lowers that step without running it (`Trainer.lower_step`)."""
    import jax
    import jax.numpy as jnp

    from gencast_rmmd.distill.trainer import build_phase_trainer
    from gencast_rmmd.model.denoiser import Conditioning

    pcfg = getattr(setup.dcfg, phase)
    b = len(setup.batch(0)["targets"])
    pcfg = dataclasses.replace(
        pcfg,
        loop=dataclasses.replace(
            pcfg.loop, num_steps=10**6, batch_size=b, grad_accum_steps=accum, progress=False
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_phase_trainer(
            pcfg,
            setup.dcfg.student_sampler,
            tmp,
            denoise_fn=setup.den.apply,
            noise_fn=setup.noise_fn,
            target_fn=lambda bt: bt["targets"],
            cond_fn=lambda bt: Conditioning(bt["inputs"], bt["forcings"]),
            weights=setup.weights,
        )
        groups = pcfg.objective.trainable_groups()
        params = setup.params
        state = trainer.init_state({g: params for g in groups})
        frozen = {g: params for g in pcfg.objective.required_groups() if g not in groups}
        frozen = jax.tree.map(jnp.asarray, frozen)

        def step_fn(step: int):
            nonlocal state
            state, metrics = trainer.train_step(
                state, frozen, setup.batch(step), trainer.schedule(step)
            )
            return metrics

        step_fn.lower = lambda step: trainer.lower_step(
            state, frozen, setup.batch(step), trainer.schedule(step)
        )
        try:
            yield step_fn
        finally:
            trainer.ckpt.close()


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress on stderr (stdout holds only the JSON), with seconds since start: a run stopped
    by a time limit still shows which part it reached and how long each took."""
    print(f"[distill bench {time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def log_slow_compiles(min_seconds: float = 1.0) -> None:
    """Log, through `log`, every XLA compilation that takes at least `min_seconds` (JAX's
    `jax_log_compiles` records, the many small ones dropped): on a GPU, compiling can be most of
    a training stage's time."""
    import logging
    import re

    import jax

    pattern = re.compile(r"Finished XLA compilation of (.*) in ([0-9.eE+-]+) sec")

    class SlowCompiles(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = pattern.search(record.getMessage())
            if m and float(m.group(2)) >= min_seconds:
                log(f"compiled {m.group(1)} in {float(m.group(2)):.1f} s")

    logger = logging.getLogger("jax")
    logger.addHandler(SlowCompiles())
    logger.propagate = False  # the rest of jax_log_compiles' lines stay off stderr
    jax.config.update("jax_log_compiles", True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="tiny", help="model config (configs/model/)")
    ap.add_argument("--batch", type=int, default=2, help="conditionings per training step")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=4, help="timed training steps per phase")
    ap.add_argument(
        "--grid",
        choices=("embedded", "1deg"),
        default="embedded",
        help="embedded: the 32 x 64 grid and task; 1deg: 181 x 360 with GenCast's full task",
    )
    ap.add_argument("--skip-train", action="store_true", help="time the forecast step only")
    ap.add_argument(
        "--skip-sample", action="store_true", help="time the training steps only (no 12 h step)"
    )
    ap.add_argument(
        "--phases", default="mmd,rmmd", help="training phases to time, e.g. rmmd (default both)"
    )
    ap.add_argument(
        "--distill-config",
        default=None,
        help="distill config (configs/distill/): default tiny, rmmd_gencast with --grid 1deg",
    )
    ap.add_argument("--levels", default="20,30", help="teacher noise levels to time, e.g. 30")
    ap.add_argument(
        "--log-compiles", action="store_true", help="log each compilation of 1 s or more (stderr)"
    )
    ap.add_argument(
        "--memory",
        type=int,
        nargs="+",
        metavar="ACCUM",
        help="instead of timing, XLA's memory analysis of each phase's step (compiled, not run) "
        "at these grad_accum_steps, the batch fixed at --batch: {phase}_step_memory_mb",
    )
    args = ap.parse_args()
    phases = tuple(p for p in args.phases.split(",") if p)
    if not phases or set(phases) - {"mmd", "rmmd"}:
        ap.error(f"--phases: expected mmd, rmmd or mmd,rmmd, found {args.phases!r}")
    if args.skip_train and args.skip_sample:
        ap.error("--skip-train and --skip-sample leave nothing to time")
    if args.memory and any(a < 1 or args.batch % a for a in args.memory):
        ap.error(f"--memory: each ACCUM must divide --batch {args.batch}, found {args.memory}")

    import jax

    if args.log_compiles:
        log_slow_compiles()
    from gencast_rmmd.model.denoiser import count_params

    log(f"backend {jax.default_backend()}, {jax.device_count()} device(s); building {args.config}")
    setup = build_setup(args.config, args.grid, args.distill_config, args.batch)
    log("model built and initialised")
    lay, b = setup.layout, args.batch
    nlat, nlon, dname = len(setup.lat), len(setup.lon), setup.distill_config

    out: dict = {
        "device": str(jax.devices()[0].platform),
        "devices": jax.device_count(),
        "model": args.config,
        "distill_config": dname,
        "grid": [nlat, nlon],
        "num_params": count_params(setup.params)[0],
        "channels_out": lay.n_targets,
        **({} if args.skip_train else {"batch": b}),
    }
    if args.memory:
        out.update(step_memory(setup, phases, args.memory))
        print(json.dumps(out))
        return
    for phase in () if args.skip_train else phases:
        with training_step(phase, setup) as step_fn:
            log(f"{phase}: trainer built; compiling and running its first 2 steps")
            t0 = time.perf_counter()
            for step in range(2):  # compile every rule once
                m = step_fn(step)
            jax.block_until_ready(m["loss"])
            # The first two steps: compilation of every rule plus two steps.
            out[f"{phase}_first_two_steps_seconds"] = time.perf_counter() - t0
            log(f"{phase}: first 2 steps in {out[f'{phase}_first_two_steps_seconds']:.1f} s")
            t0 = time.perf_counter()
            for step in range(2, 2 + args.train_steps):
                m = step_fn(step)
            jax.block_until_ready(m["loss"])
            dt = time.perf_counter() - t0
            log(f"{phase}: {args.train_steps} timed steps in {dt:.2f} s")
        out[f"{phase}_steps_per_sec"] = args.train_steps / dt
        out[f"{phase}_examples_per_sec"] = args.train_steps * b / dt
    if not args.skip_sample:
        out.update(time_samplers(setup, args.levels, args.repeats, args.grid == "embedded"))
    print(json.dumps(out))


def step_memory(setup, phases: tuple[str, ...], accums: list[int]) -> dict:
    """`{phase}_step_memory_mb`: for each accumulation, XLA's memory analysis (MB) of the first
    step of the phase (its first update rule), compiled and not run: temporaries (activations
    and scratch), arguments and outputs."""
    out = {}
    for phase in phases:
        rows = out.setdefault(f"{phase}_step_memory_mb", {})
        for accum in accums:
            with training_step(phase, setup, accum) as step_fn:
                m = step_fn.lower(0).compile().memory_analysis()
            rows[str(accum)] = {
                k: round(getattr(m, f"{k}_size_in_bytes") / 1e6, 1)
                for k in ("temp", "argument", "output")
            }
            log(f"{phase}: grad_accum_steps {accum}: {rows[str(accum)]}")
    return out


def time_samplers(setup, levels_arg: str, repeats: int, warm_up: bool) -> dict:
    """One 12 h step (a single member) of the student and of the teacher at each of `levels_arg`'s
    noise levels, every sampler compiled ahead of time; timed in alternating rounds, so that
    every sampler sees the same background load (the minima). `warm_up`: one untimed run each
    first (cheap on the embedded grid)."""
    import jax

    from gencast_rmmd.cli.quickstart_chain import time_in_rounds
    from gencast_rmmd.distill import student_sampler as ss
    from gencast_rmmd.model import dpm_solver

    model, den, params = setup.model, setup.den, setup.params
    dcfg, noise_fn = setup.dcfg, setup.noise_fn
    out: dict = {}
    x, sigma, cond = den.example_inputs(1)
    shape = x.shape
    key = jax.random.PRNGKey(1)
    student_cfg = dcfg.student_sampler
    samplers = {
        "student": (
            jax.jit(lambda p, r, c: ss.sample(den.apply, p, r, c, shape, noise_fn, student_cfg)),
            ss.num_evaluations(student_cfg),
        )
    }
    for levels in (int(v) for v in levels_arg.split(",")):
        tcfg = dataclasses.replace(model.sampler_config, num_noise_levels=levels)
        samplers[f"teacher{levels}"] = (
            jax.jit(
                lambda p, r, c, tcfg=tcfg: dpm_solver.sample(
                    den.apply, p, r, c, shape, noise_fn, tcfg
                )
            ),
            dpm_solver.num_evaluations(tcfg),
        )
    compiled = {}
    for name, (fn, nfe) in samplers.items():
        t0 = time.perf_counter()
        compiled[name] = fn.lower(params, key, cond).compile()
        out[f"{name}_compile_seconds"] = time.perf_counter() - t0
        log(
            f"{name} sampler ({nfe} evaluations) compiled in {out[f'{name}_compile_seconds']:.1f} s"
        )
        out[f"{name}_nfe"] = nfe
    if warm_up:
        for fn in compiled.values():
            jax.block_until_ready(fn(params, key, cond))
    log(f"timing the samplers, {repeats} rounds")
    timed = time_in_rounds(
        {name: lambda _, fn=fn: fn(params, key, cond) for name, fn in compiled.items()},
        repeats,
    )
    stu = timed["student"]
    out["student_step_seconds"] = stu["seconds"]
    out["student_step_cpu_seconds"] = stu["cpu_seconds"]
    for name, t in timed.items():
        if name == "student":
            continue
        out[f"{name}_step_seconds"] = t["seconds"]
        out[f"{name}_step_cpu_seconds"] = t["cpu_seconds"]
        out[f"{name}_over_student_cpu"] = t["cpu_seconds"] / stu["cpu_seconds"]
        out[f"{name}_over_student_wallclock"] = t["seconds"] / stu["seconds"]
        out[f"{name}_over_student_nfe"] = out[f"{name}_nfe"] / out["student_nfe"]
    return out


if __name__ == "__main__":
    from gencast_rmmd import runtime

    runtime.tune_allocator()  # as the CLI does (GENCAST_RMMD_MALLOC; benchmarks/allocator.py)
    main()
