"""Evaluation of generated images: class accuracy, Frechet classifier distance, rewards.

Generated samples are conditioned on the labels of a fixed reference set (the whole dataset, so
the class mix matches); they are scored with the *evaluation* classifier (independent of the
reward classifier):

- `accuracy`: share of samples whose predicted class is the conditioning class;
- `frechet_classifier_distance`: Frechet distance between the Gaussian fits of the evaluation
  classifier's penultimate features of the samples and of the real reference images (not FID);
  with InceptionV3 weights (`inception`, `gencast_rmmd.image.inception`) the distance is
  standard FID instead, named `fid`: the same Frechet distance of InceptionV3 pool-3 features,
  against the reference statistics given (`reference_stats`) or else the reference images';
- `reward_<name>`: the mean of each reward over the samples.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.distill.student_sampler import StudentSamplerConfig
from gencast_rmmd.image.classifier import Classifier
from gencast_rmmd.image.frechet import frechet_distance, gaussian_stats, sqrt_psd
from gencast_rmmd.image.inception import INPUT_SIZE, inception_features
from gencast_rmmd.image.model import ImageModel
from gencast_rmmd.image.rewards import Reward

_SAMPLER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=32)
def _sampler(model: ImageModel, sampler_cfg: StudentSamplerConfig):
    return jax.jit(lambda p, rng, y: model.sample(p, rng, y, sampler_cfg))


@functools.lru_cache(maxsize=32)
def _noise_sampler(model: ImageModel, sampler_cfg: StudentSamplerConfig, apply):
    from gencast_rmmd.image.hypernoise import modulated_noise_fn

    def fn(p, rng, y, phi):
        return model.sample(p, rng, y, sampler_cfg, noise_fn=modulated_noise_fn(apply, phi, y))

    return jax.jit(fn)


def generate(
    model: ImageModel,
    params: Any,
    sampler_cfg: StudentSamplerConfig,
    labels: np.ndarray,
    seed: int,
    batch: int = 500,
    noise_net: tuple[Any, Any] | None = None,
) -> np.ndarray:
    """Samples `[N, H, W, C]` for `labels [N]` (batches of `batch`, batch i uses fold_in(seed, i)).
    `noise_net = (apply, phi)`: HyperNoise's modulation of the sampler's noise
    (`gencast_rmmd.image.hypernoise`); same draws as without it when f_phi = 0. With `params`
    replicated on several devices (`training.DataParallel.put`) each batch is split over them,
    padded to a multiple of their number (the padding's samples are dropped; the noise is drawn
    per element, so the samples kept are those of one device, to float rounding)."""
    with _SAMPLER_LOCK:  # one jitted sampler per config, also when threads call at once
        if noise_net is None:
            fn = _sampler(model, sampler_cfg)
        else:
            apply, phi = noise_net
            fn = functools.partial(_noise_sampler(model, sampler_cfg, apply), phi=phi)
    out = []
    base = jax.random.PRNGKey(seed)
    n = labels.shape[0]
    split, devices = _batch_sharding(params)
    size = -(-batch // devices) * devices  # the batch padded to a multiple of the devices
    for i, start in enumerate(range(0, n, batch)):
        y = labels[start : start + batch]
        pad = size - y.shape[0]
        yp = np.concatenate([y, y[:1].repeat(pad)]) if pad else y
        yp = jnp.asarray(yp) if split is None else jax.device_put(yp, split)
        x = fn(params, jax.random.fold_in(base, i), yp)
        out.append(np.asarray(x)[: y.shape[0]])
    return np.concatenate(out)


def _batch_sharding(params: Any) -> tuple[Any, int]:
    """`(sharding, devices)`: the sharding that splits a batch over the devices `params` are
    replicated on, and their number; `(None, 1)` on one device."""
    from jax.sharding import NamedSharding

    from gencast_rmmd.training.sharding import batch_sharding

    leaves = jax.tree.leaves(params)
    where = getattr(leaves[0], "sharding", None) if leaves else None
    if not isinstance(where, NamedSharding) or where.mesh.size == 1:
        return None, 1
    return batch_sharding(where.mesh), where.mesh.size


@dataclasses.dataclass(frozen=True)
class SetEvaluation:
    """One sample set's metrics (`Evaluator.evaluate`) and its evaluation-classifier features
    `[N, D]`: all that pooling needs, without the images (ImageNet 64: 10,000 samples are 0.5 GB
    of images and 20 MB of 512-dimensional features)."""

    metrics: dict[str, float]
    features: np.ndarray  # the distance's features: classifier or InceptionV3 (FID)


@dataclasses.dataclass
class Evaluator:
    """Scores sample sets against real reference images (see the module docstring)."""

    eval_classifier: Classifier
    reference_images: np.ndarray
    labels: np.ndarray
    rewards: dict[str, Reward]
    inception: dict | None = None  # prepared InceptionV3 weights: the distance is FID
    reference_stats: tuple[np.ndarray, np.ndarray] | None = None  # FID's reference (mu, sigma)
    inception_size: int = INPUT_SIZE  # the network's input size (tests use smaller ones)
    progress: bool = False  # a bar for the reference images' InceptionV3 features

    def __post_init__(self):
        self._feats = jax.jit(self.eval_classifier.apply)
        if self.reference_stats is not None:
            if self.inception is None:
                raise ValueError("reference statistics are of InceptionV3 features: give inception")
            self.ref_mu, self.ref_cov = self.reference_stats  # `load_inception_reference_stats`
        else:
            ref_f = self._distance_features(self.reference_images, None, self.progress)
            self.ref_mu, self.ref_cov = gaussian_stats(ref_f)
        self._ref_sqrt = sqrt_psd(self.ref_cov)  # once, not in every distance
        self._reward_fns = {k: jax.jit(r) for k, r in self.rewards.items()}

    @property
    def distance_name(self) -> str:
        """The metric's key: `fid` with InceptionV3 weights, else `frechet_classifier_distance`."""
        return "frechet_classifier_distance" if self.inception is None else "fid"

    def _distance_features(
        self, x: np.ndarray, classifier_features: np.ndarray | None, progress: bool = False
    ) -> np.ndarray:
        if self.inception is not None:
            return inception_features(
                self.inception, x, size=self.inception_size, progress=progress
            )
        return self._features(x)[0] if classifier_features is None else classifier_features

    def _features(self, x: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        fs, ls = [], []
        for i in range(0, x.shape[0], batch):
            f, logit = self._feats(self.eval_classifier.params, jnp.asarray(x[i : i + batch]))
            fs.append(np.asarray(f))
            ls.append(np.asarray(logit))
        return np.concatenate(fs), np.concatenate(ls)

    def evaluate(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """Metrics of `samples [N, H, W, C]` generated for `labels [N]` (default: self.labels)."""
        return self._evaluate(samples, labels)[0]

    def _evaluate(
        self, samples: np.ndarray, labels: np.ndarray | None = None
    ) -> tuple[dict[str, float], np.ndarray]:
        labels = self.labels if labels is None else labels
        f, logits = self._features(samples)
        f = self._distance_features(samples, f)
        out = {
            self.distance_name: self._distance(f),
            "accuracy": float(np.mean(np.argmax(logits, -1) == labels)),
        }
        for k, fn in self._reward_fns.items():
            out[f"reward_{k}"] = float(
                np.mean(np.asarray(fn(jnp.asarray(samples), jnp.asarray(labels))))
            )
        return out, f

    def _distance(self, features: np.ndarray) -> float:
        mu, cov = gaussian_stats(features)
        return frechet_distance(self.ref_mu, self.ref_cov, mu, cov, sqrt_cov1=self._ref_sqrt)

    def evaluate_set(self, samples: np.ndarray) -> SetEvaluation:
        """`evaluate(samples)` with the features kept for `pool`; the caller may drop the images."""
        return SetEvaluation(*self._evaluate(samples))

    def pool(self, sets: list[SetEvaluation]) -> dict[str, Any]:
        """Metrics of several sample sets (each generated for `self.labels`, each scored with
        `evaluate_set`) taken together.

        The distance (`frechet_classifier_distance` or `fid`) is ONE Frechet distance of all
        sets' features pooled (N = sets x samples): the estimator's positive bias falls like
        D / N and its spread with it (measured on digits: 8 random sets of 500 real training
        images score 0.55-2.16, so an average of per-set distances still carries the N = 500
        bias). The other metrics are means over the sets; `<distance>_per_set` keeps each set's
        own distance.
        """
        evals = [s.metrics for s in sets]
        name = self.distance_name
        out: dict[str, Any] = {k: float(np.mean([e[k] for e in evals])) for k in evals[0]}
        out[name] = self._distance(np.concatenate([s.features for s in sets]))
        out[f"{name}_per_set"] = [e[name] for e in evals]
        out["samples"] = int(sum(s.features.shape[0] for s in sets))
        return out

    def evaluate_pooled(self, sample_sets: list[np.ndarray]) -> dict[str, Any]:
        """`pool` of the sets' `evaluate_set` (sample sets at hand; `pool` keeps no images)."""
        return self.pool([self.evaluate_set(x) for x in sample_sets])
