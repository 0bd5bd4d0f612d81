"""U-ViT shapes, identity-at-init, dropout and conditioning."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gencast_rmmd.image.config import UViTConfig
from gencast_rmmd.image.uvit import build_uvit

SMALL = UViTConfig(channels=(8, 16), transformer_width=16, heads=2, embed_dim=16, mlp_ratio=2)


@pytest.mark.parametrize(
    "cfg,shape,classes",
    [
        (SMALL, (3, 8, 8, 1), 10),
        (
            UViTConfig(
                channels=(4, 8, 8), transformer_width=8, heads=2, embed_dim=8, transformer_layers=1
            ),
            (2, 16, 16, 3),
            1000,
        ),
    ],
)
def test_uvit_output_shape_and_zero_init(cfg, shape, classes):
    init, apply = build_uvit(cfg, classes, shape[-1])
    init, apply = jax.jit(init), jax.jit(apply)
    z = jax.random.normal(jax.random.PRNGKey(0), shape)
    logsnr = jnp.linspace(-5.0, 5.0, shape[0])
    labels = jnp.arange(shape[0]) % classes
    params = init(jax.random.PRNGKey(1), z, logsnr, labels)
    v = apply(params, None, z, logsnr, labels)
    assert v.shape == shape
    # Output projection is zero-initialised: the untrained network predicts v = 0.
    np.testing.assert_array_equal(np.asarray(v), 0.0)


def _perturbed(params, seed=3, scale=0.1):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    )


def test_uvit_dropout_and_conditioning():
    init, apply = build_uvit(SMALL, 10, 1)
    init, apply = jax.jit(init), jax.jit(apply)
    z = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
    logsnr = jnp.zeros((4,))
    labels = jnp.array([0, 1, 2, 3])
    params = _perturbed(init(jax.random.PRNGKey(1), z, logsnr, labels))
    det1 = apply(params, None, z, logsnr, labels)
    det2 = apply(params, None, z, logsnr, labels)
    np.testing.assert_array_equal(det1, det2)
    d1 = apply(params, jax.random.PRNGKey(5), z, logsnr, labels)
    d2 = apply(params, jax.random.PRNGKey(6), z, logsnr, labels)
    assert float(jnp.max(jnp.abs(d1 - d2))) > 1e-4  # dropout on with an rng
    # The class label and the noise level change the output.
    other = apply(params, None, z, logsnr, jnp.array([4, 5, 6, 7]))
    assert float(jnp.max(jnp.abs(other - det1))) > 1e-4
    other_t = apply(params, None, z, logsnr + 3.0, labels)
    assert float(jnp.max(jnp.abs(other_t - det1))) > 1e-4
    # Batch elements are independent (no leakage across the batch).
    single = apply(params, None, z[:1], logsnr[:1], labels[:1])
    np.testing.assert_allclose(single, det1[:1], rtol=1e-4, atol=1e-5)


def test_uvit_rejects_bad_resolution():
    init, _ = build_uvit(SMALL, 10, 1)
    with pytest.raises(ValueError, match="divisible"):
        init(jax.random.PRNGKey(0), jnp.zeros((1, 7, 7, 1)), jnp.zeros((1,)), jnp.zeros((1,), int))


@pytest.mark.parametrize("shape,groups", [((3, 8, 8, 16), 8), ((2, 4, 4, 12), 4), ((2, 6, 4), 2)])
def test_groupnorm_matches_haiku(shape, groups):
    import haiku as hk

    from gencast_rmmd.image.uvit import GroupNorm

    ours = hk.without_apply_rng(hk.transform(lambda x: GroupNorm(groups)(x)))
    ref = hk.without_apply_rng(
        hk.transform(lambda x: hk.GroupNorm(groups, create_scale=True, create_offset=True)(x))
    )
    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), shape)
    p_ours, p_ref = ours.init(None, x), ref.init(None, x)
    # the same parameter names, shapes and initial values: checkpoints load either way
    assert jax.tree.map(np.shape, p_ours) == jax.tree.map(np.shape, p_ref)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
        np.testing.assert_array_equal(a, b)
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    c = shape[-1]
    params = {
        "group_norm": {
            "scale": jax.random.normal(k1, (c,)),
            "offset": jax.random.normal(k2, (c,)),
        }
    }
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=2e-5, rtol=1e-5)


def test_groupnorm_rejects_indivisible_channels():
    import haiku as hk

    from gencast_rmmd.image.uvit import GroupNorm

    f = hk.without_apply_rng(hk.transform(lambda x: GroupNorm(4)(x)))
    with pytest.raises(ValueError, match="6 channels are not divisible by 4 groups"):
        f.init(None, jnp.zeros((1, 2, 2, 6)))
