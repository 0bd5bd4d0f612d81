"""Frechet distance against closed forms."""

from __future__ import annotations

import numpy as np

from gencast_rmmd.image.frechet import frechet_distance, frechet_distance_features, gaussian_stats


def test_frechet_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    np.testing.assert_allclose(
        frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])),
        4.0 + 1.0,
        rtol=1e-10,
    )
    # diagonal: sum over dims
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    want = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    np.testing.assert_allclose(frechet_distance(m1, np.diag(v1), m2, np.diag(v2)), want, rtol=1e-8)


def test_frechet_rotation_invariant_and_zero_on_self():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 4))
    b = rng.normal(size=(300, 4)) * 1.5 + 0.3
    assert abs(frechet_distance_features(a, a)) < 1e-6
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    np.testing.assert_allclose(
        frechet_distance_features(a @ q, b @ q), frechet_distance_features(a, b), rtol=1e-6
    )
    mu, cov = gaussian_stats(a)
    np.testing.assert_allclose(cov, np.cov(a.T), rtol=1e-12)
    # commuting case (same eigenvectors): Tr(C1 + C2 - 2 sqrt(C1 C2)) = sum (sqrt l1 - sqrt l2)^2
    c1 = q @ np.diag([1.0, 2.0, 3.0, 4.0]) @ q.T
    c2 = q @ np.diag([4.0, 1.0, 1.0, 9.0]) @ q.T
    want = (1 - 2) ** 2 + (np.sqrt(2) - 1) ** 2 + (np.sqrt(3) - 1) ** 2 + (2 - 3) ** 2
    np.testing.assert_allclose(frechet_distance(np.zeros(4), c1, np.zeros(4), c2), want, rtol=1e-8)
