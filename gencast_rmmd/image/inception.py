"""InceptionV3 pool-3 features for standard FID, from user-supplied weights.

The network is the FID variant of InceptionV3 (the 2015-12-05 TensorFlow graph that FID was
defined with; Heusel et al. 2017), in the module layout of `torchvision`'s `Inception3` as the
widely used `pytorch-fid` package loads it: stem convolutions `Conv2d_1a_3x3` ... `Conv2d_4a_3x3`,
Inception blocks `Mixed_5b` ... `Mixed_7c`, each convolution a `BasicConv2d` (convolution without
bias, batch norm with eps 0.001, ReLU). The FID variant differs from torchvision's ImageNet model
in two ways, both kept here: the average pools of the A, C and E blocks leave the padding out of
the count (`count_include_pad=False`), and the last block (`Mixed_7c`) pools its branch with a max
pool. The features are the 2048 channels of the last block averaged over space.

Inputs follow `pytorch-fid`: images are resized to 299 x 299 with bilinear interpolation (half-pixel
centres, no antialiasing) and given to the network in [-1, 1] (our images already are; one-channel
images are repeated to three channels).

Weights: the project neither ships nor downloads them. `load_inception_weights` reads an `.npz`
with the `pytorch-fid` state-dict names and shapes (`Conv2d_1a_3x3.conv.weight` [32, 3, 3, 3],
`Conv2d_1a_3x3.bn.weight`, `.bn.bias`, `.bn.running_mean`, `.bn.running_var` [32], ...; the
classifier `fc.*`, `AuxLogits.*` and `*.num_batches_tracked` are ignored). docs/image.md shows the
one-line conversion of `pytorch-fid`'s `pt_inception-2015-12-05-*.pth` with torch.

The architecture is written once (`_network`); the expected names and shapes (`weight_spec`) are
read off it by tracing it abstractly, so the loader's checks cannot drift from the network.
"""

from __future__ import annotations

import functools
import pathlib
import zipfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from gencast_rmmd.errors import DataError

FEATURE_DIM = 2048  # pool-3 features
INPUT_SIZE = 299
MIN_INPUT_SIZE = 75  # smaller inputs leave nothing for the last stride-2 layers
BN_EPS = 1e-3
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")
_IGNORED_SUFFIXES = (".num_batches_tracked",)

# conv(name, x, out_channels, kernel (kh, kw), stride, padding (ph, pw)) -> y
Conv = Callable[..., jax.Array]


def _max_pool(x, size: int, stride: int, pad: int = 0):
    p = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, size, size, 1), (1, stride, stride, 1), p
    )


def _avg_pool_exclude_pad(x, size: int = 3, pad: int = 1):
    """Stride-1 average pool that divides by the number of real (unpadded) inputs."""
    p = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    window, strides = (1, size, size, 1), (1, 1, 1, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, p)
    ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, p)
    return total / count


def _block_a(conv: Conv, name: str, x, pool_features: int):
    b1 = conv(f"{name}.branch1x1", x, 64, (1, 1))
    b5 = conv(f"{name}.branch5x5_1", x, 48, (1, 1))
    b5 = conv(f"{name}.branch5x5_2", b5, 64, (5, 5), pad=(2, 2))
    b3 = conv(f"{name}.branch3x3dbl_1", x, 64, (1, 1))
    b3 = conv(f"{name}.branch3x3dbl_2", b3, 96, (3, 3), pad=(1, 1))
    b3 = conv(f"{name}.branch3x3dbl_3", b3, 96, (3, 3), pad=(1, 1))
    bp = conv(f"{name}.branch_pool", _avg_pool_exclude_pad(x), pool_features, (1, 1))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


def _block_b(conv: Conv, name: str, x):
    b3 = conv(f"{name}.branch3x3", x, 384, (3, 3), stride=2)
    bd = conv(f"{name}.branch3x3dbl_1", x, 64, (1, 1))
    bd = conv(f"{name}.branch3x3dbl_2", bd, 96, (3, 3), pad=(1, 1))
    bd = conv(f"{name}.branch3x3dbl_3", bd, 96, (3, 3), stride=2)
    return jnp.concatenate([b3, bd, _max_pool(x, 3, 2)], axis=-1)


def _block_c(conv: Conv, name: str, x, c7: int):
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of the 1x7 and 7x1 convs
    b1 = conv(f"{name}.branch1x1", x, 192, (1, 1))
    b7 = conv(f"{name}.branch7x7_1", x, c7, (1, 1))
    b7 = conv(f"{name}.branch7x7_2", b7, c7, row[0], pad=row[1])
    b7 = conv(f"{name}.branch7x7_3", b7, 192, col[0], pad=col[1])
    bd = conv(f"{name}.branch7x7dbl_1", x, c7, (1, 1))
    for i, (k, p) in enumerate((col, row, col, row), start=2):
        bd = conv(f"{name}.branch7x7dbl_{i}", bd, 192 if i == 5 else c7, k, pad=p)
    bp = conv(f"{name}.branch_pool", _avg_pool_exclude_pad(x), 192, (1, 1))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


def _block_d(conv: Conv, name: str, x):
    b3 = conv(f"{name}.branch3x3_1", x, 192, (1, 1))
    b3 = conv(f"{name}.branch3x3_2", b3, 320, (3, 3), stride=2)
    b7 = conv(f"{name}.branch7x7x3_1", x, 192, (1, 1))
    b7 = conv(f"{name}.branch7x7x3_2", b7, 192, (1, 7), pad=(0, 3))
    b7 = conv(f"{name}.branch7x7x3_3", b7, 192, (7, 1), pad=(3, 0))
    b7 = conv(f"{name}.branch7x7x3_4", b7, 192, (3, 3), stride=2)
    return jnp.concatenate([b3, b7, _max_pool(x, 3, 2)], axis=-1)


def _block_e(conv: Conv, name: str, x, max_pool_branch: bool):
    def split(prefix, y):  # a 1x3 and a 3x1 convolution side by side
        a = conv(f"{prefix}a", y, 384, (1, 3), pad=(0, 1))
        b = conv(f"{prefix}b", y, 384, (3, 1), pad=(1, 0))
        return jnp.concatenate([a, b], axis=-1)

    b1 = conv(f"{name}.branch1x1", x, 320, (1, 1))
    b3 = split(f"{name}.branch3x3_2", conv(f"{name}.branch3x3_1", x, 384, (1, 1)))
    bd = conv(f"{name}.branch3x3dbl_1", x, 448, (1, 1))
    bd = split(
        f"{name}.branch3x3dbl_3", conv(f"{name}.branch3x3dbl_2", bd, 384, (3, 3), pad=(1, 1))
    )
    pooled = _max_pool(x, 3, 1, 1) if max_pool_branch else _avg_pool_exclude_pad(x)
    bp = conv(f"{name}.branch_pool", pooled, 192, (1, 1))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def _network(conv: Conv, x, last_pool: str = "max"):
    """InceptionV3 (FID variant) from NHWC input in [-1, 1] to pool-3 features `[N, 2048]`.
    `last_pool="avg"` gives torchvision's / Keras' `Mixed_7c` (used to cross-check the layout)."""
    x = conv("Conv2d_1a_3x3", x, 32, (3, 3), stride=2)
    x = conv("Conv2d_2a_3x3", x, 32, (3, 3))
    x = conv("Conv2d_2b_3x3", x, 64, (3, 3), pad=(1, 1))
    x = _max_pool(x, 3, 2)
    x = conv("Conv2d_3b_1x1", x, 80, (1, 1))
    x = conv("Conv2d_4a_3x3", x, 192, (3, 3))
    x = _max_pool(x, 3, 2)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        x = _block_a(conv, name, x, pool_features)
    x = _block_b(conv, "Mixed_6a", x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        x = _block_c(conv, name, x, c7)
    x = _block_d(conv, "Mixed_7a", x)
    x = _block_e(conv, "Mixed_7b", x, max_pool_branch=False)
    x = _block_e(conv, "Mixed_7c", x, max_pool_branch=last_pool == "max")
    return jnp.mean(x, axis=(1, 2))


def _conv2d(x, w_hwio, stride, pad):
    return jax.lax.conv_general_dilated(
        x, w_hwio, (stride, stride), ((pad[0], pad[0]), (pad[1], pad[1])),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip


@functools.lru_cache(maxsize=1)
def weight_spec() -> dict[str, tuple[int, ...]]:
    """The `pytorch-fid` state-dict names and shapes the network needs, in network order."""
    spec: dict[str, tuple[int, ...]] = {}

    def conv(name, x, out, kernel, stride=1, pad=(0, 0)):
        spec[f"{name}.conv.weight"] = (out, x.shape[-1], *kernel)
        for part in ("weight", "bias", "running_mean", "running_var"):
            spec[f"{name}.bn.{part}"] = (out,)
        return _conv2d(x, jnp.zeros((*kernel, x.shape[-1], out), x.dtype), stride, pad)

    shape = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    jax.eval_shape(lambda x: _network(conv, x), shape)
    return spec


def random_state(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in the pytorch-fid layout (`weight_spec`), He-scaled so activations stay
    O(1) through the 94 layers: for tests and benchmarks (speed does not depend on the values)."""
    rng = np.random.default_rng(seed)
    state = {}
    for k, shape in weight_spec().items():
        if k.endswith(".conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            state[k] = (rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif k.endswith(".running_var"):
            state[k] = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
        elif k.endswith(".bn.weight"):
            state[k] = rng.uniform(0.8, 1.2, size=shape).astype(np.float32)
        else:
            state[k] = (0.1 * rng.normal(size=shape)).astype(np.float32)
    return state


def prepare(state: dict[str, np.ndarray]) -> dict[str, dict[str, jax.Array]]:
    """Per convolution: the kernel in HWIO and the batch norm folded into a scale and a shift."""
    out = {}
    for key in weight_spec():
        if not key.endswith(".conv.weight"):
            continue
        name = key[: -len(".conv.weight")]
        g, b = state[f"{name}.bn.weight"], state[f"{name}.bn.bias"]
        mean, var = state[f"{name}.bn.running_mean"], state[f"{name}.bn.running_var"]
        scale = np.asarray(g, np.float64) / np.sqrt(np.asarray(var, np.float64) + BN_EPS)
        out[name] = {
            "w": jnp.asarray(np.transpose(state[key], (2, 3, 1, 0)), jnp.float32),
            "scale": jnp.asarray(scale, jnp.float32),
            "shift": jnp.asarray(b - mean * scale, jnp.float32),
        }
    return out


def _apply(params, images, size: int, last_pool: str):
    def conv(name, x, out, kernel, stride=1, pad=(0, 0)):
        p = params[name]
        return jax.nn.relu(_conv2d(x, p["w"], stride, pad) * p["scale"] + p["shift"])

    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 3), "linear", antialias=False)
    return _network(conv, x, last_pool)


_apply_jit = jax.jit(_apply, static_argnames=("size", "last_pool"))


def inception_features(
    params: dict, images: np.ndarray, batch: int = 64, size: int = INPUT_SIZE,
    last_pool: str = "max", progress: bool = False,
) -> np.ndarray:  # fmt: skip
    """Pool-3 features `[N, 2048]` of images `[N, H, W, C]` (C = 1 or 3) in [-1, 1].

    `params` from `load_inception_weights` (or `prepare`); `size` is the network's input size
    (299 for FID; tests use smaller inputs, at least 75)."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, 1 or 3], found {x.shape}")
    if size < MIN_INPUT_SIZE:
        raise ValueError(f"InceptionV3 input size must be >= {MIN_INPUT_SIZE}, found {size}")
    out = []
    starts = range(0, x.shape[0], batch)
    bar = tqdm(starts, desc="InceptionV3 features", unit="batch", disable=not progress)
    for i in bar:
        chunk = x[i : i + batch]
        pad = batch - chunk.shape[0] if x.shape[0] > batch else 0  # one compiled batch shape
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)])
        f = _apply_jit(params, jnp.asarray(chunk), size=size, last_pool=last_pool)
        out.append(np.asarray(f)[: chunk.shape[0] - pad])
    return np.concatenate(out)


def check_state(state: dict[str, np.ndarray], where: str) -> None:
    """Refuse a state dict that is not the network's: missing, unknown or misshaped weights."""
    spec = weight_spec()
    missing = [k for k in spec if k not in state]
    ignored = [k for k in state if k.startswith(_IGNORED_PREFIXES) or k.endswith(_IGNORED_SUFFIXES)]
    unknown = [k for k in state if k not in spec and k not in ignored]
    layout = "the pytorch-fid InceptionV3 state-dict layout (docs/image.md)"
    if missing:
        raise DataError(
            f"{where}: not {layout}: {len(missing)} of its {len(spec)} weights are missing, "
            f"e.g. {', '.join(missing[:3])}"
        )
    if unknown:
        raise DataError(
            f"{where}: not {layout}: unknown weights {', '.join(sorted(unknown)[:3])}"
            + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        )
    for k, shape in spec.items():
        a = state[k]
        if tuple(a.shape) != shape:
            raise DataError(f"{where}: {k} must have shape {list(shape)}, found {list(a.shape)}")
        if not np.issubdtype(a.dtype, np.floating):
            raise DataError(f"{where}: {k} must be floating point, found {a.dtype}")
        if not np.isfinite(a).all():
            raise DataError(f"{where}: {k} holds non-finite values")
        if k.endswith(".running_var") and (a < 0).any():
            raise DataError(f"{where}: {k} holds negative variances")


def load_inception_weights(path: str | pathlib.Path) -> dict[str, dict[str, jax.Array]]:
    """Read and check an `.npz` of InceptionV3 FID weights (module docstring); `prepare`d."""
    p = pathlib.Path(path)
    if not p.is_file():
        what = "a directory" if p.is_dir() else "not found"
        raise DataError(f"InceptionV3 weights {str(p)!r}: {what} (expected an .npz file)")
    try:
        f = np.load(p, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DataError(f"{p}: expected an .npz of named arrays, found a single array")
        with f:
            state = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{p}: not a readable .npz of arrays without pickles ({e})") from None
    check_state(state, str(p))
    return prepare(state)
