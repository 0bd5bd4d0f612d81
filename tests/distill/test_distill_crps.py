"""The fair CRPS: equal to scoringrules' fair estimator and to the brute-force pair formula."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scoringrules as sr

from gencast_rmmd.distill.crps import crps_reward, fair_crps, weighted_mean


def _brute(ens, y):
    m = ens.shape[0]
    skill = np.mean(np.abs(ens - y), axis=0)
    pairs = sum(np.abs(ens[i] - ens[j]) for i, j in itertools.product(range(m), repeat=2) if i != j)
    return skill - pairs / (2 * m * (m - 1))


@pytest.mark.parametrize("m", [2, 3, 8])
def test_fair_crps_matches_scoringrules_and_brute_force(m):
    rng = np.random.default_rng(m)
    ens = rng.normal(size=(m, 4, 5, 3)).astype(np.float64)
    ens[1, 0, 0, 0] = ens[0, 0, 0, 0]  # ties
    y = rng.normal(size=(4, 5, 3))
    ours = np.asarray(fair_crps(jnp.asarray(ens, jnp.float32), jnp.asarray(y, jnp.float32)))
    ref = sr.crps_ensemble(y, np.moveaxis(ens, 0, -1), estimator="fair")
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, _brute(ens, y), rtol=1e-5, atol=1e-6)
    # member axis elsewhere
    moved = fair_crps(jnp.asarray(np.moveaxis(ens, 0, 2), jnp.float32), jnp.asarray(y), axis=2)
    np.testing.assert_allclose(np.asarray(moved), ref, rtol=1e-5, atol=1e-6)


def test_two_member_closed_form_and_single_member():
    x1, x2, y = 1.0, 3.0, 1.5
    v = fair_crps(jnp.array([x1, x2]), jnp.array(y))
    assert float(v) == pytest.approx(0.5 * (abs(x1 - y) + abs(x2 - y)) - 0.5 * abs(x1 - x2))
    assert float(fair_crps(jnp.array([2.0]), jnp.array(0.5))) == pytest.approx(1.5)


def test_fair_crps_gradient_matches_analytic():
    # d/dx_i [1/M sum|x_j - y| - 1/(2M(M-1)) sum_{j!=k}|x_j - x_k|]
    #   = sign(x_i - y)/M - 1/(M(M-1)) sum_{k != i} sign(x_i - x_k)
    rng = np.random.default_rng(0)
    ens = rng.normal(size=(4,))
    y = 0.1
    g = np.asarray(jax.grad(lambda e: fair_crps(e, jnp.asarray(y)))(jnp.asarray(ens)))
    m = len(ens)
    expect = [
        np.sign(ens[i] - y) / m
        - sum(np.sign(ens[i] - ens[k]) for k in range(m) if k != i) / (m * (m - 1))
        for i in range(m)
    ]
    np.testing.assert_allclose(g, expect, rtol=1e-5)


def test_crps_reward_is_minus_weighted_mean():
    rng = np.random.default_rng(1)
    ens = jnp.asarray(rng.normal(size=(2, 3, 4, 5)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
    w = jnp.asarray(rng.uniform(0.5, 1.5, size=(4, 1)), jnp.float32)
    r = crps_reward(lambda b: b["y"], w)(ens, None, {"y": y})
    expect = -np.mean(np.asarray(fair_crps(ens, y)) * np.asarray(w), axis=(1, 2))
    np.testing.assert_allclose(np.asarray(r), expect, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(weighted_mean(jnp.ones((3, 4, 5)), None)), np.ones(3))
