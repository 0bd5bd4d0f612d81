"""Variance-preserving diffusion for images: shifted cosine schedule, v-prediction, samplers.

Forward process (rmmd.md §0): `z_t = alpha_t x + sigma_t eps`, `alpha_t^2 + sigma_t^2 = 1`,
`logSNR = log(alpha^2 / sigma^2)`. The network predicts `v = alpha eps - sigma x` (Salimans & Ho
2022), so `x0_hat = alpha z - sigma v` and `eps_hat = sigma z + alpha v`.

Shifted cosine schedule (Simple Diffusion, Hoogeboom et al. 2023):
`logSNR(t) = -2 log(tan(a t + b) / shift)`, with `a, b` chosen so that logSNR(0) = logsnr_max and
logSNR(1) = logsnr_min (the clip of the schedule).

The same model seen as a variance-exploding / EDM denoiser (docs/contracts.md) by the exact
reparametrisation `x_VE = z_t / alpha_t`, `sigma_VE = sigma_t / alpha_t = exp(-logSNR / 2)`:
`make_ve_denoise_fn` returns `denoise_fn(params, x_noisy, sigma, cond) -> x0_hat`, so samplers and
losses written for the generic contract apply unchanged.

DDIM-eta posterior step (rmmd.md §0): `eps_hat = (z_t - alpha_t x0_hat) / sigma_t`,
`gamma = eta (sigma_s / sigma_t) sqrt(1 - alpha_t^2 / alpha_s^2)`,
`z_s = alpha_s x0_hat + sqrt(sigma_s^2 - gamma^2) eps_hat + gamma n`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gencast_rmmd.distill.student_sampler import cosine_schedule_ab
from gencast_rmmd.image.config import ScheduleConfig

# A VP denoiser: (z [B,H,W,C], logsnr [B]) -> x0_hat [B,H,W,C] (params, labels, rng closed over).
VPDenoiser = Callable[[jax.Array, jax.Array], jax.Array]


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


class CosineSchedule:
    """Shifted, clipped cosine logSNR schedule on t in [0, 1] (t = 0 clean, t = 1 noise)."""

    def __init__(self, cfg: ScheduleConfig = ScheduleConfig()):
        self.cfg = cfg
        self._a, self._b = cosine_schedule_ab(cfg.shift, cfg.logsnr_min, cfg.logsnr_max)

    def logsnr(self, t: jax.Array) -> jax.Array:
        """logSNR(t), same shape as t; decreasing from logsnr_max at t=0 to logsnr_min at t=1."""
        t = jnp.asarray(t, jnp.float32)
        return -2.0 * jnp.log(jnp.tan(self._a * t + self._b) / self.cfg.shift)

    def t_of_logsnr(self, logsnr: jax.Array) -> jax.Array:
        """Inverse of `logsnr`."""
        u = jnp.arctan(self.cfg.shift * jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32)))
        return (u - self._b) / self._a

    def grid(self, num_steps: int) -> jax.Array:
        """logSNR at the sampler's evaluation times t_k = k/K, k = K..1 (decreasing t) `[K]`."""
        t = jnp.arange(num_steps, 0, -1, dtype=jnp.float32) / num_steps
        return self.logsnr(t)


def alpha_sigma(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha, sigma) with alpha^2 = sigmoid(logSNR), sigma^2 = sigmoid(-logSNR)."""
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def diffuse(x0: jax.Array, logsnr: jax.Array, eps: jax.Array) -> jax.Array:
    """Forward process `z = alpha x0 + sigma eps`; logsnr `[B]`, x0/eps `[B, H, W, C]`."""
    a, s = alpha_sigma(logsnr)
    return _bcast(a, x0) * x0 + _bcast(s, x0) * eps


def x0_from_v(z: jax.Array, v: jax.Array, logsnr: jax.Array) -> jax.Array:
    """`x0_hat = alpha z - sigma v` (v-parametrisation)."""
    a, s = alpha_sigma(logsnr)
    return _bcast(a, z) * z - _bcast(s, z) * v


def v_target(x0: jax.Array, eps: jax.Array, logsnr: jax.Array) -> jax.Array:
    """`v = alpha eps - sigma x0`, the regression target of the teacher."""
    a, s = alpha_sigma(logsnr)
    return _bcast(a, x0) * eps - _bcast(s, x0) * x0


def posterior_step(
    z_t: jax.Array,
    x0_hat: jax.Array,
    logsnr_t: jax.Array,
    logsnr_s: jax.Array,
    eta: float | jax.Array,
    noise: jax.Array,
) -> jax.Array:
    """DDIM-eta step from time t to s < t (logsnr_s > logsnr_t), see the module docstring.

    eta = 1: the ancestral posterior q(z_s | z_t, x0 = x0_hat); eta = 0: deterministic DDIM.
    logsnr_* broadcast against the batch (`[]` or `[B]`).
    """
    a_t, s_t = alpha_sigma(logsnr_t)
    a_s, s_s = alpha_sigma(logsnr_s)
    a_t, s_t, a_s, s_s = (
        _bcast(jnp.broadcast_to(v, z_t.shape[:1]), z_t) for v in (a_t, s_t, a_s, s_s)
    )
    eps_hat = (z_t - a_t * x0_hat) / s_t
    # 1 - alpha_t^2/alpha_s^2 = 1 - exp(logsnr_t - logsnr_s) * sigma_t^2/sigma_s^2 (stable form).
    ratio = jnp.clip(1.0 - (a_t / a_s) ** 2, 0.0, 1.0)
    gamma = eta * (s_s / s_t) * jnp.sqrt(ratio)
    return a_s * x0_hat + jnp.sqrt(jnp.maximum(s_s**2 - gamma**2, 0.0)) * eps_hat + gamma * noise


def sample_chain(
    denoise: VPDenoiser,
    rng: jax.Array,
    shape: tuple[int, ...],
    grid: jax.Array,
    eta: float,
    stop_index: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Run the K-step ancestral sampler (MMD Algorithm 1) on the logSNR `grid` `[K]`.

    Start at `z = eps` (t = 1), evaluate `x0_hat = denoise(z, grid[k])`, step with DDIM-eta to
    grid[k + 1]; the last evaluation returns x0_hat. Unrolled in Python (K <= 16).

    Returns `(z_stop, x0)`: z_stop `[B, ...]` is the state at which each example's chain was at
    step `stop_index[b]` (before evaluating the network there; all zeros-index = the initial noise),
    for RMMD's discrete on-policy mode; x0 is the finished sample.
    """
    k_steps = grid.shape[0]
    rng, r0 = jax.random.split(rng)
    z = jax.random.normal(r0, shape)
    z_stop = z
    x0 = z
    for k in range(k_steps):
        if stop_index is not None and k > 0:
            z_stop = jnp.where(_bcast(stop_index == k, z), z, z_stop)
        lt = jnp.full((shape[0],), grid[k])
        x0 = denoise(z, lt)
        if k + 1 < k_steps:
            rng, rk = jax.random.split(rng)
            ls = jnp.full((shape[0],), grid[k + 1])
            z = posterior_step(z, x0, lt, ls, eta, jax.random.normal(rk, shape))
    return z_stop, x0


def sample_scan(
    denoise: VPDenoiser, rng: jax.Array, shape: tuple[int, ...], grid: jax.Array, eta: float
) -> jax.Array:
    """Same sampler as `sample_chain` with `lax.scan` (for the many-step teacher)."""
    rng, r0 = jax.random.split(rng)
    z = jax.random.normal(r0, shape)
    nxt = jnp.concatenate([grid[1:], grid[-1:]])
    keys = jax.random.split(rng, grid.shape[0])

    def body(z, inp):
        lt, ls, key = inp
        lt_b = jnp.full((shape[0],), lt)
        x0 = denoise(z, lt_b)
        z = posterior_step(
            z, x0, lt_b, jnp.full((shape[0],), ls), eta, jax.random.normal(key, shape)
        )
        return z, x0

    _, x0s = jax.lax.scan(body, z, (grid, nxt, keys))
    return x0s[-1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WithoutDropout:
    """Parameters whose network call runs without dropout, whatever rng its `cond` carries.

    The shared distillation objective hands one `cond` to every network it calls; wrapping a
    parameter group in this pytree (the image objective does it for the auxiliary denoiser and
    the frozen phase-1 copies) keeps the dropout rng for the student, whose randomness it is
    (rmmd.md §0, §2.8). A pytree node: gradients reach the wrapped parameters as usual.
    """

    params: Any


def make_ve_denoise_fn(
    net_apply: Callable[..., jax.Array],
) -> Callable[[object, jax.Array, jax.Array, object], jax.Array]:
    """Wrap a VP v-prediction network as a VE/EDM `denoise_fn(params, x_noisy, sigma, cond)`.

    `net_apply(params, rng, z, logsnr, labels) -> v`. `cond` is the labels `[B]`, or a pair
    `(labels, rng)` to switch dropout on (the contract's denoiser is deterministic otherwise),
    unless `params` is `WithoutDropout(...)`.
    Exact: `z = x_noisy / sqrt(1 + sigma^2)` has alpha = 1/sqrt(1 + sigma^2), logSNR = -2 log sigma.
    """

    def denoise_fn(params, x_noisy, sigma, cond):
        if isinstance(cond, tuple):
            labels, rng = cond
        else:
            labels, rng = cond, None
        if isinstance(params, WithoutDropout):
            params, rng = params.params, None
        sigma = jnp.asarray(sigma, jnp.float32)
        logsnr = -2.0 * jnp.log(sigma)
        alpha = 1.0 / jnp.sqrt(1.0 + sigma**2)
        z = _bcast(alpha, x_noisy) * x_noisy
        v = net_apply(params, rng, z, logsnr, labels)
        return x0_from_v(z, v, logsnr)

    return denoise_fn


def ve_sigma(logsnr: jax.Array) -> jax.Array:
    """The VE noise level of a VP logSNR: `sigma_VE = sigma_t / alpha_t = exp(-logSNR / 2)`."""
    return jnp.exp(-0.5 * jnp.asarray(logsnr))
