"""Fair CRPS: scoringrules, brute force, invariants, and the distillation reward's twin."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scoringrules as sr

from gencast_rmmd.evaluation.crps import fair_crps, fair_crps_parts, spread_from_sorted


def brute_force_fair(ens: np.ndarray, y: float) -> float:
    m = len(ens)
    skill = np.mean(np.abs(ens - y))
    pairs = sum(abs(a - b) for a, b in itertools.permutations(ens, 2))
    return skill - 0.5 * (pairs / (m * (m - 1)) if m > 1 else 0.0)


@pytest.mark.parametrize("m", [2, 3, 5, 7, 50])
def test_matches_scoringrules_fair(m):
    rng = np.random.default_rng(m)
    ens = rng.standard_normal((m, 40, 3)).astype(np.float32)
    ens[1] = ens[0]  # repeated members are allowed
    y = rng.standard_normal((40, 3)).astype(np.float32)
    ours = fair_crps(ens, y, axis=0)
    ref = sr.crps_ensemble(y, np.moveaxis(ens, 0, -1), estimator="fair")
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", [1, 2, 4, 9])
def test_matches_brute_force_pairs(m):
    rng = np.random.default_rng(10 + m)
    ens = rng.normal(3.0, 2.0, size=(m, 25))
    y = rng.normal(3.0, 2.0, size=25)
    ours = fair_crps(ens, y, axis=0)
    ref = [brute_force_fair(ens[:, k], y[k]) for k in range(25)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


def test_invariants():
    rng = np.random.default_rng(0)
    ens = rng.standard_normal((7, 200))
    y = rng.standard_normal(200)
    skill, spread = fair_crps_parts(ens, y)
    np.testing.assert_allclose(fair_crps(ens, y), skill - 0.5 * spread)
    # Translation invariance, member-order invariance, axis handling, sorted fast path.
    np.testing.assert_allclose(fair_crps(ens + 5.0, y + 5.0), fair_crps(ens, y), atol=1e-12)
    np.testing.assert_allclose(fair_crps(ens[::-1], y), fair_crps(ens, y), atol=1e-12)
    np.testing.assert_allclose(fair_crps(ens.T, y, axis=1), fair_crps(ens, y), atol=1e-12)
    s2 = fair_crps_parts(np.sort(ens, axis=0), y, sorted_ensemble=True)
    np.testing.assert_allclose(s2[1], spread)
    # Fair <= standard (nrg) pointwise, with the documented gap pair_mean / (2M).
    nrg = sr.crps_ensemble(y, ens.T, estimator="nrg")
    np.testing.assert_allclose(nrg - fair_crps(ens, y), spread / (2 * 7), atol=1e-10)
    # M = 1: spread 0, CRPS = MAE.
    np.testing.assert_allclose(fair_crps(ens[:1], y), np.abs(ens[0] - y))
    assert np.all(spread_from_sorted(np.sort(ens, axis=0)) >= 0)


def test_fair_is_unbiased_for_true_crps():
    # E[fair CRPS of M members] equals the CRPS of N(0,1) at y, for any M (Ferro 2014).
    rng = np.random.default_rng(1)
    y = 0.7
    true = sr.crps_normal(y, 0.0, 1.0)
    for m in (2, 4):
        ens = rng.standard_normal((m, 200_000))
        est = fair_crps(ens, np.full(200_000, y)).mean()
        # standard error of the mean is ~0.003; 5 sigma tolerance.
        assert abs(est - true) < 0.015, (m, est, true)


def test_matches_distillation_reward():
    crps_mod = pytest.importorskip("gencast_rmmd.distill.crps")
    rng = np.random.default_rng(3)
    ens = rng.standard_normal((6, 30)).astype(np.float32)
    y = rng.standard_normal(30).astype(np.float32)
    theirs = np.asarray(crps_mod.fair_crps(ens, y, axis=0))
    np.testing.assert_allclose(theirs, fair_crps(ens, y, axis=0), rtol=1e-5, atol=1e-6)
