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


def test_frechet_trace_term_matches_a_general_matrix_square_root():
    """Non-commuting covariances: the eigendecomposition form equals Tr sqrtm(C1 C2) (scipy),
    also given S = C1^(1/2) ahead; with fewer samples than features (singular covariances) it
    stays finite and >= 0, and a set against itself scores 0."""
    import scipy.linalg

    from gencast_rmmd.image.frechet import sqrt_psd

    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))
    (m1, c1), (m2, c2) = gaussian_stats(a), gaussian_stats(b)
    tr = np.real(np.trace(scipy.linalg.sqrtm(c1 @ c2)))
    want = (m1 - m2) @ (m1 - m2) + np.trace(c1) + np.trace(c2) - 2 * tr
    np.testing.assert_allclose(frechet_distance(m1, c1, m2, c2), want, rtol=1e-10)
    s = sqrt_psd(c1)
    np.testing.assert_allclose(s @ s, c1, atol=1e-12)
    np.testing.assert_allclose(frechet_distance(m1, c1, m2, c2, sqrt_cov1=s), want, rtol=1e-10)
    few = rng.normal(size=(5, 20))  # rank 4 covariances of 20 features
    other = rng.normal(size=(7, 20)) + 0.5
    d = frechet_distance_features(few, other)
    assert np.isfinite(d) and d > 0
    # the 16 zero eigenvalues come back as rounding noise ~1e-15, whose roots add up to ~1e-6
    scale = np.trace(gaussian_stats(few)[1])
    assert abs(frechet_distance_features(few, few)) < 1e-7 * scale


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


def test_evaluator_pools_sample_sets_into_one_distance():
    """`evaluate_pooled`: one distance of the concatenated features (not a mean of per-set ones),
    per-set distances kept, other metrics averaged; a pooled estimate of a set drawn like the
    reference sits nearer the true 0 than the mean of small-set estimates (bias ~ D / N)."""
    import jax.numpy as jnp

    from gencast_rmmd.image.classifier import Classifier
    from gencast_rmmd.image.evaluation import Evaluator

    d = 6
    w = np.random.default_rng(2).normal(size=(4, d)).astype(np.float32)

    def apply(params, x):  # features = linear map of the 2x2 pixels; logits = first 3 features
        f = jnp.reshape(x, (x.shape[0], -1)) @ params
        return f, f[:, :3]

    rng = np.random.default_rng(3)
    ref = rng.normal(size=(4000, 2, 2, 1)).astype(np.float32)
    labels = np.zeros(60, np.int64)
    ev = Evaluator(Classifier(params=jnp.asarray(w), apply=apply), ref, labels, rewards={})
    sets = [rng.normal(size=(60, 2, 2, 1)).astype(np.float32) for _ in range(5)]
    out = ev.evaluate_pooled(sets)
    feats = np.concatenate([np.asarray(apply(w, s)[0]) for s in sets])
    want = frechet_distance(*gaussian_stats(feats), ev.ref_mu, ev.ref_cov)
    np.testing.assert_allclose(out["frechet_classifier_distance"], want, rtol=1e-6)
    per = [ev.evaluate(s)["frechet_classifier_distance"] for s in sets]
    np.testing.assert_allclose(out["frechet_classifier_distance_per_set"], per, rtol=1e-6)
    np.testing.assert_allclose(
        out["accuracy"], np.mean([ev.evaluate(s)["accuracy"] for s in sets]), rtol=1e-6
    )
    assert out["samples"] == 300
    assert out["frechet_classifier_distance"] < np.mean(per)
