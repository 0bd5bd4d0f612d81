"""HyperNoise (Eyring et al. 2025, "Noise Hypernetworks"): reward tuning in the noise space.

The distilled student G stays frozen. A small network f_phi learns a modulation of the noise the
student is sampled from, eps' = eps + f_phi(eps, y), trained with

    L = -lambda mean_b R(G(eps'_b), y_b) + kl_weight * 0.5 sum_k mean_pixels f_phi(eps_k, y)^2

The second term is the KL divergence between N(f, I) and N(0, I) (a Gaussian shifted by f) per
pixel, summed over the noises: the tractable stand-in for the KL of the modulated noise
distribution to the standard normal that the paper regularises with. The reward gradient flows
through the whole K-step chain (every student call). With f_phi = 0 (the zero-initialised output
layer) the samples are exactly the student's.

Which noise: the paper's generators are deterministic maps of one initial noise. Our student is
stochastic (DDIM-eta, eta = 1 on images): its sample depends on the initial draw at sigma = 80
only weakly and mostly on the posterior noise of the later steps. Modulating only the initial
noise was measured to do nothing within 50 steps (reward unchanged to 4 digits at every lambda),
so f_phi modulates every noise the chain draws (initial and posterior), the same network for each.

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


def modulated_noise_fn(apply: NoiseApply, phi: Any, labels: jax.Array) -> ss.NoiseFn:
    """A sampler `noise_fn(rng, shape)` that returns `eps + f_phi(eps, y)` for the Gaussian draw
    `eps` the plain sampler would make from `rng`."""

    def noise_fn(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        eps = gaussian_noise(rng, shape)
        return eps + apply(phi, eps, labels)

    return noise_fn


def noise_kl(
    apply: NoiseApply,
    phi: Any,
    rng: jax.Array,
    labels: jax.Array,
    shape: tuple[int, ...],
    cfg: ss.StudentSamplerConfig,
) -> jax.Array:
    """`0.5 sum_j mean f_phi(eps_j)^2` over the noises the sampler draws, `eps_j` from
    `fold_in(rng, j)` for `j < ss.num_noise_draws(cfg)` (the initial draw and the posterior noises
    of steps 0..K-2; the last step goes to sigma = 0 and adds none)."""
    total = jnp.zeros((), jnp.float32)
    for k in range(ss.num_noise_draws(cfg)):
        eps = gaussian_noise(jax.random.fold_in(rng, k), shape)
        total = total + 0.5 * jnp.mean(apply(phi, eps, labels) ** 2)
    return total


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
    """`-lam mean R(G(eps + f)) + kl_weight * noise_kl` (module docstring); gradient w.r.t. `phi`
    only (the student is frozen)."""
    x0 = ss.sample(
        denoise_fn, jax.lax.stop_gradient(student_params), rng, labels, shape,
        modulated_noise_fn(apply, phi, labels), cfg,
    )  # fmt: skip
    r = jnp.mean(reward(x0, labels))
    kl = noise_kl(apply, phi, rng, labels, shape, cfg)
    return -lam * r + kl_weight * kl, {"reward": r, "noise_kl": kl}
