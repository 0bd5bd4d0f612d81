"""Small CNN image classifiers trained by the project (reward model and evaluation features).

Two independently initialised and trained classifiers are used: one gives the differentiable
"classifier" reward (log-probability of the conditioning class), the other gives the evaluation
(accuracy of generated samples, and the feature space of the Frechet classifier distance), so that
a student that games the reward model is not also graded by it.

Architecture: [conv3x3-swish]x2 per resolution, average-pool by 2 down to 4x4 (or the input size if
smaller), global mean pool, Linear(feature_dim)-swish = the *features*, Linear(num_classes) = logits.
Trained with cross-entropy on train images plus Gaussian pixel noise (std `noise_augment`, so the
classifier is not thrown by slightly noisy generated images).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from gencast_rmmd import stopping
from gencast_rmmd.image.config import ClassifierConfig
from gencast_rmmd.image.data import batch_iterator
from gencast_rmmd.image.training import StageCheckpoints


class ConvClassifier(hk.Module):
    """CNN returning `(features [B, feature_dim], logits [B, num_classes])`."""

    def __init__(self, width: int, feature_dim: int, num_classes: int, name: str | None = "clf"):
        super().__init__(name=name)
        self.width, self.feature_dim, self.num_classes = width, feature_dim, num_classes

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x
        ch = self.width
        level = 0
        while True:
            h = jax.nn.swish(hk.Conv2D(ch, 3, name=f"conv{level}a")(h))
            h = jax.nn.swish(hk.Conv2D(ch, 3, name=f"conv{level}b")(h))
            if h.shape[1] <= 4:
                break
            h = hk.avg_pool(h, 2, 2, "VALID")
            ch *= 2
            level += 1
        h = jnp.mean(h, axis=(1, 2))
        feats = jax.nn.swish(hk.Linear(self.feature_dim, name="features")(h))
        logits = hk.Linear(self.num_classes, name="logits")(feats)
        return feats, logits


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A trained classifier: `features(x)`, `logits(x)` on images `[B, H, W, C]` in [-1, 1]."""

    params: hk.Params
    apply: Callable[[hk.Params, jax.Array], tuple[jax.Array, jax.Array]]

    def features(self, x: jax.Array) -> jax.Array:
        """Penultimate activations `[B, feature_dim]`."""
        return self.apply(self.params, x)[0]

    def logits(self, x: jax.Array) -> jax.Array:
        """Class logits `[B, num_classes]`."""
        return self.apply(self.params, x)[1]


def build_classifier(cfg: ClassifierConfig, num_classes: int) -> hk.Transformed:
    """Haiku transform (without rng) of `ConvClassifier`."""
    return hk.without_apply_rng(
        hk.transform(lambda x: ConvClassifier(cfg.width, cfg.feature_dim, num_classes)(x))
    )


def train_classifier(
    cfg: ClassifierConfig,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    progress: bool = True,
    checkpoints: StageCheckpoints | None = None,
) -> Classifier:
    """Train with Adam + cosine decay on cross-entropy; returns the trained `Classifier`. With
    `checkpoints` it resumes from, and saves to, that stage's checkpoints."""
    ckpts = checkpoints or StageCheckpoints(None, {})
    net = build_classifier(cfg, num_classes)
    rng = jax.random.PRNGKey(seed)
    params = net.init(rng, jnp.asarray(images[:2]))
    opt = optax.adam(optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps))
    opt_state = opt.init(params)
    start, (params, opt_state, rng) = ckpts.restore((params, opt_state, rng))

    @jax.jit
    def step(params, opt_state, x, y, key):
        x = x + cfg.noise_augment * jax.random.normal(key, x.shape)

        def loss_fn(p):
            logits = net.apply(p, x)[1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    it = batch_iterator(images, labels, cfg.batch_size, seed, start)
    bar = tqdm(
        range(start, cfg.steps), desc=f"classifier seed {seed}", disable=not progress,
        initial=start, total=cfg.steps,
    )  # fmt: skip
    with stopping.graceful_stop(enabled=ckpts.directory is not None):
        for i in bar:
            x, y = next(it)
            rng, key = jax.random.split(rng)
            params, opt_state, _ = step(params, opt_state, jnp.asarray(x), jnp.asarray(y), key)
            ckpts.maybe_save(i + 1, (params, opt_state, rng), last=i == cfg.steps - 1)
    return Classifier(params=params, apply=net.apply)


def accuracy(clf: Classifier, images: np.ndarray, labels: np.ndarray, batch: int = 1024) -> float:
    """Share of `images` whose argmax class equals `labels`."""
    logits_fn = jax.jit(clf.logits)
    correct = 0
    for i in range(0, images.shape[0], batch):
        pred = np.asarray(jnp.argmax(logits_fn(jnp.asarray(images[i : i + batch])), axis=-1))
        correct += int((pred == labels[i : i + batch]).sum())
    return correct / images.shape[0]
