"""A small RMMD distillation run through `gencast_rmmd.distill.trainer.run_phase`, as a script.

    python reliability_distill_worker.py RUN_DIR OUT.npz

Phase 2 settings (on-policy start, 2 members, CRPS reward 0.3, L2 anchor 0.15 to a frozen
student, alternating aux/student updates) on a 4-dimensional Gaussian world with a small MLP
denoiser: student and auxiliary start from the teacher. Checkpoints every 3 of 45 steps in
RUN_DIR; resumes from them when RUN_DIR has some. At the end the trained student and auxiliary
parameters are written to OUT.npz (temp file + rename), which the crash test compares.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.distill.objectives import ObjectiveConfig
from gencast_rmmd.distill.student_sampler import StudentSamplerConfig
from gencast_rmmd.distill.trainer import PhaseConfig, run_phase
from gencast_rmmd.training import LoopConfig, OptimizerConfig

D, H = 4, 16
NUM_STEPS, EVERY = 45, 3


def denoise(params, y, sigma, cond):
    """EDM-preconditioned MLP denoiser: c_skip y + c_out F(c_in y, log sigma)."""
    c_in = 1.0 / jnp.sqrt(sigma**2 + 1.0)
    c_skip = 1.0 / (sigma**2 + 1.0)
    c_out = sigma * c_in
    feats = jnp.concatenate([c_in[:, None] * y, jnp.log(sigma)[:, None] / 4.0], axis=-1)
    h = jnp.tanh(feats @ params["w1"] + params["b1"])
    f = h @ params["w2"] + params["b2"]
    return c_skip[:, None] * y + c_out[:, None] * f


def teacher_params():
    rng = np.random.default_rng(0)
    return {
        "w1": jnp.asarray(0.5 * rng.standard_normal((D + 1, H)), jnp.float32),
        "b1": jnp.zeros((H,), jnp.float32),
        "w2": jnp.asarray(0.5 * rng.standard_normal((H, D)), jnp.float32),
        "b2": jnp.asarray(rng.standard_normal(D), jnp.float32),
    }


def batches(step: int):
    x = np.random.default_rng([7, step]).standard_normal((4, D)).astype(np.float32)
    return {"x": x + np.arange(D, dtype=np.float32)}


def main(run_dir: str, out: str) -> None:
    teacher = teacher_params()
    cfg = PhaseConfig(
        objective=ObjectiveConfig(
            start="on_policy_continuous",
            members=2,
            reward_weight=0.3,
            l2_weight=0.15,
        ),
        loop=LoopConfig(
            num_steps=NUM_STEPS,
            batch_size=4,
            checkpoint_every=EVERY,
            keep_checkpoints=2,
            log_every=1,
            seed=3,
            progress=False,
        ),
        optimizer=OptimizerConfig(learning_rate=1e-2),
    )
    params = {"student": teacher, "aux": teacher, "teacher": teacher, "student_frozen": teacher}
    trained, trainer = run_phase(
        cfg,
        StudentSamplerConfig(num_steps=2, max_noise_level=20.0, min_noise_level=0.05),
        params,
        batches,
        run_dir,
        denoise_fn=denoise,
        noise_fn=lambda rng, shape: jax.random.normal(rng, shape, jnp.float32),
        target_fn=lambda b: b["x"],
        cond_fn=lambda b: None,
    )
    trainer.ckpt.close()
    flat = {f"{g}/{k}": np.asarray(v) for g in ("student", "aux") for k, v in trained[g].items()}
    tmp = f"{out}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
