"""The image diffusion model: U-ViT + shifted cosine VP schedule, seen as a VE/EDM denoiser.

`ImageModel` bundles the Haiku U-ViT (`init`, `apply -> v`), the schedule and the views the rest
of the code needs:

- `denoise_fn(params, x_noisy, sigma, cond) -> x0_hat`: the generic VE contract
  (docs/contracts.md), by the exact reparametrisation `z = x / sqrt(1 + sigma^2)`,
  `logSNR = -2 log sigma` (`gencast_rmmd.image.diffusion.make_ve_denoise_fn`). `cond` is the
  labels `[B]` (no dropout) or `(labels, rng)` (dropout on: the student's randomness xi).
- `teacher_denoise_fn`: the same network, always without dropout (frozen teacher).
- `sample(params, rng, labels, sampler_cfg)`: the distill area's K-step DDIM-eta sampler
  (`gencast_rmmd.distill.student_sampler.sample`) on this denoiser, i.i.d. Gaussian noise.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gencast_rmmd.distill import student_sampler as ss
from gencast_rmmd.image import diffusion
from gencast_rmmd.image.config import ScheduleConfig, UViTConfig
from gencast_rmmd.image.uvit import build_uvit
from gencast_rmmd.model.sh_noise import gaussian_noise


@functools.lru_cache(maxsize=16)  # one jitted init per network in use
def _jitted(fn: Callable[..., Any]) -> Callable[..., Any]:
    return jax.jit(fn)


@dataclasses.dataclass(frozen=True)
class ImageModel:
    """U-ViT v-prediction network + schedule; see the module docstring."""

    net_init: Callable[..., Any]
    net_apply: Callable[..., jax.Array]
    schedule: diffusion.CosineSchedule
    image_shape: tuple[int, int, int]
    num_classes: int

    def init(self, rng: jax.Array) -> Any:
        """Fresh parameters (jitted: the same values as Haiku's op-by-op init, which compiles
        every initialiser on its own and took 20 s against 8 s for the digits U-ViT)."""
        h, w, c = self.image_shape
        z = jnp.zeros((2, h, w, c), jnp.float32)
        return _jitted(self.net_init)(rng, z, jnp.zeros((2,)), jnp.zeros((2,), jnp.int32))

    @property
    def denoise_fn(self) -> Callable[[Any, jax.Array, jax.Array, Any], jax.Array]:
        """VE `denoise_fn(params, x_noisy, sigma [B], cond) -> x0_hat` (dropout iff cond has rng)."""
        return diffusion.make_ve_denoise_fn(self.net_apply)

    @property
    def teacher_denoise_fn(self) -> Callable[[Any, jax.Array, jax.Array, Any], jax.Array]:
        """VE denoiser that ignores any dropout rng in `cond` (the frozen teacher)."""
        ve = diffusion.make_ve_denoise_fn(self.net_apply)

        def fn(params, x_noisy, sigma, cond):
            labels = cond[0] if isinstance(cond, tuple) else cond
            return ve(params, x_noisy, sigma, labels)

        return fn

    def vp_loss(self, params: Any, rng: jax.Array, x0: jax.Array, labels: jax.Array) -> jax.Array:
        """Teacher loss: `mean (v_pred - v)^2` with t ~ U(0, 1) (x0-MSE weighted by SNR + 1)."""
        r_t, r_e, r_d = jax.random.split(rng, 3)
        t = jax.random.uniform(r_t, (x0.shape[0],))
        logsnr = self.schedule.logsnr(t)
        eps = jax.random.normal(r_e, x0.shape)
        z = diffusion.diffuse(x0, logsnr, eps)
        v = self.net_apply(params, r_d, z, logsnr, labels)
        return jnp.mean((v - diffusion.v_target(x0, eps, logsnr)) ** 2)

    def sample(
        self,
        params: Any,
        rng: jax.Array,
        labels: jax.Array,
        sampler_cfg: ss.StudentSamplerConfig,
        noise_fn: ss.NoiseFn = gaussian_noise,
    ) -> jax.Array:
        """Samples `[B, H, W, C]` for `labels [B]` with the K-step DDIM-eta sampler (no dropout);
        `noise_fn(rng, shape)` draws every noise of the chain (HyperNoise modulates it)."""
        shape = (labels.shape[0],) + tuple(self.image_shape)
        return ss.sample(self.teacher_denoise_fn, params, rng, labels, shape, noise_fn, sampler_cfg)


def build_model(
    cfg: UViTConfig,
    schedule: ScheduleConfig,
    image_shape: tuple[int, int, int],
    num_classes: int,
) -> ImageModel:
    """The U-ViT image model for images `image_shape = (H, W, C)` and `num_classes` labels."""
    init, apply = build_uvit(cfg, num_classes, image_shape[-1])
    return ImageModel(
        net_init=init,
        net_apply=apply,
        schedule=diffusion.CosineSchedule(schedule),
        image_shape=tuple(image_shape),
        num_classes=num_classes,
    )
