"""InceptionV3 FID features (`gencast_rmmd.image.inception`): layout, loader checks, FID wiring."""

from __future__ import annotations

import re

import numpy as np
import pytest

from gencast_rmmd.errors import DataError
from gencast_rmmd.image import inception as inc


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """An .npz as converted from pytorch-fid's .pth: with the classifier head and BN counters."""
    state = inc.random_state()
    extra = {
        "fc.weight": np.zeros((1008, 2048), np.float32),
        "fc.bias": np.zeros(1008, np.float32),
        "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0, np.int64),
    }
    path = tmp_path_factory.mktemp("inception") / "pt_inception.npz"
    np.savez(path, **state, **extra)
    return path


def test_weight_spec_is_the_fid_inception_layout():
    """94 convolutions with batch norm, 21.8 M numbers without the classifier head (Keras'
    InceptionV3 without top: 21,802,784, whose batch norms have no scale: 17,216 fewer), the
    pytorch-fid names and the known shapes of the first and last layers."""
    spec = inc.weight_spec()
    convs = [k for k in spec if k.endswith(".conv.weight")]
    assert len(convs) == 94 and len(spec) == 94 * 5
    n = sum(int(np.prod(s)) for s in spec.values())
    channels = sum(spec[k][0] for k in convs)
    assert n - channels == 21_802_784
    assert spec["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert spec["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert spec["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert spec["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert spec["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)


def test_loader_reads_pytorch_fid_layout_and_features_are_pool3(weights_file):
    """The head and counters are ignored; features are [N, 2048], >= 0 (ReLU then mean), one
    per image whatever the batch; a grey image scores as its three-channel copy."""
    params = inc.load_inception_weights(weights_file)
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, size=(3, 20, 20, 1)).astype(np.float32)
    f = inc.inception_features(params, x, size=inc.MIN_INPUT_SIZE)
    assert f.shape == (3, inc.FEATURE_DIM) and np.isfinite(f).all() and (f >= 0).all()
    assert f.std() > 0 and not np.allclose(f[0], f[1])
    one_by_one = inc.inception_features(params, x, batch=2, size=inc.MIN_INPUT_SIZE)
    np.testing.assert_allclose(one_by_one, f, rtol=1e-5, atol=1e-6)
    rgb = inc.inception_features(params, np.repeat(x, 3, -1), size=inc.MIN_INPUT_SIZE)
    np.testing.assert_allclose(rgb, f, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"\[N, H, W, 1 or 3\]"):
        inc.inception_features(params, x[..., 0], size=inc.MIN_INPUT_SIZE)
    with pytest.raises(ValueError, match=">= 75"):
        inc.inception_features(params, x, size=64)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("Mixed_6c.branch7x7_3.bn.running_var"), "1 of its 470 weights are missing, e.g. Mixed_6c.branch7x7_3.bn.running_var"),
        (lambda s: s.update({"Mixed_8a.conv.weight": np.zeros(1, np.float32)}), "unknown weights Mixed_8a.conv.weight"),
        (lambda s: s.update({"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 1), np.float32)}), r"Conv2d_1a_3x3.conv.weight must have shape \[32, 3, 3, 3\], found \[32, 3, 3, 1\]"),
        (lambda s: s.update({"Conv2d_1a_3x3.bn.bias": np.zeros(32, np.int32)}), "must be floating point, found int32"),
        (lambda s: s.update({"Conv2d_1a_3x3.bn.bias": np.full(32, np.nan, np.float32)}), "non-finite"),
        (lambda s: s.update({"Conv2d_1a_3x3.bn.running_var": -np.ones(32, np.float32)}), "negative variances"),
    ],
)  # fmt: skip
def test_loader_refuses_other_layouts(tmp_path, change, message):
    state = inc.random_state(1)
    change(state)
    path = tmp_path / "w.npz"
    np.savez(path, **state)
    with pytest.raises(DataError, match=message):
        inc.load_inception_weights(path)


def test_loader_refuses_files_that_are_not_weight_archives(tmp_path):
    with pytest.raises(DataError, match="not found"):
        inc.load_inception_weights(tmp_path / "none.npz")
    with pytest.raises(DataError, match="a directory"):
        inc.load_inception_weights(tmp_path)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataError, match="found a single array"):
        inc.load_inception_weights(tmp_path / "one.npy")
    np.savez(tmp_path / "pickled.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(DataError, match="without pickles"):
        inc.load_inception_weights(tmp_path / "pickled.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(DataError, match="not a readable .npz"):
        inc.load_inception_weights(tmp_path / "text.npz")


@pytest.mark.slow
def test_network_matches_keras_inception_v3(monkeypatch, tmp_path):
    """An independent implementation of the architecture: Keras' InceptionV3 (JAX backend) with
    random weights copied into the pytorch-fid layout (its convolutions in creation order are the
    torchvision modules in order; its batch norms have no scale, so ours is 1). Keras' average
    pools leave the padding out of the count like the FID variant; its last block pools by
    average, so `last_pool="avg"` must match it to float32 rounding, and the FID variant's max
    pool must differ (input 107: the last blocks are 2 x 2)."""
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    keras = pytest.importorskip("keras")
    size = 107
    keras.utils.set_random_seed(0)
    model = keras.applications.InceptionV3(
        weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3)
    )

    def by_creation(kind):
        layers = [x for x in model.layers if isinstance(x, kind)]
        return sorted(layers, key=lambda x: int(re.sub(r"\D", "", x.name) or 0))

    convs = by_creation(keras.layers.Conv2D)
    bns = by_creation(keras.layers.BatchNormalization)
    names = [k[: -len(".conv.weight")] for k in inc.weight_spec() if k.endswith(".conv.weight")]
    assert len(convs) == len(bns) == len(names)
    rng = np.random.default_rng(1)
    state = {}
    for name, conv, bn in zip(names, convs, bns):
        assert bn.epsilon == inc.BN_EPS
        hwio = conv.get_weights()[0].shape
        w = (rng.normal(size=hwio) * np.sqrt(2.0 / np.prod(hwio[:3]))).astype(np.float32)
        beta, mean = (0.1 * rng.normal(size=(2, hwio[-1]))).astype(np.float32)
        var = rng.uniform(0.5, 2.0, size=hwio[-1]).astype(np.float32)
        conv.set_weights([w])
        bn.set_weights([beta, mean, var])
        state[f"{name}.conv.weight"] = np.transpose(w, (3, 2, 0, 1))
        state.update({f"{name}.bn.weight": np.ones_like(beta), f"{name}.bn.bias": beta})
        state.update({f"{name}.bn.running_mean": mean, f"{name}.bn.running_var": var})
    inc.check_state(state, "keras")
    x = rng.uniform(-1, 1, size=(2, size, size, 3)).astype(np.float32)
    want = np.asarray(model(x, training=False))
    params = inc.prepare(state)
    got = inc.inception_features(params, x, size=size, last_pool="avg")
    assert want.shape == got.shape == (2, inc.FEATURE_DIM)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    fid_variant = inc.inception_features(params, x, size=size)
    assert np.abs(fid_variant - want).max() > 0.1 * np.abs(want).max()


@pytest.mark.slow  # 2048-dimensional eigendecompositions: ~3 s each
def test_evaluator_with_inception_reports_fid(weights_file, tmp_path):
    """With InceptionV3 weights the distance is `fid`: the Frechet distance of pool-3 features
    against the reference images', or against given reference statistics."""
    import jax.numpy as jnp

    from gencast_rmmd.image.classifier import Classifier
    from gencast_rmmd.image.evaluation import Evaluator
    from gencast_rmmd.image.frechet import frechet_distance, gaussian_stats

    params = inc.load_inception_weights(weights_file)
    w = np.random.default_rng(2).normal(size=(16, 5)).astype(np.float32)

    def apply(p, x):
        f = jnp.reshape(x, (x.shape[0], -1)) @ p
        return f, f[:, :3]

    rng = np.random.default_rng(5)
    ref = rng.uniform(-1, 1, size=(6, 4, 4, 1)).astype(np.float32)
    clf = Classifier(params=jnp.asarray(w), apply=apply)
    size = inc.MIN_INPUT_SIZE
    ev = Evaluator(
        clf, ref, np.zeros(4, np.int64), rewards={}, inception=params, inception_size=size
    )
    assert ev.distance_name == "fid"
    samples = [rng.uniform(-1, 1, size=(4, 4, 4, 1)).astype(np.float32) for _ in range(2)]
    out = ev.evaluate_pooled(samples)
    feats = inc.inception_features(params, np.concatenate(samples), size=size)
    ref_stats = gaussian_stats(inc.inception_features(params, ref, size=size))
    want = frechet_distance(*gaussian_stats(feats), *ref_stats)
    np.testing.assert_allclose(out["fid"], want, rtol=1e-5)
    assert len(out["fid_per_set"]) == 2 and "frechet_classifier_distance" not in out
    given = Evaluator(
        clf, ref, np.zeros(4, np.int64), rewards={}, inception=params, inception_size=size,
        reference_stats=(ref_stats[0] + 1.0, ref_stats[1]),
    )  # fmt: skip
    shifted = given.evaluate(samples[0])["fid"]
    set0 = gaussian_stats(feats[:4])
    diff = ref_stats[0] - set0[0]  # the mean term of the distance grows by |d + 1|^2 - |d|^2
    want_shift = out["fid_per_set"][0] + 2 * diff.sum() + inc.FEATURE_DIM
    assert shifted == pytest.approx(want_shift, rel=1e-5)
    with pytest.raises(ValueError, match="give inception"):
        Evaluator(clf, ref, np.zeros(4, np.int64), rewards={}, reference_stats=ref_stats)


def test_fid_reference_statistics_are_computed_once_per_weights_and_images(tmp_path, monkeypatch):
    """`DIR/fid_reference.npz`: the real images' statistics are reused by the next command while
    the weights' digest and the images are the ones recorded, and computed again otherwise."""
    from gencast_rmmd.image import pipeline

    calls = []

    def fake_features(params, images, progress=False, **kw):
        calls.append(images.shape[0])
        return np.reshape(images, (images.shape[0], -1))[:, :5] * 2.0

    monkeypatch.setattr(inc, "inception_features", fake_features)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(12, 4, 4, 1)).astype(np.float32)
    digests = {"inception_weights_sha256": "a" * 64}
    mu, sigma = pipeline._fid_reference(tmp_path, {}, images, digests, False)
    np.testing.assert_allclose(mu, 2 * images.reshape(12, -1)[:, :5].mean(0), rtol=1e-6)
    again = pipeline._fid_reference(tmp_path, {}, images, digests, False)
    assert calls == [12] and all(np.array_equal(a, b) for a, b in zip(again, (mu, sigma)))
    pipeline._fid_reference(tmp_path, {}, images[:10], digests, False)
    pipeline._fid_reference(
        tmp_path, {}, images[:10], {"inception_weights_sha256": "b" * 64}, False
    )
    assert calls == [12, 10, 10]


def test_fid_reference_statistics_loader_checks_layout_and_dimension(tmp_path):
    """The usual `fid_stats` `.npz` (mu [2048], sigma [2048, 2048]); statistics of another
    feature space (64 dimensions) or a missing array are refused, naming what was found."""
    from gencast_rmmd.image.frechet import load_inception_reference_stats

    np.savez(tmp_path / "ok.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    mu, sigma = load_inception_reference_stats(tmp_path / "ok.npz")
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    np.savez(tmp_path / "s64.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(DataError, match=r"must be of the 2048 InceptionV3 .* found mu \[64\]"):
        load_inception_reference_stats(tmp_path / "s64.npz")
    np.savez(tmp_path / "nosigma.npz", mu=np.zeros(2048))
    with pytest.raises(DataError, match=r"expected arrays 'mu' and 'sigma', found \['mu'\]"):
        load_inception_reference_stats(tmp_path / "nosigma.npz")
