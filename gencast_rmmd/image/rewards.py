"""Differentiable image rewards (rmmd.md §2.7), each `reward(x [B, H, W, C], labels [B]) -> [B]`.

Higher is better. Images are in [-1, 1].

- `bw` (black-and-white).
  RGB (C = 3): minus the mean squared distance of each pixel to its grey value,
  `R = -mean_{p} sum_c (x_{p,c} - g_p)^2 / 3` with `g = 0.299 R + 0.587 G + 0.114 B` (ITU-R 601
  luma), i.e. the distance to the image's projection on the set of greyscale images.
  One channel (C = 1): every image already is greyscale, so the same construction is applied to the
  set that "black-and-white" names for a one-channel image, the *binary* images with pixels in
  {-1 (black), +1 (white)}. The projection of a pixel is sign(x), and
  `R = -mean_p (|x_p| - 1)^2`: a contrast / binarisation reward, zero only for pure black-and-white.
- `laplacian` (smoothness): minus the mean squared difference of each pixel to each of its 4
  neighbours (edge pixels use their in-image neighbours only), averaged over channels:
  `R = -mean over neighbour pairs (x_p - x_q)^2`, i.e. proportional to -(x^T L x) with L the grid
  graph Laplacian.
- `classifier`: `log p(y | x)` under the project's reward classifier, for the conditioning class y.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gencast_rmmd.image.classifier import Classifier

Reward = Callable[[jax.Array, jax.Array], jax.Array]

_LUMA = jnp.array([0.299, 0.587, 0.114], jnp.float32)


def bw_reward(x: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Black-and-white reward `[B]` (see the module docstring for RGB and one-channel images)."""
    del labels
    if x.shape[-1] == 3:
        gray = jnp.sum(x * _LUMA, axis=-1, keepdims=True)
        return -jnp.mean((x - gray) ** 2, axis=(1, 2, 3))
    if x.shape[-1] == 1:
        return -jnp.mean((jnp.abs(x) - 1.0) ** 2, axis=(1, 2, 3))
    raise ValueError(f"bw reward needs 1 or 3 channels, found {x.shape[-1]}")


def laplacian_reward(x: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Smoothness reward `[B]`: minus the mean squared difference over 4-neighbour pairs."""
    del labels
    dv = (x[:, 1:, :, :] - x[:, :-1, :, :]) ** 2
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2
    total = jnp.sum(dv, axis=(1, 2, 3)) + jnp.sum(dh, axis=(1, 2, 3))
    n_pairs = dv[0].size + dh[0].size
    return -total / n_pairs


def make_classifier_reward(clf: Classifier) -> Reward:
    """`R(x, y) = log softmax(logits(x))[y]` `[B]` under the reward classifier."""

    def reward(x: jax.Array, labels: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(clf.logits(x), axis=-1)
        return jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]

    return reward


def make_reward(name: str, reward_classifier: Classifier | None = None) -> Reward:
    """Reward by name: `bw`, `laplacian` or `classifier` (needs the reward classifier)."""
    if name == "bw":
        return bw_reward
    if name == "laplacian":
        return laplacian_reward
    if name == "classifier":
        if reward_classifier is None:
            raise ValueError("the classifier reward needs a trained reward classifier")
        return make_classifier_reward(reward_classifier)
    raise ValueError(f"unknown reward {name!r}; allowed: bw, laplacian, classifier")
