"""Standard FID's cost (`gencast_rmmd.image.inception`, `gencast_rmmd.image.frechet`); prints JSON.

Side by side in one process, random weights in the pytorch-fid layout (speed does not depend on
the values):

- InceptionV3 pool-3 features: images per second at 299 x 299 from 64 x 64 inputs (ImageNet 64),
  batches of 64, after compilation (and the compile seconds);
- the Frechet distance at 2048 dimensions: the project's trace term (symmetric
  eigendecompositions, `frechet_distance`), the same with the reference's square root given
  (`sqrt_cov1`, what `Evaluator` does per evaluation), and the general matrix square root
  (`scipy.linalg.sqrtm`, what FID code commonly uses), each on the same covariances of 4,000
  samples, with the largest difference between their distances.

Usage: python benchmarks/fid.py [--images 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_s(fn, repeats: int) -> tuple[float, object]:
    ts, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import scipy.linalg

    from gencast_rmmd.image import inception as inc
    from gencast_rmmd.image.frechet import frechet_distance, gaussian_stats, sqrt_psd

    rng = np.random.default_rng(0)
    state = inc.random_state(0)
    params = inc.prepare(state)
    x = rng.uniform(-1, 1, size=(args.images, 64, 64, 3)).astype(np.float32)
    t0 = time.perf_counter()
    inc.inception_features(params, x[:64])
    compile_s = time.perf_counter() - t0
    feat_s, feats = _median_s(lambda: inc.inception_features(params, x), args.repeats)

    d = inc.FEATURE_DIM
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    ref = gaussian_stats(rng.normal(size=(4000, d)))
    gen = gaussian_stats(rng.normal(size=(4000, d)) @ mix + 0.1)
    eig_s, eig = _median_s(lambda: frechet_distance(*ref, *gen), args.repeats)
    s = sqrt_psd(ref[1])
    given_s, given = _median_s(lambda: frechet_distance(*ref, *gen, sqrt_cov1=s), args.repeats)

    def with_sqrtm():
        covmean = np.real(scipy.linalg.sqrtm(ref[1] @ gen[1]))
        diff = ref[0] - gen[0]
        return float(diff @ diff + np.trace(ref[1]) + np.trace(gen[1]) - 2 * np.trace(covmean))

    sqrtm_s, plain = _median_s(with_sqrtm, args.repeats)
    print(
        json.dumps(
            {
                "inception": {
                    "images": args.images,
                    "input": [64, 64, 3],
                    "network_input": [inc.INPUT_SIZE, inc.INPUT_SIZE, 3],
                    "compile_seconds": round(compile_s, 2),
                    "images_per_second": round(args.images / feat_s, 2),
                    "seconds_per_image": round(feat_s / args.images, 4),
                    "features_finite": bool(np.isfinite(feats).all()),
                },
                "frechet_2048": {
                    "eigh_seconds": round(eig_s, 3),
                    "eigh_reference_sqrt_given_seconds": round(given_s, 3),
                    "scipy_sqrtm_seconds": round(sqrtm_s, 3),
                    "sqrtm_over_eigh": round(sqrtm_s / eig_s, 2),
                    "sqrtm_over_eigh_given": round(sqrtm_s / given_s, 2),
                    "distance": eig,
                    "max_abs_difference": max(abs(eig - plain), abs(given - plain)),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
