"""Rewards: values against brute-force definitions, gradients against finite differences."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gencast_rmmd.image import rewards as R
from gencast_rmmd.image.classifier import Classifier, build_classifier
from gencast_rmmd.image.config import ClassifierConfig

jax.config.update("jax_enable_x64", False)


def _fd_grad(f, x, eps=1e-3):
    """Central finite-difference gradient of scalar f at x (float64 numpy)."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in itertools.product(*map(range, x.shape)):
        e = np.zeros_like(x)
        e[idx] = eps
        g[idx] = (
            float(f(jnp.asarray(x + e, jnp.float32))) - float(f(jnp.asarray(x - e, jnp.float32)))
        ) / (2 * eps)
    return g


def test_bw_rgb_is_distance_to_grayscale():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 3, 3)).astype(np.float32)
    gray = np.repeat((x @ np.array([0.299, 0.587, 0.114]))[..., None], 3, -1)
    np.testing.assert_allclose(R.bw_reward(jnp.asarray(gray)), 0.0, atol=1e-7)
    want = -np.mean((x - gray) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(R.bw_reward(jnp.asarray(x)), want, rtol=1e-5)

    def f(y):
        return jnp.sum(R.bw_reward(y))

    np.testing.assert_allclose(jax.grad(f)(jnp.asarray(x)), _fd_grad(f, x), atol=2e-3)


def test_bw_one_channel_is_distance_to_binary():
    x = np.array([[-1.0, 1.0], [0.0, 0.5]], np.float32)[None, :, :, None]
    # distances to nearest of {-1, +1}: 0, 0, 1, 0.5 -> mean of squares = (1 + .25)/4
    np.testing.assert_allclose(R.bw_reward(jnp.asarray(x)), [-(1.0 + 0.25) / 4], rtol=1e-6)
    rng = np.random.default_rng(1)
    y = rng.uniform(0.05, 0.95, (2, 3, 3, 1)).astype(np.float32) * rng.choice([-1, 1], (2, 3, 3, 1))

    def f(z):
        return jnp.sum(R.bw_reward(z))

    g = jax.grad(f)(jnp.asarray(y))
    np.testing.assert_allclose(g, _fd_grad(f, y), atol=2e-3)
    # ascent on the reward moves pixels toward black or white
    assert float(f(jnp.asarray(y) + 0.01 * g)) > float(f(jnp.asarray(y)))


def test_laplacian_matches_brute_force_neighbour_pairs_and_gradient():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    want = []
    for b in range(2):
        tot, n = 0.0, 0
        for i in range(4):
            for j in range(5):
                for di, dj in ((0, 1), (1, 0)):
                    if i + di < 4 and j + dj < 5:
                        tot += np.sum((x[b, i, j] - x[b, i + di, j + dj]) ** 2)
                        n += 3
        want.append(-tot / n)
    np.testing.assert_allclose(R.laplacian_reward(jnp.asarray(x)), want, rtol=1e-5)
    const = np.full((1, 4, 5, 3), 0.3, np.float32)
    np.testing.assert_allclose(R.laplacian_reward(jnp.asarray(const)), 0.0, atol=1e-7)

    def f(z):
        return jnp.sum(R.laplacian_reward(z))

    xs = x[:1, :3, :3, :1]
    np.testing.assert_allclose(jax.grad(f)(jnp.asarray(xs)), _fd_grad(f, xs), atol=2e-3)


def test_classifier_reward_is_log_prob_and_gradient():
    cfg = ClassifierConfig(width=4, feature_dim=6)
    net = build_classifier(cfg, 10)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
    params = net.init(jax.random.PRNGKey(1), x)
    clf = Classifier(params=params, apply=net.apply)
    reward = R.make_reward("classifier", clf)
    y = jnp.array([1, 7, 3])
    logits = clf.logits(x)
    want = logits[jnp.arange(3), y] - jax.scipy.special.logsumexp(logits, axis=-1)
    np.testing.assert_allclose(reward(x, y), want, rtol=1e-5)
    assert bool(jnp.all(reward(x, y) < 0))
    xs = jnp.asarray(x[:1])

    @jax.jit
    def f(z):
        return jnp.sum(reward(z, y[:1]))

    # directional derivatives along random directions vs central differences
    g = jax.grad(f)(xs)
    for k in range(3):
        v = jax.random.normal(jax.random.PRNGKey(10 + k), xs.shape)
        fd = (float(f(xs + 1e-2 * v)) - float(f(xs - 1e-2 * v))) / 2e-2
        np.testing.assert_allclose(float(jnp.sum(g * v)), fd, rtol=2e-2, atol=1e-3)


def test_make_reward_errors():
    with pytest.raises(ValueError, match="unknown reward"):
        R.make_reward("clip")
    with pytest.raises(ValueError, match="classifier"):
        R.make_reward("classifier", None)
