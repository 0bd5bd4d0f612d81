"""Image path speed (the U-ViT of `configs/image/digits.yaml`); prints one JSON object.

Side by side in one process, random weights (speed does not depend on the values):

- forward (batch 500, the evaluation batch) and teacher training step (batch 64) with the
  project's `uvit.GroupNorm` against `hk.GroupNorm` (same function and parameters);
- one set of 500 samples with the teacher's 64-step and the student's 8-step sampler;
- the RMMD fine-tuning step (`image.finetune`, all three rewards behind `lax.switch`): compile
  seconds and step milliseconds at XLA's default backend optimisation level and at the level
  the sweep uses on CPU (`finetune.STEP_COMPILER_OPTIONS`).

Usage: python benchmarks/image.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_ms(fn, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn())  # compile / warm up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    import haiku as hk
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from gencast_rmmd.config import load_config
    from gencast_rmmd.image import finetune, uvit
    from gencast_rmmd.image.classifier import Classifier, build_classifier
    from gencast_rmmd.image.config import ImageConfig
    from gencast_rmmd.image.model import build_model
    from gencast_rmmd.image.rewards import make_reward
    from gencast_rmmd.image.training import make_optimizer

    cfg = load_config(ImageConfig, "digits", [], kind="image")
    shape = (cfg.data.resolution, cfg.data.resolution, cfg.data.channels)
    rs = np.random.RandomState(0)
    z = jnp.asarray(rs.randn(500, *shape).astype(np.float32))
    logsnr = jnp.asarray(rs.randn(500).astype(np.float32))
    labels = jnp.asarray(rs.randint(0, cfg.data.num_classes, 500))
    x64, y64 = z[:64], labels[:64]

    def hk_norm(x):
        groups = next(g for g in (8, 4, 2, 1) if x.shape[-1] % g == 0)
        return hk.GroupNorm(groups, create_scale=True, create_offset=True)(x)

    ours = uvit._norm

    def measure(norm) -> tuple[float, float]:
        uvit._norm = norm
        model = build_model(cfg.model, cfg.schedule, shape, cfg.data.num_classes)
        params = model.init(jax.random.PRNGKey(0))
        fwd = jax.jit(lambda p, a, b, c: model.net_apply(p, None, a, b, c))
        opt = optax.adam(1e-3)
        ost = opt.init(params)

        @jax.jit
        def train_step(p, o, key):
            loss, g = jax.value_and_grad(model.vp_loss)(p, key, x64, y64)
            u, o = opt.update(g, o, p)
            return optax.apply_updates(p, u), o, loss

        k = jax.random.PRNGKey(1)
        return (
            _median_ms(lambda: fwd(params, z, logsnr, labels), args.repeats),
            _median_ms(lambda: train_step(params, ost, k), args.repeats),
        )

    out: dict = {"benchmark": "image", "device": jax.devices()[0].platform}
    timings: dict = {}
    # Interleaved (ours, haiku, ours, haiku): drifts of the host's speed hit both alike.
    for _ in range(2):
        for name, norm in (("uvit_groupnorm", ours), ("hk_groupnorm", hk_norm)):
            f_ms, t_ms = measure(norm)
            timings.setdefault(name, {"forward_b500_ms": [], "teacher_train_step_b64_ms": []})
            timings[name]["forward_b500_ms"].append(f_ms)
            timings[name]["teacher_train_step_b64_ms"].append(t_ms)
    uvit._norm = ours
    for name, t in timings.items():
        out[name] = {k: min(v) for k, v in t.items()}
    out["forward_speedup_vs_hk_groupnorm"] = (
        out["hk_groupnorm"]["forward_b500_ms"] / out["uvit_groupnorm"]["forward_b500_ms"]
    )
    out["train_step_speedup_vs_hk_groupnorm"] = (
        out["hk_groupnorm"]["teacher_train_step_b64_ms"]
        / out["uvit_groupnorm"]["teacher_train_step_b64_ms"]
    )

    model = build_model(cfg.model, cfg.schedule, shape, cfg.data.num_classes)
    params = model.init(jax.random.PRNGKey(0))
    for what, sc in (("teacher", cfg.teacher.sampler), ("student", cfg.mmd.sampler)):
        fn = jax.jit(lambda p, r, y, sc=sc: model.sample(p, r, y, sc))
        ms = _median_ms(lambda fn=fn: fn(params, jax.random.PRNGKey(2), labels), 3)
        out[f"{what}_sample_set_500_seconds"] = ms / 1000.0
        out[f"{what}_sampler_steps"] = sc.num_steps

    net = build_classifier(cfg.classifier, cfg.data.num_classes)
    clf = Classifier(params=net.init(jax.random.PRNGKey(3), z[:2]), apply=net.apply)
    rewards = tuple(make_reward(r, clf) for r in ("bw", "laplacian", "classifier"))
    start = finetune.StartPoint(student=params, aux=params, sampler=cfg.mmd.sampler)
    fc = cfg.finetune
    opt = make_optimizer(fc.optim, fc.steps)
    trainable = {"student": params, "aux": params}
    frozen = {"teacher": params, "student_frozen": params, "aux_frozen": params}
    batch = {  # one micro-batch (`training.DataParallel.batch`)
        "images": z[None, : fc.batch_size],
        "labels": labels[None, : fc.batch_size],
        "dropout": jax.random.PRNGKey(4),
    }
    step_args = (
        trainable, frozen, opt.init(trainable), batch, jax.random.PRNGKey(5),
        jnp.float32(0.1), jnp.int32(2),
    )  # fmt: skip
    for label, opts in (("default", {}), ("sweep", finetune.STEP_COMPILER_OPTIONS)):
        step = finetune._rmmd_step(model, start, fc, rewards, opt, compiler_options={})
        lowered = step.lower(*step_args)
        t0 = time.perf_counter()
        compiled = lowered.compile(compiler_options=opts) if opts else lowered.compile()
        out[f"rmmd_step_compile_seconds_{label}"] = time.perf_counter() - t0
        out[f"rmmd_step_ms_{label}"] = _median_ms(lambda c=compiled: c(*step_args), args.repeats)
    out["rmmd_step_compiler_options_sweep"] = finetune.STEP_COMPILER_OPTIONS
    print(json.dumps(out))


if __name__ == "__main__":
    from gencast_rmmd import runtime

    runtime.tune_allocator()  # as the CLI does (GENCAST_RMMD_MALLOC; benchmarks/allocator.py)
    main()
