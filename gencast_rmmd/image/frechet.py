"""Frechet distances between image sets in a feature space.

`frechet_distance(mu1, cov1, mu2, cov2) = |mu1 - mu2|^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})`
(the Frechet / 2-Wasserstein distance between two Gaussians; Heusel et al. 2017 for FID).

On the embedded digits the feature space is the penultimate layer of the project's *evaluation*
classifier (`gencast_rmmd.image.classifier`), and every output calls the number
`frechet_classifier_distance`, never "FID": it is not comparable with published FIDs.

Standard FID needs InceptionV3 pool-3 features, whose weights this project does not ship or
download. `load_inception_reference_stats` reads user-supplied reference statistics (`mu` [2048],
`sigma` [2048, 2048] in an `.npz`, the layout of the common `fid_stats_*.npz` files); the feature
extractor itself must be supplied by the user (see docs/image.md) and is not implemented here.
"""

from __future__ import annotations

import pathlib

import numpy as np
import scipy.linalg

from gencast_rmmd.errors import DataError


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[D]` and unbiased covariance `[D, D]` of features `[N, D]` (float64)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], found {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2) (module docstring formula).

    The matrix square root uses scipy's `sqrtm`; a tiny diagonal offset is added if the product is
    singular, and the (numerically) imaginary part is dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        off = np.eye(cov1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((cov1 + off) @ (cov2 + off))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


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
    return mu, sigma
