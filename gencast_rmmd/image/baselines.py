"""Reward fine-tuning baselines on the same student, teacher and rewards (rmmd.md §3).

All work on the generic VE `denoise_fn(params, x_noisy, sigma, cond) -> x0_hat` and the distill
area's K-step DDIM-eta student sampler (`gencast_rmmd.distill.student_sampler`: same noise levels,
same posterior step, same rng convention `fold_in(rng, 0)` for the start and `fold_in(rng, k+1)`
for step k, so a baseline's chain is the very chain the student samples at inference).

- DRaFT-K (Clark et al. 2024): run the K_s-step chain; the reward gradient flows through the last
  `k_grad` network calls only (stop_gradient on the state before them), plus an L2 penalty of the
  parameters to the phase-1 student (DRaFT-1 "LoRA + L2" in RMMD's comparison; we fine-tune all
  weights with the L2 anchor):
      L = -lambda mean_b R(x0) + l2 * sum_i (theta_i - theta0_i)^2
- ReFL (Xu et al. 2023): run the chain without gradient down to a random stop index
  k ~ U{k_min, ..., K_s - 1}, take ONE gradient-enabled network call there and score its x0
  prediction; regularised with the ordinary denoising loss on real data:
      L = -lambda mean_b R(G(y_k, S_k)) + w_data * mean_b (S^2 + 1)/S^2 ||G(x + S n, S) - x||^2
  (the EDM weight (S^2+1)/S^2 is exactly the VP teacher's v-loss weight SNR + 1; S log-uniform
  on the student's range).
- DI++ (Luo 2024) is the RMMD objective with a one-step student from pure noise: it is built from
  `gencast_rmmd.distill.objectives` with `num_steps = 1` (see `gencast_rmmd.image.finetune`).

Dropout: `cond` is the labels or `(labels, rng)` (the image convention,
`gencast_rmmd.image.diffusion.make_ve_denoise_fn`). The sampling chains run as at inference,
without dropout, whatever `cond` carries: DRaFT's whole chain (its reward is the inference
sample's) and ReFL's no-gradient chain down to the stop. ReFL's one gradient-enabled call and
its denoising loss are the student's own training forward passes and keep the rng.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gencast_rmmd.distill import student_sampler as ss

Reward = Callable[[jax.Array, jax.Array], jax.Array]


def _labels(cond: Any) -> jax.Array:
    return cond[0] if isinstance(cond, tuple) else cond


def truncated_chain(
    denoise_fn: ss.DenoiseFn,
    params: Any,
    rng: jax.Array,
    cond: Any,
    shape: tuple[int, ...],
    noise_fn: ss.NoiseFn,
    cfg: ss.StudentSamplerConfig,
    k_grad: int,
) -> jax.Array:
    """The K-step student sample `[B, ...]` whose gradient w.r.t. `params` flows through the last
    `k_grad` network calls only (DRaFT-K truncation; k_grad = K is full DRaFT, 0 no gradient).

    Same value as `student_sampler.sample` for the same rng.
    """
    levels = ss.noise_levels(cfg)
    k_steps = cfg.num_steps
    if not 0 <= k_grad <= k_steps:
        raise ValueError(f"k_grad must be in [0, {k_steps}], found {k_grad}")
    batch = shape[0]
    y = float(levels[0]) * noise_fn(jax.random.fold_in(rng, 0), shape)
    x0 = y
    for k in range(k_steps):
        s_t = float(levels[k])
        s_s = float(levels[k + 1]) if k + 1 < k_steps else 0.0
        p = params if k >= k_steps - k_grad else jax.lax.stop_gradient(params)
        if k == k_steps - k_grad:
            y = jax.lax.stop_gradient(y)
        x0 = denoise_fn(p, y, jnp.full((batch,), s_t), cond)
        z = noise_fn(jax.random.fold_in(rng, k + 1), shape)
        y = ss.ddim_eta_step(y, x0, s_t, s_s, cfg.eta, z)
    return x0 if k_grad > 0 else jax.lax.stop_gradient(x0)


def params_l2(params: Any, anchor: Any) -> jax.Array:
    """`sum_i (theta_i - theta0_i)^2` over all leaves."""
    sq = jax.tree.map(lambda a, b: jnp.sum((a - jax.lax.stop_gradient(b)) ** 2), params, anchor)
    return jax.tree_util.tree_reduce(jnp.add, sq, jnp.zeros((), jnp.float32))


def draft_loss(
    denoise_fn: ss.DenoiseFn,
    params: Any,
    anchor_params: Any,
    rng: jax.Array,
    cond: Any,
    shape: tuple[int, ...],
    noise_fn: ss.NoiseFn,
    cfg: ss.StudentSamplerConfig,
    reward: Reward,
    lam: float | jax.Array,
    k_grad: int,
    l2: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DRaFT-K loss `-lam mean R(x0) + l2 ||theta - theta0||^2` (module docstring); the chain
    runs without dropout."""
    x0 = truncated_chain(denoise_fn, params, rng, _labels(cond), shape, noise_fn, cfg, k_grad)
    r = jnp.mean(reward(x0, _labels(cond)))
    reg = params_l2(params, anchor_params)
    return -lam * r + l2 * reg, {"reward": r, "param_l2": reg}


def stopped_state(
    denoise_fn: ss.DenoiseFn,
    params: Any,
    rng: jax.Array,
    cond: Any,
    shape: tuple[int, ...],
    noise_fn: ss.NoiseFn,
    cfg: ss.StudentSamplerConfig,
    stop: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """No-gradient chain stopped at grid index `stop [B]`: `(y_stop [B, ...], sigma_stop [B])`,
    the state the sampler feeds the network at level `stop` (index 0 = the initial noise)."""
    traj = ss.sample_trajectory(
        denoise_fn, jax.lax.stop_gradient(params), rng, cond, shape, noise_fn, cfg
    )
    idx = stop.astype(jnp.int32)
    sel = idx.reshape((1, -1) + (1,) * (traj.states.ndim - 2))
    y = jnp.take_along_axis(traj.states, sel, axis=0)[0]
    return jax.lax.stop_gradient(y), traj.sigmas[idx]


def denoising_loss(
    denoise_fn: ss.DenoiseFn,
    params: Any,
    rng: jax.Array,
    x0: jax.Array,
    cond: Any,
    noise_fn: ss.NoiseFn,
    sigma_min: float,
    sigma_max: float,
) -> jax.Array:
    """Pre-training denoising loss on real data: `mean (S^2+1)/S^2 ||D(x + S n, S) - x||^2`
    (per-pixel mean), S log-uniform on [sigma_min, sigma_max]."""
    r_s, r_n = jax.random.split(rng)
    u = jax.random.uniform(r_s, (x0.shape[0],))
    sigma = jnp.exp(jnp.log(sigma_min) + u * (jnp.log(sigma_max) - jnp.log(sigma_min)))
    sb = sigma.reshape((-1,) + (1,) * (x0.ndim - 1))
    x_hat = denoise_fn(params, x0 + sb * noise_fn(r_n, x0.shape), sigma, cond)
    w = (sigma**2 + 1.0) / sigma**2
    return jnp.mean(w * jnp.mean((x_hat - x0) ** 2, axis=tuple(range(1, x0.ndim))))


def refl_loss(
    denoise_fn: ss.DenoiseFn,
    params: Any,
    rng: jax.Array,
    cond: Any,
    x_data: jax.Array,
    noise_fn: ss.NoiseFn,
    cfg: ss.StudentSamplerConfig,
    reward: Reward,
    lam: float | jax.Array,
    min_stop: int,
    data_weight: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ReFL loss `-lam mean R(G(y_k, S_k)) + data_weight * denoising_loss(real data)`,
    `k ~ U{min_stop, ..., K - 1}` per example; the chain to y_k runs without dropout, G(y_k, S_k)
    and the denoising loss with the rng `cond` may carry (module docstring)."""
    r_c, r_k, r_d = jax.random.split(rng, 3)
    shape = x_data.shape
    stop = jax.random.randint(r_k, (shape[0],), min_stop, cfg.num_steps)
    y, sigma = stopped_state(denoise_fn, params, r_c, _labels(cond), shape, noise_fn, cfg, stop)
    x_hat = denoise_fn(params, y, sigma, cond)
    r = jnp.mean(reward(x_hat, _labels(cond)))
    levels = ss.noise_levels(cfg)
    dl = denoising_loss(
        denoise_fn, params, r_d, x_data, cond, noise_fn, float(levels[-1]), float(levels[0])
    )
    return -lam * r + data_weight * dl, {"reward": r, "denoising": dl}
