"""The K-step stochastic student sampler (MMD Algorithm 1 in variance-exploding / EDM form).

Noise levels (reference notes rmmd.md §2.5), `grid`:

- "edm" (default; GenCast): K levels on the EDM rho grid

      S_k = (S_max^(1/rho) + k/(K-1) * (S_min^(1/rho) - S_max^(1/rho)))^rho,  k = 0..K-1

  (K = 1: the single level S_max), with rho = 100 by default, which is almost geometric spacing;
- "cosine" (ImageNet: the variance-preserving teacher's shifted cosine schedule): the VE levels
  `S_k = exp(-logSNR(t_k) / 2)` at `t_k = (K - k) / K`, with the clipped shifted cosine

      logSNR(t) = -2 log(tan(a t + b) / shift),  b = atan(shift e^(-logsnr_max/2)),
                                                 a = atan(shift e^(-logsnr_min/2)) - b

  (`cosine_schedule_ab`; `image.diffusion.CosineSchedule` is the same schedule), so logSNR(1) =
  logsnr_min (S_0 = e^7.5 = 1808 at the default clip of 15) and the last level is t = 1/K.
Sampling starts from `y_0 = S_max * n` and at each level predicts `x0_hat = D(y_k, S_k)`, then
takes the DDIM-eta ancestral posterior step to the next level (rmmd.md §0, VE form):

    eps_hat = (y_t - x0_hat) / S_t
    c       = eta * S_s * sqrt(1 - S_s^2 / S_t^2)
    y_s     = x0_hat + sqrt(S_s^2 - c^2) * eps_hat + c * z,        z = noise_fn(...)

With S_s = 0 after the last level the step returns `x0_hat` exactly, so the last network call's
prediction is the sample (no Euler step, no churn: churn hurts MMD students, rmmd.md §2.6).
eta = 1 is the DDPM posterior, eta = 0 deterministic DDIM; GenCast's RMMD uses eta = 0.5.

Cost: exactly K denoiser evaluations (`num_evaluations`) and K noise draws (the initial noise and
K - 1 posterior noises; the last step's noise has coefficient 0 and is not drawn).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DenoiseFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
NoiseFn = Callable[[jax.Array, tuple[int, ...]], jax.Array]


@dataclasses.dataclass(frozen=True)
class StudentSamplerConfig:
    """K-step DDIM-eta student sampler settings (defaults: RMMD's GenCast student).

    num_steps: K network evaluations per sample (1, 2, 4 or 8 in the papers; any K >= 1 works).
    max_noise_level / min_noise_level: the first and last of the K levels (VE units, sigma_data
      = 1). GenCast's teacher samples on [0.03, 80]; RMMD's student range is not recovered (U9),
      so the teacher's is the default.
    rho: EDM grid exponent (100: nearly log-uniform; GenCast's teacher uses 7).
    eta: DDIM stochasticity in [0, 1] (0.5 for GenCast, rmmd.md §2.6).
    grid: "edm" (the rho grid on [min_noise_level, max_noise_level]) or "cosine" (the shifted
      cosine schedule of `cosine_shift`, `cosine_logsnr_min`, `cosine_logsnr_max`, for a
      variance-preserving teacher trained on it; the three EDM keys above are then unused).
    """

    num_steps: int = 8
    max_noise_level: float = 80.0
    min_noise_level: float = 0.03
    rho: float = 100.0
    eta: float = 0.5
    grid: str = "edm"  # "edm" | "cosine" (a plain str: the checkpoint tree stores it)
    cosine_shift: float = 1.0
    cosine_logsnr_min: float = -15.0
    cosine_logsnr_max: float = 15.0

    def validate(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps: must be >= 1, found {self.num_steps}")
        if not 0 < self.min_noise_level <= self.max_noise_level:
            raise ValueError(
                "noise levels: need 0 < min_noise_level <= max_noise_level, found "
                f"{self.min_noise_level}, {self.max_noise_level}"
            )
        if self.num_steps > 1 and self.min_noise_level == self.max_noise_level:
            raise ValueError("noise levels: min_noise_level == max_noise_level needs num_steps=1")
        if self.rho <= 0:
            raise ValueError(f"rho: must be > 0, found {self.rho}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta: must be in [0, 1], found {self.eta}")
        if self.grid not in ("edm", "cosine"):
            raise ValueError(f"grid: must be 'edm' or 'cosine', found {self.grid!r}")
        if self.cosine_shift <= 0:
            raise ValueError(f"cosine_shift: must be > 0, found {self.cosine_shift}")
        if not self.cosine_logsnr_min < self.cosine_logsnr_max:
            raise ValueError(
                "cosine_logsnr_min must be below cosine_logsnr_max, found "
                f"{self.cosine_logsnr_min}, {self.cosine_logsnr_max}"
            )

    def describe(self) -> str:
        """The grid in words, e.g. `rho=100, sigma 0.03..80` or `shifted cosine (shift 1, ...)`."""
        if self.grid == "cosine":
            return (
                f"shifted cosine (shift {self.cosine_shift:g}, logSNR "
                f"[{self.cosine_logsnr_min:g}, {self.cosine_logsnr_max:g}])"
            )
        return f"rho={self.rho:g}, sigma {self.min_noise_level:g}..{self.max_noise_level:g}"


def cosine_schedule_ab(shift: float, logsnr_min: float, logsnr_max: float) -> tuple[float, float]:
    """`(a, b)` of the clipped shifted cosine `logSNR(t) = -2 log(tan(a t + b) / shift)` (module
    doc), with logSNR(0) = logsnr_max and logSNR(1) = logsnr_min."""
    b = math.atan(shift * math.exp(-0.5 * logsnr_max))
    return math.atan(shift * math.exp(-0.5 * logsnr_min)) - b, b


def num_evaluations(cfg: StudentSamplerConfig) -> int:
    """Denoiser evaluations per sample: K."""
    return cfg.num_steps


def num_noise_draws(cfg: StudentSamplerConfig) -> int:
    """Noise draws of one sample, with keys `fold_in(rng, j)` for `j < num_noise_draws`: the
    initial noise (j = 0) and the posterior noise of every step but the last (j = k + 1), whose
    coefficient is 0 (S_s = 0); only the initial noise when eta = 0 (a static 0, not a traced one)."""
    eta_is_zero = isinstance(cfg.eta, (int, float)) and cfg.eta == 0
    return 1 if eta_is_zero else cfg.num_steps


def last_level(cfg: StudentSamplerConfig) -> tuple[float, str | None]:
    """The student's last noise level and the key that sets it (`min_noise_level`;
    `max_noise_level` when K = 1; None on the cosine grid, where it is the schedule at t = 1/K)."""
    last = float(noise_levels(cfg)[-1])
    if cfg.grid == "cosine":
        return last, None
    return last, "max_noise_level" if cfg.num_steps == 1 else "min_noise_level"


def noise_levels(cfg: StudentSamplerConfig) -> np.ndarray:
    """The K noise levels, decreasing, float64 numpy `[K]` (`cfg.grid`, see module doc)."""
    k = cfg.num_steps
    if cfg.grid == "cosine":
        a, b = cosine_schedule_ab(cfg.cosine_shift, cfg.cosine_logsnr_min, cfg.cosine_logsnr_max)
        t = np.arange(k, 0, -1, dtype=np.float64) / k
        return np.tan(a * t + b) / cfg.cosine_shift
    if k == 1:
        return np.array([cfg.max_noise_level], np.float64)
    frac = np.arange(k) / (k - 1)
    hi, lo = cfg.max_noise_level ** (1 / cfg.rho), cfg.min_noise_level ** (1 / cfg.rho)
    levels = (hi + frac * (lo - hi)) ** cfg.rho
    levels[0], levels[-1] = cfg.max_noise_level, cfg.min_noise_level  # exact ends
    return levels


def ddim_eta_step(
    y_t: jax.Array,
    x0_hat: jax.Array,
    sigma_t: jax.Array,
    sigma_s: jax.Array,
    eta: float | jax.Array,
    z: jax.Array,
) -> jax.Array:
    """One DDIM-eta posterior step `y_t -> y_s` in VE form (module doc).

    Args:
      y_t: noisy state `[B, ...]` at level `sigma_t`.
      x0_hat: the denoiser's prediction `[B, ...]`.
      sigma_t, sigma_s: `[B]` (or scalars) with `sigma_t > sigma_s >= 0`.
      eta: stochasticity in [0, 1].
      z: unit-variance noise shaped like `y_t`.
    Returns `y_s` `[B, ...]`; equals `x0_hat` where `sigma_s == 0`.
    """

    def bc(s):
        s = jnp.asarray(s, y_t.dtype)
        return s.reshape(s.shape + (1,) * (y_t.ndim - s.ndim)) if s.ndim else s

    st, ss = bc(sigma_t), bc(sigma_s)
    eps_hat = (y_t - x0_hat) / st
    ratio2 = jnp.clip((ss / st) ** 2, 0.0, 1.0)
    c = eta * ss * jnp.sqrt(1.0 - ratio2)
    det = jnp.sqrt(jnp.maximum(ss**2 - c**2, 0.0))
    return x0_hat + det * eps_hat + c * z


class Trajectory(NamedTuple):
    """A student sampling run.

    states: `[K, B, ...]` the noisy state `y_k` fed to the network at level k.
    predictions: `[K, B, ...]` the network's `x0_hat` at level k.
    sigmas: `[K]` the noise levels.
    sample: `[B, ...]` the final sample (= predictions[-1]).
    """

    states: jax.Array
    predictions: jax.Array
    sigmas: jax.Array
    sample: jax.Array


def _chain(
    denoise_fn: DenoiseFn,
    params: Any,
    rng: jax.Array,
    cond: Any,
    shape: tuple[int, ...],
    noise_fn: NoiseFn,
    cfg: StudentSamplerConfig,
    stop_gradient: bool,
    keep: bool,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """The K-step chain: (sample, states [K, B, ...], predictions [K, B, ...]); the stacks are
    None unless `keep`. The first K - 1 steps run in a `lax.scan` whose every step draws its
    posterior noise (none when eta is a static 0); the last network call, whose next level is 0,
    runs after the loop and its prediction is the sample. No `lax.cond` in the loop and no
    stacked outputs without `keep`: both cost time on XLA:CPU (docs/distill.md, "Speed")."""
    levels = jnp.asarray(noise_levels(cfg), jnp.float32)
    batch = shape[0]
    draw = num_noise_draws(cfg) > 1
    sg = jax.lax.stop_gradient if stop_gradient else (lambda x: x)

    def denoise(y, s_t):
        return sg(denoise_fn(params, y, jnp.full((batch,), s_t), cond))

    def body(y, xs):
        k, s_t, s_s = xs
        x0_hat = denoise(y, s_t)
        if draw:
            z = noise_fn(jax.random.fold_in(rng, k + 1), shape).astype(jnp.float32)
        else:
            z = jnp.zeros(shape, jnp.float32)
        y_next = ddim_eta_step(y, x0_hat, s_t, s_s, cfg.eta, z)
        return y_next, ((y, x0_hat) if keep else None)

    y0 = (levels[0] * noise_fn(jax.random.fold_in(rng, 0), shape)).astype(jnp.float32)
    states, preds = [], []
    y_last = y0
    if cfg.num_steps > 1:  # (a zero-length scan has no output type outside jit)
        steps = (jnp.arange(cfg.num_steps - 1), levels[:-1], levels[1:])
        y_last, stacked = jax.lax.scan(body, y0, steps)
        if keep:
            states, preds = [stacked[0]], [stacked[1]]
    sample = denoise(y_last, levels[-1])
    if not keep:
        return sample, None, None
    states = jnp.concatenate([*states, y_last[None]])
    predictions = jnp.concatenate([*preds, sample[None]])
    return sample, states, predictions


def sample_trajectory(
    denoise_fn: DenoiseFn,
    params: Any,
    rng: jax.Array,
    cond: Any,
    shape: tuple[int, ...],
    noise_fn: NoiseFn,
    cfg: StudentSamplerConfig,
    stop_gradient: bool = True,
) -> Trajectory:
    """Run the K-step sampler and keep every intermediate state (on-policy training modes).

    `shape = (B, ...)` is the sample shape; `cond` is passed unchanged to `denoise_fn`. The
    initial noise uses `fold_in(rng, 0)` and the step-k posterior noise `fold_in(rng, k + 1)`,
    so `sample` and `sample_trajectory` give the same sample for the same rng. The last step's
    noise (coefficient 0) is never drawn, nor any step noise when eta = 0. With
    `stop_gradient` (default) nothing here is differentiated (the student's on-policy sampler
    carries no gradient; rmmd.md §2.1 idea 3).
    """
    final, states, preds = _chain(
        denoise_fn, params, rng, cond, shape, noise_fn, cfg, stop_gradient, keep=True
    )
    levels = jnp.asarray(noise_levels(cfg), jnp.float32)
    return Trajectory(states=states, predictions=preds, sigmas=levels, sample=final)


def sample(
    denoise_fn: DenoiseFn,
    params: Any,
    rng: jax.Array,
    cond: Any,
    shape: tuple[int, ...],
    noise_fn: NoiseFn,
    cfg: StudentSamplerConfig,
) -> jax.Array:
    """Draw student samples `[B, ...]` with K denoiser calls (same call shape as the teacher's
    `dpm_solver.sample`); differentiable through the whole chain if the caller wants it."""
    return _chain(
        denoise_fn, params, rng, cond, shape, noise_fn, cfg, stop_gradient=False, keep=False
    )[0]
