"""Tests of the sparse mesh transformer: attention backends, identity at init, names, splash mask."""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse

from gencast_rmmd.model import icosahedral_mesh
from gencast_rmmd.model import transformer as tr
from gencast_rmmd.model.configs import SparseTransformerConfig
from gencast_rmmd.model.noise_encoder import layer_norm


def reference_attention(q, k, v, mask):
    """Per-query softmax over the allowed keys only (numpy, float64)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, n, h, d = q.shape
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                js = np.nonzero(mask[i])[0]
                logits = k[bi, js, hi] @ q[bi, i, hi] / np.sqrt(d)
                w = np.exp(logits - logits.max())
                out[bi, i, hi] = (w / w.sum()) @ v[bi, js, hi]
    return out


def qkv(n, b=2, h=2, d=8, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return tuple(jax.random.normal(kk, (b, n, h, d)) * 2.0 for kk in ks)


def test_dense_masked_attention_matches_reference():
    mesh = icosahedral_mesh.icosahedral_mesh(1)
    mask = icosahedral_mesh.k_hop_mask(mesh, 1).toarray()
    q, k, v = qkv(mesh.num_vertices)
    got = jax.jit(tr.dense_masked_attention)(q, k, v, mask)
    np.testing.assert_allclose(got, reference_attention(q, k, v, mask), atol=1e-5)


@pytest.mark.parametrize("level,k_hop", [(2, 4), (3, 2), (2, 1)])
def test_banded_attention_equals_dense(level, k_hop):
    mesh = icosahedral_mesh.icosahedral_mesh(level)
    mask = icosahedral_mesh.k_hop_mask(mesh, k_hop)
    bs = icosahedral_mesh.mask_bandwidth(mask) + 1
    blocks = tr.banded_mask_blocks(mask, bs)
    q, k, v = qkv(mesh.num_vertices, seed=level)
    dense = jax.jit(tr.dense_masked_attention)(q, k, v, mask.toarray())
    banded = jax.jit(tr.banded_attention)(q, k, v, blocks)
    np.testing.assert_allclose(banded, dense, rtol=1e-5, atol=1e-5)
    # A larger block than needed gives the same numbers too.
    banded2 = jax.jit(tr.banded_attention)(q, k, v, tr.banded_mask_blocks(mask, bs + 7))
    np.testing.assert_allclose(banded2, dense, rtol=1e-5, atol=1e-5)


def test_banded_mask_blocks_reject_too_small_blocks():
    mask = icosahedral_mesh.k_hop_mask(icosahedral_mesh.icosahedral_mesh(2), 4)
    with pytest.raises(ValueError, match="bandwidth"):
        tr.banded_mask_blocks(mask, icosahedral_mesh.mask_bandwidth(mask) // 2)


def test_banded_blocks_reassemble_the_dense_mask():
    mask = icosahedral_mesh.k_hop_mask(icosahedral_mesh.icosahedral_mesh(3), 3)
    n = mask.shape[0]
    bs = icosahedral_mesh.mask_bandwidth(mask) + 1
    blocks = tr.banded_mask_blocks(mask, bs)
    nb = blocks.shape[0]
    full = np.zeros(((nb + 2) * bs, (nb + 2) * bs), bool)
    for b in range(nb):
        full[(b + 1) * bs : (b + 2) * bs, b * bs : (b + 3) * bs] = blocks[b]
    np.testing.assert_array_equal(full[bs : bs + n, bs : bs + n], mask.toarray())
    assert full.sum() == mask.nnz


def _cfg(**kw):
    base = dict(attention_k_hop=2, d_model=16, num_layers=3, num_heads=4, ffw_hidden=32)
    base.update(kw)
    return SparseTransformerConfig(**base)


def _mesh_attention(cfg, level=2, kind="mha"):
    mask = icosahedral_mesh.k_hop_mask(
        icosahedral_mesh.icosahedral_mesh(level), cfg.attention_k_hop
    )
    return mask, tr.make_attention_fn(kind, mask, icosahedral_mesh.mask_bandwidth(mask) + 1, cfg)


def test_transformer_blocks_are_the_identity_at_init():
    cfg = _cfg()
    mask, att = _mesh_attention(cfg)
    n = mask.shape[0]
    x = jax.random.normal(jax.random.key(0), (2, n, cfg.d_model))
    cond = jax.random.normal(jax.random.key(1), (2, 16))

    blocks = hk.transform(
        lambda x, c: [tr.Block(cfg, att, name=f"block_{i:02d}")(x, c) for i in range(2)]
    )
    params = jax.jit(blocks.init)(jax.random.key(2), x, cond)
    for y in jax.jit(blocks.apply)(params, None, x, cond):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))

    mt = hk.transform(lambda x, c: tr.MeshTransformer(cfg, att)(x, c))
    xt = jnp.swapaxes(x, 0, 1)  # [N, B, D]
    p = jax.jit(mt.init)(jax.random.key(3), xt, cond)
    # Blocks are the identity; the final conditioned LayerNorm starts as a plain LayerNorm.
    np.testing.assert_allclose(jax.jit(mt.apply)(p, None, xt, cond), layer_norm(xt), atol=1e-5)
    # Output projections start at exactly zero; conditioning weights near zero.
    for name in ("mha_final", "ffw_down"):
        m = f"mesh_transformer/~/transformer/block_01/{name}"
        assert not np.any(p[m]["w"]) and not np.any(p[m]["b"])
    w = p["mesh_transformer/~/transformer/block_00/block_00_norm_conditioning/linear"]["w"]
    assert np.abs(w).max() < 1e-7


def test_transformer_param_names_and_backend_equivalence():
    cfg = _cfg()
    mask, att_dense = _mesh_attention(cfg, kind="mha")
    _, att_band = _mesh_attention(cfg, kind="triblockdiag_mha")
    n = mask.shape[0]
    x = jax.random.normal(jax.random.key(0), (n, 2, cfg.d_model))
    cond = jax.random.normal(jax.random.key(1), (2, 16))
    dense = hk.transform(lambda x, c: tr.MeshTransformer(cfg, att_dense)(x, c))
    band = hk.transform(lambda x, c: tr.MeshTransformer(cfg, att_band)(x, c))
    params = jax.jit(dense.init)(jax.random.key(2), x, cond)
    dense_apply = jax.jit(dense.apply)
    names = {f"{m}:{k}" for m, p in params.items() for k in p}
    pre = "mesh_transformer/~/transformer/"
    assert f"{pre}block_02/block_02_norm_conditioning_1/linear:w" in names
    assert f"{pre}block_00/mha_proj_q:w" in names and f"{pre}block_00/mha_proj_q:b" not in names
    assert f"{pre}transformer_final_norm_conditioning/linear:b" in names
    assert len(names) == 3 * 13 + 2  # per block: 2 x cond (w, b), q, k, v, 3 x (w, b)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(np.float32), params
    )
    np.testing.assert_allclose(
        dense_apply(params, None, x, cond),
        jax.jit(band.apply)(params, None, x, cond),
        rtol=1e-4,
        atol=1e-5,
    )
    # The mask matters: after L layers a node's output depends on nodes up to L * k hops only.
    reach = icosahedral_mesh.k_hop_mask(
        icosahedral_mesh.icosahedral_mesh(2), cfg.attention_k_hop * cfg.num_layers
    )
    far = np.nonzero(~reach.toarray()[0])[0][0]
    y0 = dense_apply(params, None, x, cond)
    y1 = dense_apply(params, None, x.at[far].add(jnp.arange(cfg.d_model) / 4.0), cond)
    np.testing.assert_allclose(y0[0], y1[0], atol=1e-5)
    assert not np.allclose(y0[far], y1[far])


def test_splash_mask_equals_dense_mask():
    """The splash-attention mask object (built on CPU, kernel not run) equals the k-hop mask."""
    pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention")
    cfg = _cfg(
        d_model=512, num_heads=4, block_q=128, block_kv=128, block_q_dkv=128, block_kv_dkv=128
    )
    mask = icosahedral_mesh.k_hop_mask(icosahedral_mesh.icosahedral_mesh(2), 4)
    n = mask.shape[0]
    p = tr._padded_len(n, cfg)
    assert p % 128 == 0 and p >= n
    mh = tr.make_splash_mask(mask, p, cfg.num_heads)
    assert mh.shape == (cfg.num_heads, p, p)
    dense = mask.toarray()
    for h in range(cfg.num_heads):
        full = mh[h, :, :]
        np.testing.assert_array_equal(full[:n, :n], dense)
        assert not full[:n, n:].any() and not full[n:, :n].any()
        np.testing.assert_array_equal(full[n:, n:], np.eye(p - n, dtype=bool))
    # Block-wise slices (what the kernel's mask processing reads) agree too.
    np.testing.assert_array_equal(
        mh[1, 0:64, 64:128], np.pad(dense, ((0, p - n), (0, p - n)))[0:64, 64:128]
    )


def test_splash_kernel_mask_info_reconstructs_the_dense_mask():
    """The block-sparse MaskInfo the splash kernel would use (built on CPU) covers exactly the
    k-hop mask: rebuilding a dense mask from its full/partial blocks gives the same array."""
    mi = pytest.importorskip(
        "jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_mask_info"
    )
    mask = icosahedral_mesh.k_hop_mask(icosahedral_mesh.icosahedral_mesh(3), 4)
    n, p, bq = mask.shape[0], 768, 128
    info, _ = mi.process_mask(tr.make_splash_mask(mask, p, 4), (bq, bq))
    block_mask = np.asarray(info.block_mask)[0].astype(int)
    data_next = np.asarray(info.data_next)[0].astype(int)
    mask_next = np.asarray(info.mask_next)[0].astype(int)
    partial = np.asarray(info.partial_mask_blocks)
    recon = np.zeros((p, p), bool)
    for qi, slot in zip(*(a.tolist() for a in np.nonzero(block_mask))):
        kv = data_next[qi, slot]
        rows, cols = slice(qi * bq, (qi + 1) * bq), slice(kv * bq, (kv + 1) * bq)
        recon[rows, cols] = True if block_mask[qi, slot] == 2 else partial[mask_next[qi, slot]]
    want = np.pad(mask.toarray(), ((0, p - n), (0, p - n)))
    want[np.arange(n, p), np.arange(n, p)] = True
    np.testing.assert_array_equal(recon, want)
    assert (block_mask == 0).any()  # some blocks are skipped: the banded order pays off


def test_resolve_attention_type():
    cfg = _cfg(d_model=512, num_heads=4, attention_type="splash_mha")
    assert tr.resolve_attention_type(cfg, "cpu") == "triblockdiag_mha"
    assert tr.resolve_attention_type(cfg, "gpu") == "triblockdiag_mha"
    assert tr.resolve_attention_type(cfg, "tpu") == "splash_mha"
    small = _cfg(d_model=64, num_heads=4, attention_type="splash_mha")
    assert tr.resolve_attention_type(small, "tpu") == "triblockdiag_mha"  # head_dim 16
    assert tr.resolve_attention_type(_cfg(attention_type="mha"), "tpu") == "mha"


def test_sparse_mask_is_symmetric():
    mask = icosahedral_mesh.k_hop_mask(icosahedral_mesh.icosahedral_mesh(3), 4)
    assert (mask != mask.T).nnz == 0
    assert isinstance(mask, scipy.sparse.csr_matrix)
