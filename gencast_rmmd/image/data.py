"""Image datasets for the image path: embedded digits and downsampled-ImageNet `.npz` files.

Arrays are channels-last float32 `[N, H, W, C]` scaled to [-1, 1] with int32 labels `[N]` in
`[0, num_classes)`.

Embedded default: scikit-learn's handwritten digits (1,797 real 8x8 grey-level scans, 16 levels,
10 classes; shipped inside the scikit-learn wheel, no download). They are kept at their native
8x8: upsampling to 16x16 would add no information, would only multiply the compute by 4 on a
2-core machine, and would let a model score well by learning the interpolation kernel.

ImageNet 64x64: the "downsampled ImageNet" `.npz` batches (Chrabaszcz et al. 2017) hold `data`
`[N, 3*H*W]` uint8 in channel-major (CHW) order and `labels` `[N]`, 1-based. They are read with
`allow_pickle=False`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import zipfile

import numpy as np

from gencast_rmmd.errors import DataError
from gencast_rmmd.image.config import ImageDataConfig
from gencast_rmmd.remote import check_input_file, local_file


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Images `[N, H, W, C]` float32 in [-1, 1] and labels `[N]` int32, with a train/eval split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    num_classes: int
    name: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits as `[1797, 8, 8, 1]` float32 in [-1, 1] and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.float32) / 16.0 * 2.0 - 1.0
    return images[..., None], d.target.astype(np.int32)


def load_npz_images(
    path: str | pathlib.Path,
    resolution: int,
    num_classes: int,
    label_offset: int = 1,
    max_examples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a downsampled-ImageNet `.npz` (`data` [N, 3*R*R] uint8 CHW, `labels` [N]).

    `path` may be a URL (gs://...): the file is fetched once into the local cache
    (`remote.local_file`), and again only when the object changes.
    Returns `[N, R, R, 3]` float32 in [-1, 1] and int32 labels `labels - label_offset`.
    Raises `DataError` naming what was expected and found.
    """
    p = pathlib.Path(local_file(path, DataError))
    check_input_file(p, "image data file", "a downsampled-ImageNet .npz", DataError, ".npz")
    try:
        loaded = np.load(p, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy file holds one bare array
            raise DataError(
                f"{p}: holds a single array (a .npy file), expected a .npz archive with arrays "
                "'data' and 'labels' (downsampled-ImageNet format)"
            )
        with loaded as f:
            keys = set(f.files)
            if not {"data", "labels"} <= keys:
                raise DataError(
                    f"{p}: expected arrays 'data' and 'labels' (downsampled-ImageNet format), "
                    f"found {sorted(keys)}"
                )
            data = f["data"]
            labels = f["labels"]
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{p}: not a readable .npz file ({e})") from None
    except ValueError as e:
        raise DataError(
            f"{p}: cannot be read without pickle ({e}); save it with plain arrays"
        ) from None
    expected = 3 * resolution * resolution
    if data.ndim != 2 or data.shape[1] != expected:
        raise DataError(
            f"{p}: 'data' should have shape [N, {expected}] (3 x {resolution} x {resolution}, "
            f"CHW-flattened), found {data.shape}"
        )
    n = data.shape[0]
    if labels.shape != (n,):
        raise DataError(f"{p}: 'labels' should have shape [{n}], found {labels.shape}")
    if n == 0:
        raise DataError(f"{p}: 'data' holds no images (shape {data.shape}); expected N >= 1")
    if max_examples is not None:
        data, labels = data[:max_examples], labels[:max_examples]
        n = data.shape[0]
    if data.dtype != np.uint8:
        raise DataError(f"{p}: 'data' should be uint8 pixels, found dtype {data.dtype}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{p}: 'labels' should be integer class ids, found dtype {labels.dtype}")
    lab = labels.astype(np.int64) - label_offset
    if lab.min() < 0 or lab.max() >= num_classes:
        raise DataError(
            f"{p}: labels minus offset {label_offset} should lie in [0, {num_classes}), "
            f"found [{lab.min()}, {lab.max()}] (set data.label_offset / data.num_classes)"
        )
    images = data.reshape(n, 3, resolution, resolution).transpose(0, 2, 3, 1)
    images = images.astype(np.float32) / 127.5 - 1.0
    return images, lab.astype(np.int32)


def load_dataset(cfg: ImageDataConfig) -> ImageDataset:
    """Load the configured images and split them into train/eval, stratified by class, seeded."""
    if cfg.source == "digits":
        images, labels = load_digits_images()
        if cfg.resolution != 8 or cfg.channels != 1 or cfg.num_classes != 10:
            raise DataError(
                "the digits source is 8x8, 1 channel, 10 classes; found config resolution="
                f"{cfg.resolution}, channels={cfg.channels}, num_classes={cfg.num_classes}"
            )
        if cfg.max_examples is not None:
            images, labels = images[: cfg.max_examples], labels[: cfg.max_examples]
        name = "digits8"
    else:
        assert cfg.path is not None
        if cfg.channels != 3:
            raise DataError(
                f"npz source images are RGB: set data.channels=3, found {cfg.channels} (the "
                "downsampled-ImageNet config is --config imagenet64)"
            )
        images, labels = load_npz_images(
            cfg.path, cfg.resolution, cfg.num_classes, cfg.label_offset, cfg.max_examples
        )
        name = f"imagenet{cfg.resolution}"
    rng = np.random.default_rng(cfg.seed)
    train_idx, eval_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_eval = max(1, int(round(cfg.eval_fraction * idx.size)))
        eval_idx.append(idx[:n_eval])
        train_idx.append(idx[n_eval:])
    tr = np.sort(np.concatenate(train_idx))
    ev = np.sort(np.concatenate(eval_idx))
    if tr.size == 0:
        raise DataError(
            f"{name}: no training images after the split: each of the {len(eval_idx)} classes "
            f"present keeps at least one image for evaluation (data.eval_fraction "
            f"{cfg.eval_fraction:g}), which takes all {images.shape[0]} images; give more "
            f"images per class"
        )
    return ImageDataset(
        train_images=images[tr],
        train_labels=labels[tr],
        eval_images=images[ev],
        eval_labels=labels[ev],
        num_classes=cfg.num_classes,
        name=name,
    )


def batch_iterator(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, start: int = 0
):
    """Endless shuffled mini-batches `(images [B, H, W, C], labels [B])`, deterministic per seed.

    `start` skips that many batches without gathering their images (a resumed loop's position):
    the first batch yielded is the one the iterator from 0 yields as its `start`-th."""
    rng = np.random.default_rng(seed)
    n = images.shape[0]
    k = 0
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            if k >= start:
                j = perm[i : i + batch_size]
                yield images[j], labels[j]
            k += 1
        if n < batch_size:
            j = rng.integers(0, n, size=batch_size)
            if k >= start:
                yield images[j], labels[j]
            k += 1
