"""Noise-level embedding and the conditional LayerNorm that every GenCast layer uses.

GenCast conditions the whole network on the noise level only through its normalisation layers:
each LayerNorm has no affine parameters of its own; instead a per-site linear map of a 16-d
embedding of log(sigma) gives a scale and an offset (`LinearNormConditioning`). The weights of that
map start at ~1e-8, so at initialisation every conditioned LayerNorm is a plain LayerNorm and the
noise level only comes in as training finds it useful.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.model.configs import NoiseEncoderConfig

LAYER_NORM_EPS = 1e-5  # Haiku's LayerNorm default, as used upstream.


def layer_norm(x: jax.Array, eps: float = LAYER_NORM_EPS) -> jax.Array:
    """LayerNorm over the last axis without scale/offset: (x - mean) / sqrt(var + eps).

    Statistics are computed in float32 at least (the input dtype is restored).
    """
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def fourier_features(x: jax.Array, base_period: float, num_frequencies: int) -> jax.Array:
    """[..., 2 * num_frequencies] = [cos(2 pi f x) for f] ++ [sin(2 pi f x) for f],
    f = k / base_period, k = 1..num_frequencies."""
    freqs = jnp.arange(1, num_frequencies + 1, dtype=jnp.float32) / base_period
    phase = 2.0 * np.pi * x[..., None].astype(jnp.float32) * freqs
    return jnp.concatenate([jnp.cos(phase), jnp.sin(phase)], axis=-1)


class FourierFeaturesMLP(hk.Module):
    """log(sigma) -> Fourier features -> MLP(output_sizes) with GELU between layers.

    Input: noise levels sigma [B] (> 0). Output: [B, output_sizes[-1]] (16 for GenCast).
    Haiku path of the MLP: `<name>/~/mlp/~/linear_i`.
    """

    def __init__(self, config: NoiseEncoderConfig, name: str = "fourier_features_mlp"):
        super().__init__(name=name)
        self._config = config
        self._mlp = hk.nets.MLP(
            list(config.output_sizes),
            w_init=hk.initializers.VarianceScaling(2.0, "fan_in", "uniform"),
            activation=jax.nn.gelu,
            name="mlp",
        )

    def __call__(self, noise_levels: jax.Array) -> jax.Array:
        x = jnp.log(noise_levels) if self._config.apply_log_first else noise_levels
        feats = fourier_features(x, self._config.base_period, self._config.num_frequencies)
        return self._mlp(feats)


class LinearNormConditioning(hk.Module):
    """x * (1 + scale) + offset with [scale, offset] = Linear(2F)(conditioning).

    `conditioning` must broadcast against x once the last axis is mapped to 2F (the caller
    inserts the node axis). Weights start at TruncatedNormal(1e-8), biases at 0.
    Haiku path: `<name>/linear`.
    """

    def __call__(self, x: jax.Array, conditioning: jax.Array) -> jax.Array:
        f = x.shape[-1]
        proj = hk.Linear(2 * f, w_init=hk.initializers.TruncatedNormal(stddev=1e-8), name="linear")(
            conditioning
        )
        scale_minus_one, offset = jnp.split(proj.astype(x.dtype), 2, axis=-1)
        return x * (1.0 + scale_minus_one) + offset


def conditioned_layer_norm(x: jax.Array, conditioning: jax.Array, name: str) -> jax.Array:
    """LayerNorm (no affine) followed by `LinearNormConditioning(name=name)`."""
    return LinearNormConditioning(name=name)(layer_norm(x), conditioning)
