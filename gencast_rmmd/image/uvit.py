"""U-ViT denoiser in Haiku (Simple Diffusion style, Hoogeboom et al. 2023).

Convolutional residual stages run at full resolution and downsample by 2 per stage; a transformer
runs on the tokens of the lowest-resolution feature map; the up path mirrors the down path with skip
connections. Conditioning = MLP(Fourier(logSNR)) + class embedding, fed to every residual block
(FiLM scale/shift after the second normalisation) and to every transformer block (adaptive layer
norm). Dropout (0.1 by default) sits in the residual blocks and the transformer MLPs; it is the
student's internal randomness xi in MMD (rmmd.md §0). Output projections are zero-initialised so
each block starts as the identity and the network starts by predicting v = 0.

Shapes: `z [B, H, W, C]`, `logsnr [B]`, `labels [B]` int -> `v [B, H, W, C]`; H = W divisible by
2^(len(channels) - 1).
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

from gencast_rmmd.image.config import UViTConfig


def _zeros() -> hk.initializers.Initializer:
    return hk.initializers.Constant(0.0)


class GroupNorm(hk.Module):
    """Group normalisation of `[B, ..., C]` over the spatial axes and C / groups channels, then a
    per-channel `scale` and `offset` (shape `[C]`): the function and the parameters (names,
    shapes, initial values) of `hk.GroupNorm(groups)` with `create_scale` and `create_offset`.

    Computed from per-channel sums over the spatial axes, summed per group, rather than a
    reduction over a reshaped `[B, H, W, G, C/G]`: XLA on CPU runs that reshape-reduction slowly
    (the U-ViT's forward at batch 500: 71 ms with hk.GroupNorm against 52 ms with no norm at
    all; benchmarks/image.py measures the two side by side)."""

    def __init__(self, groups: int, eps: float = 1e-5, name: str = "group_norm"):
        super().__init__(name=name)
        self.groups = groups
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        b, c, g = x.shape[0], x.shape[-1], self.groups
        if c % g:
            raise ValueError(f"GroupNorm: {c} channels are not divisible by {g} groups")
        scale = hk.get_parameter("scale", (c,), x.dtype, init=jnp.ones)
        offset = hk.get_parameter("offset", (c,), x.dtype, init=jnp.zeros)
        axes = tuple(range(1, x.ndim - 1))
        n = x.size // (b * g)  # elements per group and sample

        def group_mean(per_channel_sum: jax.Array) -> jax.Array:  # [B, C] -> [B, 1.., C]
            m = per_channel_sum.reshape(b, g, c // g).sum(-1) / n
            return jnp.repeat(m, c // g, axis=-1).reshape((b,) + (1,) * len(axes) + (c,))

        d = x - group_mean(jnp.sum(x, axis=axes))
        var = group_mean(jnp.sum(d * d, axis=axes))
        return d * (jax.lax.rsqrt(var + self.eps) * scale) + offset


def _norm(x: jax.Array) -> jax.Array:
    groups = next(g for g in (8, 4, 2, 1) if x.shape[-1] % g == 0)
    return GroupNorm(groups)(x)


def fourier_logsnr(logsnr: jax.Array, num: int = 16) -> jax.Array:
    """Sinusoidal features of logSNR/10 at frequencies pi 2^k/8 (k < num/2), `[B] -> [B, num+1]`."""
    x = logsnr[:, None] / 10.0
    freqs = jnp.pi * 2.0 ** jnp.arange(num // 2, dtype=jnp.float32) / 8.0
    return jnp.concatenate([x, jnp.sin(x * freqs), jnp.cos(x * freqs)], axis=-1)


class ResBlock(hk.Module):
    """GN-swish-conv, FiLM(emb), GN-swish-dropout-conv(zero init), plus a (1x1) skip."""

    def __init__(self, channels: int, dropout: float, name: str | None = None):
        super().__init__(name=name)
        self.channels = channels
        self.dropout = dropout

    def __call__(self, x: jax.Array, emb: jax.Array, is_training: bool) -> jax.Array:
        h = jax.nn.swish(_norm(x))
        h = hk.Conv2D(self.channels, 3, name="conv1")(h)
        scale_shift = hk.Linear(2 * self.channels, w_init=_zeros(), name="film")(emb)
        scale, shift = jnp.split(scale_shift[:, None, None, :], 2, axis=-1)
        h = _norm(h) * (1.0 + scale) + shift
        h = jax.nn.swish(h)
        if is_training and self.dropout > 0:
            h = hk.dropout(hk.next_rng_key(), self.dropout, h)
        h = hk.Conv2D(self.channels, 3, w_init=_zeros(), name="conv2")(h)
        if x.shape[-1] != self.channels:
            x = hk.Conv2D(self.channels, 1, name="skip")(x)
        return x + h


class TransformerBlock(hk.Module):
    """Pre-norm transformer block with adaptive layer norm from the conditioning embedding."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float, name=None):
        super().__init__(name=name)
        self.width, self.heads, self.mlp_ratio, self.dropout = width, heads, mlp_ratio, dropout

    def _ada_ln(self, x: jax.Array, emb: jax.Array, name: str) -> jax.Array:
        h = hk.LayerNorm(-1, create_scale=False, create_offset=False, name=f"{name}_ln")(x)
        ss = hk.Linear(2 * self.width, w_init=_zeros(), name=f"{name}_ada")(emb)
        scale, shift = jnp.split(ss[:, None, :], 2, axis=-1)
        return h * (1.0 + scale) + shift

    def __call__(self, x: jax.Array, emb: jax.Array, is_training: bool) -> jax.Array:
        h = self._ada_ln(x, emb, "attn")
        attn = hk.MultiHeadAttention(
            num_heads=self.heads,
            key_size=self.width // self.heads,
            w_init=hk.initializers.VarianceScaling(1.0),
            name="attn",
        )
        h = attn(h, h, h)
        x = x + hk.Linear(self.width, w_init=_zeros(), name="attn_out")(h)
        h = self._ada_ln(x, emb, "mlp")
        h = jax.nn.gelu(hk.Linear(self.mlp_ratio * self.width, name="mlp_in")(h))
        if is_training and self.dropout > 0:
            h = hk.dropout(hk.next_rng_key(), self.dropout, h)
        return x + hk.Linear(self.width, w_init=_zeros(), name="mlp_out")(h)


class UViT(hk.Module):
    """The U-ViT v-prediction network; see the module docstring."""

    def __init__(
        self, cfg: UViTConfig, num_classes: int, out_channels: int, name: str | None = "uvit"
    ):
        super().__init__(name=name)
        self.cfg = cfg
        self.num_classes = num_classes
        self.out_channels = out_channels

    def __call__(
        self, z: jax.Array, logsnr: jax.Array, labels: jax.Array, is_training: bool
    ) -> jax.Array:
        cfg = self.cfg
        n_down = len(cfg.channels) - 1
        if z.ndim != 4 or z.shape[1] % (2**n_down) or z.shape[2] % (2**n_down):
            raise ValueError(
                f"U-ViT input must be [B, H, W, C] with H, W divisible by {2**n_down}, "
                f"found {z.shape}"
            )
        emb = fourier_logsnr(jnp.broadcast_to(logsnr, z.shape[:1]).astype(jnp.float32))
        emb = jax.nn.swish(hk.Linear(cfg.embed_dim, name="temb1")(emb))
        emb = hk.Linear(cfg.embed_dim, name="temb2")(emb)
        emb = emb + hk.Embed(self.num_classes, cfg.embed_dim, name="class_emb")(labels)
        emb = jax.nn.swish(emb)

        h = hk.Conv2D(cfg.channels[0], 3, name="stem")(z)
        skips = []
        for i, ch in enumerate(cfg.channels):
            for j in range(cfg.blocks_per_stage):
                h = ResBlock(ch, cfg.dropout, name=f"down{i}_{j}")(h, emb, is_training)
            skips.append(h)
            if i < n_down:
                h = hk.Conv2D(cfg.channels[i + 1], 3, stride=2, name=f"downsample{i}")(h)

        b, hh, ww, c = h.shape
        tok = hk.Linear(cfg.transformer_width, name="tok_in")(h.reshape(b, hh * ww, c))
        pos = hk.get_parameter(
            "pos_emb",
            [hh * ww, cfg.transformer_width],
            init=hk.initializers.TruncatedNormal(0.02),
        )
        tok = tok + pos[None]
        for layer in range(cfg.transformer_layers):
            tok = TransformerBlock(
                cfg.transformer_width, cfg.heads, cfg.mlp_ratio, cfg.dropout, name=f"tf{layer}"
            )(tok, emb, is_training)
        tok = hk.LayerNorm(-1, True, True, name="tok_ln")(tok)
        h = h + hk.Linear(c, w_init=_zeros(), name="tok_out")(tok).reshape(b, hh, ww, c)

        for i in reversed(range(len(cfg.channels))):
            h = jnp.concatenate([h, skips[i]], axis=-1)
            for j in range(cfg.blocks_per_stage):
                h = ResBlock(cfg.channels[i], cfg.dropout, name=f"up{i}_{j}")(h, emb, is_training)
            if i > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = hk.Conv2D(cfg.channels[i - 1], 3, name=f"upsample{i}")(h)
        h = jax.nn.swish(_norm(h))
        return hk.Conv2D(self.out_channels, 3, w_init=_zeros(), name="out")(h)


def build_uvit(cfg: UViTConfig, num_classes: int, out_channels: int):
    """Haiku transform of the U-ViT: `init(rng, z, logsnr, labels)` and
    `apply(params, rng, z, logsnr, labels) -> v`; dropout is on iff `rng` is not None."""

    def fwd(z, logsnr, labels, is_training):
        return UViT(cfg, num_classes, out_channels)(z, logsnr, labels, is_training)

    t = hk.transform(fwd)

    def init(rng, z, logsnr, labels):
        return t.init(rng, z, logsnr, labels, True)

    def apply(params, rng, z, logsnr, labels):
        return t.apply(params, rng, z, logsnr, labels, rng is not None)

    return init, apply
