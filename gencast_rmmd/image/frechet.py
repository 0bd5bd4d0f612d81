"""Frechet distances between image sets in a feature space.

`frechet_distance(mu1, cov1, mu2, cov2) = |mu1 - mu2|^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})`
(the Frechet / 2-Wasserstein distance between two Gaussians; Heusel et al. 2017 for FID).

On the embedded digits the feature space is the penultimate layer of the project's *evaluation*
classifier (`gencast_rmmd.image.classifier`), and every output calls the number
`frechet_classifier_distance`, never "FID": it is not comparable with published FIDs.

Standard FID uses InceptionV3 pool-3 features (`gencast_rmmd.image.inception`), from weights the
user supplies (this project does not ship or download them); `load_inception_reference_stats`
reads reference statistics (`mu` [2048], `sigma` [2048, 2048] in an `.npz`, the layout of the
common `fid_stats_*.npz` files).
"""

from __future__ import annotations

import pathlib

import numpy as np

from gencast_rmmd.errors import DataError


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[D]` and unbiased covariance `[D, D]` of features `[N, D]` (float64)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], found {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def sqrt_psd(cov: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance (eigenvalues below 0 from rounding taken as 0)."""
    c = np.atleast_2d(np.asarray(cov, np.float64))
    lam, vec = np.linalg.eigh((c + c.T) / 2)
    return (vec * np.sqrt(np.clip(lam, 0.0, None))) @ vec.T


def frechet_distance(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray,
    sqrt_cov1: np.ndarray | None = None,
) -> float:  # fmt: skip
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2) (module docstring formula).

    `Tr (cov1 cov2)^{1/2}` is the sum of the square roots of the eigenvalues of the symmetric
    `S cov2 S`, `S = cov1^{1/2}` (similar to `cov1 cov2`, so the same eigenvalues), from two
    symmetric eigendecompositions: exact for singular covariances too (fewer samples than
    features), where a general matrix square root (`scipy.linalg.sqrtm`) needs an offset, and
    faster at FID's 2048 dimensions (`benchmarks/fid.py`, 2 cores: 1.8 s against 10.1 s, 0.7 s
    with the reference's root given). `sqrt_cov1` (`sqrt_psd`) saves the first one when cov1 is
    a fixed reference.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)
    s = sqrt_psd(cov1) if sqrt_cov1 is None else sqrt_cov1
    m = s @ cov2 @ s
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean)


def frechet_distance_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between the Gaussian fits of two feature sets `[N1, D]`, `[N2, D]`."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def load_inception_reference_stats(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Read FID reference statistics `mu` [2048] and `sigma` [2048, 2048] from a user `.npz`."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise DataError(f"FID reference statistics {str(p)!r} not found (expected an .npz)")
    with np.load(p, allow_pickle=False) as f:
        if not {"mu", "sigma"} <= set(f.files):
            raise DataError(f"{p}: expected arrays 'mu' and 'sigma', found {sorted(f.files)}")
        mu, sigma = f["mu"], f["sigma"]
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(f"{p}: expected mu [D] and sigma [D, D], found {mu.shape}, {sigma.shape}")
    from gencast_rmmd.image.inception import FEATURE_DIM

    if mu.shape[0] != FEATURE_DIM:
        raise DataError(
            f"{p}: FID reference statistics must be of the {FEATURE_DIM} InceptionV3 pool-3 "
            f"features, found mu {list(mu.shape)}"
        )
    return mu, sigma
