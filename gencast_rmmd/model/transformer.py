"""GenCast's sparse mesh transformer and its three attention backends.

A pre-LN transformer on the mesh nodes, without positional encodings: position enters only
through the grid2mesh structural features and through the attention mask, which restricts each
node to its k-hop mesh neighbourhood (self included). Every LayerNorm is conditioned on the noise
embedding (`LinearNormConditioning`); the attention output projection `mha_final` and the FFW
`ffw_down` start at zero, so each block starts as the identity.

Backends (same numbers up to float rounding):
- `mha`: dense masked attention over all N x N pairs (simplest; fine for small meshes);
- `triblockdiag_mha`: the nodes are in a banded order (reverse Cuthill-McKee), so with a block size
  >= the mask bandwidth the neighbours of query block b lie in key blocks b-1, b, b+1. Logits are
  computed only against those three blocks with one joint softmax: O(N * block) instead of N^2;
- `splash_mha`: JAX's Pallas TPU splash-attention kernel with a lazily evaluated graph mask;
  TPU only, and only when head_dim % 128 == 0. Elsewhere `resolve_attention_type` switches to
  `triblockdiag_mha` (what the published checkpoints do on GPU).

Haiku paths equal the official keys: `mesh_transformer/~/transformer/block_NN/{mha_proj_q,
mha_proj_k, mha_proj_v, mha_final, ffw_up, ffw_down, block_NN_norm_conditioning{,_1}/linear}`
and `.../transformer/transformer_final_norm_conditioning/linear`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from gencast_rmmd.model.configs import SparseTransformerConfig
from gencast_rmmd.model.noise_encoder import LinearNormConditioning, layer_norm

log = logging.getLogger(__name__)

MASK_VALUE = -1e30

# q, k, v: [B, N, H, Dh] -> [B, N, H, Dh]
AttentionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _softmax_f32(logits: jax.Array) -> jax.Array:
    # Softmax in float32 even for bf16 inputs (as upstream's upcast).
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def dense_masked_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: np.ndarray | jax.Array
) -> jax.Array:
    """softmax(q k^T / sqrt(Dh) masked) v with a [N, N] boolean mask (True = attend).

    q, k, v: [B, N, H, Dh]. Masked logits are set to -1e30 (not -inf: a fully masked row gives a
    uniform average instead of NaN).
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k)
    logits = jnp.where(jnp.asarray(mask)[None, None], logits, MASK_VALUE)
    w = _softmax_f32(logits).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v)


def banded_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask_blocks: np.ndarray | jax.Array
) -> jax.Array:
    """Masked attention for a mask of bandwidth < block (the `triblockdiag_mha` backend).

    q, k, v: [B, N, H, Dh]; mask_blocks: [nb, bs, 3 bs] boolean from
    `DenoiserGraphs.banded_mask_blocks()`: row r of query block b against the concatenated key
    blocks [b-1, b, b+1] (missing blocks and padding are False). The three blocks share one softmax,
    so the result equals `dense_masked_attention` with the full mask.
    """
    b, n, h, d = q.shape
    nb, bs, _ = mask_blocks.shape
    pad = nb * bs - n
    scale = d**-0.5

    def blocks(x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return x.reshape(b, nb, bs, h, d)

    qb = blocks(q * scale)
    # One zero block on each side, then gather [previous, own, next] for every block.
    kp = jnp.pad(blocks(k), ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    vp = jnp.pad(blocks(v), ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    k3 = jnp.concatenate([kp[:, :-2], kp[:, 1:-1], kp[:, 2:]], axis=2)  # [B, nb, 3bs, H, D]
    v3 = jnp.concatenate([vp[:, :-2], vp[:, 1:-1], vp[:, 2:]], axis=2)
    logits = jnp.einsum("bnqhd,bnkhd->bnhqk", qb, k3)
    logits = jnp.where(jnp.asarray(mask_blocks)[None, :, None], logits, MASK_VALUE)
    w = _softmax_f32(logits).astype(v.dtype)
    out = jnp.einsum("bnhqk,bnkhd->bnqhd", w, v3)
    return out.reshape(b, nb * bs, h, d)[:, :n]


# ------------------------------------------------------------------------------------------------
# Splash attention (TPU).


def _splash_modules():
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel,
        splash_attention_mask,
    )

    return splash_attention_kernel, splash_attention_mask


def _padded_len(n: int, cfg: SparseTransformerConfig) -> int:
    m = int(np.lcm.reduce([cfg.block_q, cfg.block_kv, cfg.block_q_dkv, cfg.block_kv_dkv]))
    return -(-n // m) * m


def make_splash_mask(mask: scipy.sparse.csr_matrix, padded_len: int, num_heads: int):
    """The k-hop mask as a splash-attention `MultiHeadMask` of shape [H, P, P] (P = padded_len).

    The mask is evaluated lazily, block by block, from the sparse matrix (a dense 0.25 deg mask
    would need 1.7 GB). Padding rows attend to themselves only, so no row is empty; padding
    columns are never seen by real rows.
    """
    _, sm = _splash_modules()
    n = mask.shape[0]
    pad = padded_len - n
    full = (
        scipy.sparse.block_diag(
            [mask.astype(bool), scipy.sparse.identity(pad, dtype=bool)], format="csr"
        )
        if pad
        else mask.astype(bool).tocsr()
    )

    @dataclasses.dataclass(eq=False)
    class SparseGraphMask(sm.Mask):
        matrix: scipy.sparse.csr_matrix

        @property
        def shape(self) -> tuple[int, ...]:
            return self.matrix.shape

        def __getitem__(self, idx) -> np.ndarray:
            rows, cols = idx
            return np.asarray(self.matrix[rows][:, cols].toarray(), dtype=bool)

        def __eq__(self, other: object) -> bool:
            return isinstance(other, SparseGraphMask) and self is other

        def __hash__(self) -> int:
            return id(self)

    one = SparseGraphMask(full)
    return sm.MultiHeadMask([one] * num_heads)


def make_splash_attention(
    mask: scipy.sparse.csr_matrix, cfg: SparseTransformerConfig
) -> AttentionFn:
    """A `splash_mha` attention function (TPU only) for q, k, v [B, N, H, Dh]."""
    sk, _ = _splash_modules()
    n = mask.shape[0]
    p = _padded_len(n, cfg)
    kernel = sk.make_splash_mha(
        make_splash_mask(mask, p, cfg.num_heads),
        block_sizes=sk.BlockSizes(
            block_q=cfg.block_q,
            block_kv=cfg.block_kv,
            block_kv_compute=cfg.block_kv_compute,
            block_q_dkv=cfg.block_q_dkv,
            block_kv_dkv=cfg.block_kv_dkv,
            block_kv_dkv_compute=cfg.block_kv_dkv_compute,
        ),
        head_shards=1,
        q_seq_shards=1,
    )

    def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        scale = q.shape[-1] ** -0.5
        pad = ((0, 0), (0, p - n), (0, 0), (0, 0))
        # kernel: [H, P, Dh] per batch element.
        qh, kh, vh = (jnp.pad(x, pad).transpose(0, 2, 1, 3) for x in (q * scale, k, v))
        out = jax.vmap(kernel)(qh, kh, vh)
        return out.transpose(0, 2, 1, 3)[:, :n]

    return attend


def resolve_attention_type(cfg: SparseTransformerConfig, backend: str | None = None) -> str:
    """The attention backend to run: `splash_mha` only on TPU with head_dim % 128 == 0, else
    `triblockdiag_mha` (the published checkpoints say splash_mha: they were trained on TPU)."""
    backend = backend or jax.default_backend()
    if cfg.attention_type != "splash_mha":
        return cfg.attention_type
    if backend != "tpu":
        log.info("splash_mha needs a TPU (running on %s): using triblockdiag_mha", backend)
        return "triblockdiag_mha"
    if cfg.head_dim % 128:
        log.info(
            "splash_mha needs head_dim %% 128 == 0 (found %d): using triblockdiag_mha", cfg.head_dim
        )
        return "triblockdiag_mha"
    return "splash_mha"


def make_attention_fn(
    attention_type: str,
    mask: scipy.sparse.csr_matrix,
    block_size: int,
    cfg: SparseTransformerConfig,
) -> AttentionFn:
    """The attention function of a backend for a [N, N] sparse boolean mask.

    `block_size` (>= bandwidth + 1) is used by `triblockdiag_mha`.
    """
    if attention_type == "mha":
        dense = np.asarray(mask.toarray(), dtype=bool)
        return lambda q, k, v: dense_masked_attention(q, k, v, dense)
    if attention_type == "triblockdiag_mha":
        blocks = banded_mask_blocks(mask, block_size)
        return lambda q, k, v: banded_attention(q, k, v, blocks)
    if attention_type == "splash_mha":
        return make_splash_attention(mask, cfg)
    raise ValueError(f"unknown attention_type {attention_type!r}")


def banded_mask_blocks(mask: scipy.sparse.spmatrix, block_size: int) -> np.ndarray:
    """[nb, bs, 3 bs] boolean blocks of a mask with bandwidth < bs (see `banded_attention`)."""
    bs = int(block_size)
    n = mask.shape[0]
    nb = -(-n // bs)
    coo = mask.tocoo()
    b = coo.row // bs
    col = coo.col - (b - 1) * bs
    if coo.nnz and (col.min() < 0 or col.max() >= 3 * bs):
        raise ValueError(f"mask bandwidth exceeds the block size {bs}")
    out = np.zeros((nb, bs, 3 * bs), bool)
    out[b, coo.row % bs, col] = True
    return out


# ------------------------------------------------------------------------------------------------
# Haiku modules.


def _winit(mult: float, num_layers: int) -> hk.initializers.Initializer:
    if mult == 0.0:
        return hk.initializers.Constant(0.0)
    return hk.initializers.VarianceScaling(mult / num_layers)


# Upstream's fixed _ModelConfig values that are not in SparseTransformerConfig.
FFW_WINIT_MULT = 2.0
ATTN_WINIT_MULT = 2.0


class Block(hk.Module):
    """x + Attn(Cond(LN(x))), then + FFW(Cond(LN(x))). x: [B, N, D]; conditioning [B, C]."""

    def __init__(self, cfg: SparseTransformerConfig, attention: AttentionFn, name: str):
        super().__init__(name=name)
        self._cfg = cfg
        self._attention = attention
        self._cond_name = f"{name}_norm_conditioning"

    def __call__(self, x: jax.Array, conditioning: jax.Array) -> jax.Array:
        cfg = self._cfg
        cond = conditioning[:, None, :]
        b, n, d = x.shape
        h, dh = cfg.num_heads, cfg.head_dim

        y = LinearNormConditioning(name=self._cond_name)(layer_norm(x), cond)
        qkv_init = _winit(ATTN_WINIT_MULT, cfg.num_layers)
        q, k, v = (
            hk.Linear(h * dh, with_bias=False, w_init=qkv_init, name=f"mha_proj_{s}")(y).reshape(
                b, n, h, dh
            )
            for s in "qkv"
        )
        att = self._attention(q, k, v).reshape(b, n, h * dh)
        x = x + hk.Linear(
            d, w_init=_winit(cfg.attn_winit_final_mult, cfg.num_layers), name="mha_final"
        )(att)

        # Same name again: Haiku makes it `block_NN_norm_conditioning_1` (the official key).
        y = LinearNormConditioning(name=self._cond_name)(layer_norm(x), cond)
        y = hk.Linear(cfg.ffw_hidden, w_init=_winit(FFW_WINIT_MULT, cfg.num_layers), name="ffw_up")(
            y
        )
        y = jax.nn.gelu(y)
        y = hk.Linear(d, w_init=_winit(cfg.ffw_winit_final_mult, cfg.num_layers), name="ffw_down")(
            y
        )
        return x + y


class Transformer(hk.Module):
    """`num_layers` blocks, then a conditioned LayerNorm. x: [B, N, D] -> [B, N, D]."""

    def __init__(
        self, cfg: SparseTransformerConfig, attention: AttentionFn, name: str = "transformer"
    ):
        super().__init__(name=name)
        self._cfg = cfg
        self._attention = attention

    def __call__(self, x: jax.Array, conditioning: jax.Array) -> jax.Array:
        for i in range(self._cfg.num_layers):
            x = Block(self._cfg, self._attention, name=f"block_{i:02d}")(x, conditioning)
        return LinearNormConditioning(name="transformer_final_norm_conditioning")(
            layer_norm(x), conditioning[:, None, :]
        )


class MeshTransformer(hk.Module):
    """The transformer on mesh latents laid out [N, B, D] (as the GNNs): transposes to
    [B, N, D] and back. The inner `Transformer` is made in `__init__` (path `~/transformer`)."""

    def __init__(
        self,
        cfg: SparseTransformerConfig,
        attention: AttentionFn,
        name: str = "mesh_transformer",
    ):
        super().__init__(name=name)
        self._transformer = Transformer(cfg, attention, name="transformer")

    def __call__(self, x: jax.Array, conditioning: jax.Array) -> jax.Array:
        y = self._transformer(jnp.swapaxes(x, 0, 1), conditioning)
        return jnp.swapaxes(y, 0, 1)
