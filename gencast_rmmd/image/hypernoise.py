"""HyperNoise (Eyring et al. 2025, "Noise Hypernetworks"): reward tuning in the noise space.

The distilled student G stays frozen. A small network f_phi learns a modulation of the student's
initial noise, eps' = eps + f_phi(eps, y), trained with

    L = -lambda mean_b R(G(eps'_b), y_b) + kl_weight * mean_b 0.5 mean_pixels f_phi(eps_b, y_b)^2

The second term is the KL divergence between N(f, I) and N(0, I) (a Gaussian shifted by f), per
pixel: the tractable stand-in for the KL of the modulated noise distribution to the standard
normal that the paper regularises with. The reward gradient flows through the whole K-step chain
(every student call) into eps' only; the chain's later posterior noise is unchanged, so with
f_phi = 0 (the zero-initialised output layer) the samples are exactly the student's.

Differences from the paper, on purpose: f_phi is a three-layer class-conditional conv net (the
paper uses a LoRA copy of the generator as the hypernetwork); sizes in `FinetuneConfig`
(`hypernoise_width`, `hypernoise_kl`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from gencast_rmmd.distill import student_sampler as ss
from gencast_rmmd.model.sh_noise import gaussian_noise

NoiseApply = Callable[[Any, jax.Array, jax.Array], jax.Array]


def _noise_net(width: int, num_classes: int):
    def fn(eps: jax.Array, labels: jax.Array) -> jax.Array:
        h = hk.Conv2D(width, 3, name="conv_in")(eps)
        h = h + hk.Embed(num_classes, width, name="class_embed")(labels)[:, None, None, :]
        h = jax.nn.swish(h)
        h = jax.nn.swish(hk.Conv2D(width, 3, name="conv_mid")(h))
        zeros = hk.initializers.Constant(0.0)
        return hk.Conv2D(eps.shape[-1], 3, w_init=zeros, b_init=zeros, name="conv_out")(h)

    return hk.without_apply_rng(hk.transform(fn))


@functools.lru_cache(maxsize=8)
def noise_net(width: int, num_classes: int) -> hk.Transformed:
    """The modulation network f_phi(eps [B, H, W, C], labels [B]) -> [B, H, W, C] (zero at init)."""
    return _noise_net(width, num_classes)


def init_noise_net(
    width: int, num_classes: int, image_shape: tuple[int, ...], seed: int
) -> tuple[NoiseApply, Any]:
    """`(apply, params)` of f_phi for images `image_shape = (H, W, C)`."""
    net = noise_net(width, num_classes)
    eps = jnp.zeros((1, *image_shape), jnp.float32)
    params = net.init(jax.random.PRNGKey(seed), eps, jnp.zeros((1,), jnp.int32))
    return net.apply, params


def modulated_noise(
    apply: NoiseApply, phi: Any, rng: jax.Array, labels: jax.Array, shape: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
    """`(eps + f_phi(eps, y), f_phi(eps, y))` for the initial draw the sampler would make from
    `rng` (`fold_in(rng, 0)`, `student_sampler`'s convention)."""
    eps = gaussian_noise(jax.random.fold_in(rng, 0), shape)
    f = apply(phi, eps, labels)
    return eps + f, f


def hypernoise_loss(
    denoise_fn: ss.DenoiseFn,
    student_params: Any,
    apply: NoiseApply,
    phi: Any,
    rng: jax.Array,
    labels: jax.Array,
    shape: tuple[int, ...],
    cfg: ss.StudentSamplerConfig,
    reward: Callable[[jax.Array, jax.Array], jax.Array],
    lam: float | jax.Array,
    kl_weight: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`-lam mean R(G(eps + f)) + kl_weight * 0.5 mean f^2` (module docstring); gradient w.r.t.
    `phi` only (the student is frozen)."""
    init, f = modulated_noise(apply, phi, rng, labels, shape)
    x0 = ss.sample(
        denoise_fn, jax.lax.stop_gradient(student_params), rng, labels, shape, gaussian_noise,
        cfg, init_noise=init,
    )  # fmt: skip
    r = jnp.mean(reward(x0, labels))
    kl = 0.5 * jnp.mean(f**2)
    return -lam * r + kl_weight * kl, {"reward": r, "noise_kl": kl}
