"""Image data: embedded digits and the downsampled-ImageNet .npz reader (format and errors)."""

from __future__ import annotations

import numpy as np
import pytest

from gencast_rmmd.errors import DataError
from gencast_rmmd.image.config import ImageDataConfig
from gencast_rmmd.image.data import batch_iterator, load_dataset, load_npz_images


def test_digits_dataset_split_and_range():
    ds = load_dataset(ImageDataConfig())
    assert ds.shape == (8, 8, 1) and ds.num_classes == 10
    n = ds.train_images.shape[0] + ds.eval_images.shape[0]
    assert n == 1797
    for x in (ds.train_images, ds.eval_images):
        assert x.dtype == np.float32 and x.min() >= -1.0 and x.max() <= 1.0
    # stratified: every class in both splits, eval share ~ 20% per class
    for c in range(10):
        ne, nt = (ds.eval_labels == c).sum(), (ds.train_labels == c).sum()
        assert abs(ne / (ne + nt) - 0.2) < 0.02
    # disjoint splits: no eval image appears in train
    tr = {x.tobytes() for x in ds.train_images}
    dup = sum(x.tobytes() in tr for x in ds.eval_images)
    assert dup <= 2  # the digits set has a couple of exact duplicate scans


def test_digits_rejects_wrong_geometry():
    with pytest.raises(DataError, match="8x8"):
        load_dataset(ImageDataConfig(resolution=16))


def test_a_data_path_with_the_digits_source_is_refused():
    """`--set data.path=X` without `data.source=npz` trained on the digits, silently."""
    from gencast_rmmd.config import from_dict
    from gencast_rmmd.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"path 'x\.npz' is read by source 'npz' only, found source"
    ):
        from_dict(ImageDataConfig, {"path": "x.npz"})
    assert from_dict(ImageDataConfig, {"path": "x.npz", "source": "npz"}).path == "x.npz"


def _write_imagenet_like(path, n=6, res=4, labels=None):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(n, res, res, 3), dtype=np.uint8)
    data = img.transpose(0, 3, 1, 2).reshape(n, -1)  # CHW flattening, as in the official files
    labels = np.arange(1, n + 1) if labels is None else labels
    np.savez(path, data=data, labels=labels)
    return img, labels


def test_npz_reader_roundtrip_chw_order(tmp_path):
    p = tmp_path / "train.npz"
    img, labels = _write_imagenet_like(p, labels=np.array([1, 1, 1, 2, 2, 2]))
    x, y = load_npz_images(p, 4, 10)
    assert x.shape == (6, 4, 4, 3)
    np.testing.assert_allclose(x, img.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(y, labels - 1)
    ds = load_dataset(
        ImageDataConfig(
            source="npz", path=str(p), resolution=4, channels=3, num_classes=10, eval_fraction=0.3
        )
    )
    assert ds.shape == (4, 4, 3)


def test_too_few_images_per_class_for_a_split_says_why(tmp_path):
    """Every class keeps one image for evaluation: one image per class leaves none to train on
    (it said only "no training images after the split")."""
    p = tmp_path / "train.npz"
    _write_imagenet_like(p, n=6, labels=np.arange(1, 7))
    cfg = ImageDataConfig(source="npz", path=str(p), resolution=4, channels=3, num_classes=10)
    with pytest.raises(DataError, match=r"each of the 6 classes present keeps at least one"):
        load_dataset(cfg)


def test_npz_reader_reads_a_url_through_the_cache(tmp_path, monkeypatch):
    """`--data gs://.../imagenet64.npz` was read as the local path `gs:/...` ("does not
    exist"); a URL is fetched into the local cache and read from there (here fsspec's memory
    filesystem stands in for the bucket). A missing object is named by its URL."""
    import fsspec

    from gencast_rmmd.errors import DataError

    monkeypatch.setenv("GENCAST_RMMD_REMOTE_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "train.npz"
    img, labels = _write_imagenet_like(p, labels=np.array([1, 1, 1, 2, 2, 2]))
    fs = fsspec.filesystem("memory")
    url = "memory://gencast_rmmd_image_test/train.npz"
    fs.put(str(p), url)
    try:
        x, y = load_npz_images(url, 4, 10)
        np.testing.assert_allclose(x, img.astype(np.float32) / 127.5 - 1.0)
        np.testing.assert_array_equal(y, labels - 1)
        with pytest.raises(
            DataError, match=r"'memory://gencast_rmmd_image_test/nope.npz' does not exist"
        ):
            load_npz_images("memory://gencast_rmmd_image_test/nope.npz", 4, 10)
    finally:
        fs.rm("memory://gencast_rmmd_image_test", recursive=True)


def test_npz_reader_errors(tmp_path):
    with pytest.raises(DataError, match="missing.npz. does not exist"):
        load_npz_images(tmp_path / "missing.npz", 4, 10)
    p = tmp_path / "bad_keys.npz"
    np.savez(p, images=np.zeros((2, 48), np.uint8))
    with pytest.raises(DataError, match="'data' and 'labels'"):
        load_npz_images(p, 4, 10)
    p = tmp_path / "bad_shape.npz"
    np.savez(p, data=np.zeros((2, 50), np.uint8), labels=np.ones(2))
    with pytest.raises(DataError, match=r"\[N, 48\]"):
        load_npz_images(p, 4, 10)
    p = tmp_path / "bad_labels.npz"
    _write_imagenet_like(p, labels=np.array([1, 2, 3, 4, 5, 99]))
    with pytest.raises(DataError, match="labels"):
        load_npz_images(p, 4, 10)
    p = tmp_path / "pickled.npz"
    np.savez(
        p, data=np.zeros((2, 48), np.uint8), labels=np.array([{"a": 1}, {"b": 2}], dtype=object)
    )
    with pytest.raises(DataError, match="pickle"):
        load_npz_images(p, 4, 10)
    p = tmp_path / "notzip.npz"
    p.write_text("hello")
    with pytest.raises(DataError):
        load_npz_images(p, 4, 10)


def test_npz_reader_rejects_npy_empty_0d_and_float_labels(tmp_path):
    """Each gives one DataError naming what was expected (the CLI's one-line error, exit 2)."""
    p = tmp_path / "imgs.npy"
    np.save(p, np.zeros((4, 48), np.uint8))
    with pytest.raises(DataError, match="single array .* expected a .npz"):
        load_npz_images(p, 4, 10)
    p = tmp_path / "empty.npz"
    np.savez(p, data=np.zeros((0, 48), np.uint8), labels=np.zeros((0,), np.int64))
    with pytest.raises(DataError, match="holds no images"):
        load_npz_images(p, 4, 10)
    p = tmp_path / "d0.npz"
    np.savez(p, data=np.uint8(3), labels=np.zeros((4,), np.int64))
    with pytest.raises(DataError, match=r"'data' should have shape \[N, 48\].*found \(\)"):
        load_npz_images(p, 4, 10)
    p = tmp_path / "l0.npz"
    np.savez(p, data=np.zeros((4, 48), np.uint8), labels=np.int64(1))
    with pytest.raises(DataError, match=r"'labels' should have shape \[4\]"):
        load_npz_images(p, 4, 10, max_examples=2)
    p = tmp_path / "float_labels.npz"
    np.savez(p, data=np.zeros((4, 48), np.uint8), labels=np.array([1.7, 2.2, 3.9, 1.0]))
    with pytest.raises(DataError, match="integer class ids, found dtype float64"):
        load_npz_images(p, 4, 10)


def test_cli_npy_data_is_one_line_error(tmp_path, capsys):
    from gencast_rmmd.cli import main

    p = tmp_path / "imgs.npy"
    np.save(p, np.zeros((4, 3 * 64 * 64), np.uint8))
    rc = main(["image", "teacher", "--config", "imagenet64", "--out", str(tmp_path / "run"),
               "--data", str(p)])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "single array" in err[0]


def test_batch_iterator_deterministic_and_covers_epoch():
    x = np.arange(10, dtype=np.float32)[:, None, None, None]
    y = np.arange(10)
    a = batch_iterator(x, y, 5, 3)
    b = batch_iterator(x, y, 5, 3)
    first = [next(a) for _ in range(2)]
    second = [next(b) for _ in range(2)]
    for (_xa, ya), (_xb, yb) in zip(first, second):
        np.testing.assert_array_equal(ya, yb)
    assert sorted(np.concatenate([f[1] for f in first]).tolist()) == list(range(10))


@pytest.mark.parametrize("n, batch", [(10, 3), (10, 5), (4, 6)])
def test_batch_iterator_start_skips_to_the_same_batches(n, batch):
    """A resumed loop's iterator (`start=k`) yields what the one from 0 yields from its k-th
    batch on: across epoch boundaries, and where the data is smaller than a batch."""
    x = np.arange(n, dtype=np.float32)[:, None, None, None]
    y = np.arange(n)
    full = [next(it)[1] for it in [batch_iterator(x, y, batch, 7)] for _ in range(12)]
    for k in (1, 3, 5):
        it = batch_iterator(x, y, batch, 7, start=k)
        for want in full[k:]:
            np.testing.assert_array_equal(next(it)[1], want)
