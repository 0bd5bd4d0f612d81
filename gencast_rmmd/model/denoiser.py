"""The GenCast denoiser in Haiku, with EDM preconditioning, behind the project's generic
`denoise_fn(params, x_noisy, sigma, cond) -> x0_hat` signature.

Network F (reference notes §1.3-1.5), for one 12 h step:

1. noise embedding: `fourier_features_mlp(log sigma)` -> [B, 16], the conditioning of every
   LayerNorm in the network;
2. grid features = concat(inputs, concat(c_in * x_noisy, forcings)[..., noisy_block_index]) in the
   task's channel order, + 3 structural node features; mesh nodes get zeros + their 3 features;
3. `grid2mesh_gnn` (one interaction step) -> grid and mesh latents [N, B, L];
4. `mesh_transformer`: pre-LN blocks, attention restricted to the k-hop mesh neighbourhood;
5. `mesh2grid_gnn` (one step + output MLP) -> [B, lat, lon, C_out] in target channel order.

Preconditioning (Karras et al. 2022, sigma_data = 1):
D(x; sigma) = c_skip x + c_out F(c_in x; log sigma), c_in = 1/sqrt(sigma^2+1),
c_skip = 1/(sigma^2+1), c_out = sigma/sqrt(sigma^2+1). With x = x0 + sigma * eps, D estimates x0
(here the normalized residual target).

Parameter paths are the official Haiku ones (reference §4), so official checkpoints load as-is.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.data.task import TaskConfig
from gencast_rmmd.errors import DataError
from gencast_rmmd.model import graphs as graphs_lib
from gencast_rmmd.model import transformer as transformer_lib
from gencast_rmmd.model.configs import (
    DenoiserArchitectureConfig,
    NoiseEncoderConfig,
    with_attention_type,
)
from gencast_rmmd.model.gnn import BipartiteInteractionGNN
from gencast_rmmd.model.noise_encoder import FourierFeaturesMLP

SIGMA_DATA = 1.0

Params = hk.Params
DenoiseFn = Callable[[Params, jax.Array, jax.Array, Any], jax.Array]


class Conditioning(NamedTuple):
    """What GenCast conditions on, normalized, channels-last.

    inputs: [B, lat, lon, C_in] (the two previous states, input forcings and statics, in
      `task.layout.inputs` order); forcings: [B, lat, lon, C_f] at the target time
      (`task.layout.forcings` order).
    """

    inputs: jax.Array
    forcings: jax.Array


def c_in(sigma: jax.Array) -> jax.Array:
    """EDM input scale 1 / sqrt(sigma^2 + sigma_data^2)."""
    return 1.0 / jnp.sqrt(sigma**2 + SIGMA_DATA**2)


def c_skip(sigma: jax.Array) -> jax.Array:
    """EDM skip weight sigma_data^2 / (sigma^2 + sigma_data^2)."""
    return SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)


def c_out(sigma: jax.Array) -> jax.Array:
    """EDM output scale sigma sigma_data / sqrt(sigma^2 + sigma_data^2)."""
    return sigma * SIGMA_DATA / jnp.sqrt(sigma**2 + SIGMA_DATA**2)


def _bcast(s: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.reshape(s, s.shape + (1,) * (x.ndim - s.ndim))


@dataclasses.dataclass(frozen=True, eq=False)
class Denoiser:
    """A built GenCast denoiser for one task and one lat/lon grid (pure functions of params).

    Attributes:
      arch: the architecture config as run (attention backend resolved for this machine).
      requested_attention_type: the backend the config asked for (e.g. 'splash_mha').
      task, noise_encoder: as given. graphs: the numpy graphs. lat, lon: the grid in degrees.
    Methods `init`, `apply`, `apply_raw` are pure and jit-able; arrays are channels-last
    [B, lat, lon, C] float32.
    """

    arch: DenoiserArchitectureConfig
    requested_attention_type: str
    task: TaskConfig
    noise_encoder: NoiseEncoderConfig
    lat: np.ndarray
    lon: np.ndarray
    graphs: graphs_lib.DenoiserGraphs
    _transformed: hk.Transformed

    @property
    def n_outputs(self) -> int:
        return self.task.layout.n_targets

    def init(
        self, rng: jax.Array, x_noisy: jax.Array, sigma: jax.Array, cond: Conditioning
    ) -> Params:
        """Initial parameters (official Haiku names) for example inputs of the given shapes.

        Jitted (one compilation instead of one per eager op, which is much slower on CPU)."""
        self._check(x_noisy, sigma, cond)
        return jax.jit(self._transformed.init)(rng, x_noisy, sigma, cond)

    def apply_raw(
        self, params: Params, x_scaled: jax.Array, sigma: jax.Array, cond: Conditioning
    ) -> jax.Array:
        """The raw network F(c_in x; sigma): x_scaled = c_in(sigma) * x_noisy. -> [B, lat, lon, C_out]."""
        self._check(x_scaled, sigma, cond)
        return self._transformed.apply(params, x_scaled, sigma, cond)

    def apply(
        self, params: Params, x_noisy: jax.Array, sigma: jax.Array, cond: Conditioning
    ) -> jax.Array:
        """Preconditioned denoiser D(x; sigma) = c_skip x + c_out F(c_in x; sigma) -> x0_hat.

        x_noisy: [B, lat, lon, C_out] = x0 + sigma * eps (normalized residual targets);
        sigma: [B] noise levels (> 0); cond: `Conditioning`. Deterministic.
        """
        sigma = jnp.asarray(sigma, x_noisy.dtype)
        s = _bcast(sigma, x_noisy)
        f = self.apply_raw(params, c_in(s) * x_noisy, sigma, cond)
        return c_skip(s) * x_noisy + c_out(s) * f.astype(x_noisy.dtype)

    def param_shapes(self) -> dict[str, dict[str, jax.ShapeDtypeStruct]]:
        """{module path: {name: ShapeDtypeStruct}} by `jax.eval_shape` (no real initialization)."""
        x, sigma, cond = self.example_inputs(batch=1, abstract=True)
        return jax.eval_shape(self._transformed.init, jax.random.key(0), x, sigma, cond)

    def example_inputs(self, batch: int = 1, abstract: bool = False):
        """Zero inputs (x_noisy, sigma = 1, cond) of the right shapes (ShapeDtypeStructs if abstract)."""
        lay = self.task.layout
        shape = (batch, len(self.lat), len(self.lon))
        make = (
            (lambda s: jax.ShapeDtypeStruct(s, jnp.float32))
            if abstract
            else (lambda s: jnp.zeros(s, jnp.float32))
        )
        sigma = (
            jax.ShapeDtypeStruct((batch,), jnp.float32)
            if abstract
            else jnp.ones((batch,), jnp.float32)
        )
        return (
            make(shape + (lay.n_targets,)),
            sigma,
            Conditioning(make(shape + (lay.n_inputs,)), make(shape + (lay.n_forcings,))),
        )

    def _check(self, x: Any, sigma: Any, cond: Conditioning) -> None:
        lay = self.task.layout
        grid = (len(self.lat), len(self.lon))
        b = x.shape[0]
        want = {
            "x_noisy": (x.shape, (b, *grid, lay.n_targets)),
            "sigma": (tuple(np.shape(sigma)), (b,)),
            "cond.inputs": (cond.inputs.shape, (b, *grid, lay.n_inputs)),
            "cond.forcings": (cond.forcings.shape, (b, *grid, lay.n_forcings)),
        }
        bad = [
            f"{k}: expected {w}, found {tuple(s)}" for k, (s, w) in want.items() if tuple(s) != w
        ]
        if bad:
            raise ValueError("denoiser input shapes do not match the task/grid: " + "; ".join(bad))


def assemble_grid_features(
    x_scaled: jax.Array, cond: Conditioning, noisy_block_index: np.ndarray
) -> jax.Array:
    """[B, lat, lon, C_in + C_out + C_f] grid features in GenCast's channel order:
    concat(inputs, concat(noisy_targets, forcings)[..., noisy_block_index]) (reference §3.4)."""
    dtype = x_scaled.dtype
    merged = jnp.concatenate([x_scaled, cond.forcings.astype(dtype)], axis=-1)
    return jnp.concatenate([cond.inputs.astype(dtype), merged[..., noisy_block_index]], axis=-1)


def _network(
    x_scaled: jax.Array,
    sigma: jax.Array,
    cond: Conditioning,
    *,
    arch: DenoiserArchitectureConfig,
    noise_encoder: NoiseEncoderConfig,
    noisy_block_index: np.ndarray,
    n_outputs: int,
    g: graphs_lib.DenoiserGraphs,
    attention: transformer_lib.AttentionFn,
) -> jax.Array:
    """F(c_in x; sigma) inside `hk.transform`; see the module docstring."""
    b, n_lat, n_lon, _ = x_scaled.shape
    dtype = x_scaled.dtype
    noise_emb = FourierFeaturesMLP(noise_encoder, name="fourier_features_mlp")(sigma)

    feats = assemble_grid_features(x_scaled, cond, noisy_block_index)  # [B, lat, lon, C]
    c = feats.shape[-1]
    n_grid = n_lat * n_lon
    grid = jnp.swapaxes(feats.reshape(b, n_grid, c), 0, 1)  # [N_grid, B, C]
    grid = jnp.concatenate(
        [grid, jnp.broadcast_to(jnp.asarray(g.grid_node_features, dtype)[:, None], (n_grid, b, 3))],
        axis=-1,
    )
    # Mesh nodes carry no data: zeros in the data channels, so they share the grid embedder width.
    mesh = jnp.concatenate(
        [jnp.zeros((g.n_mesh, c), dtype), jnp.asarray(g.mesh_node_features, dtype)], axis=-1
    )

    common = dict(
        latent_size=arch.latent_size,
        hidden_layers=arch.hidden_layers,
    )
    latents = BipartiteInteractionGNN(
        edge_set="grid2mesh",
        sender_set="grid_nodes",
        receiver_set="mesh_nodes",
        embed_nodes=True,
        node_output_size=None,
        f32_aggregation=True,
        aggregate_normalization=arch.grid2mesh_aggregate_normalization,
        name="grid2mesh_gnn",
        **common,
    )(
        {"grid_nodes": grid, "mesh_nodes": mesh},
        g.g2m_features,
        g.g2m_senders,
        g.g2m_receivers,
        noise_emb,
    )
    mesh_latent = transformer_lib.MeshTransformer(
        arch.sparse_transformer_config, attention, name="mesh_transformer"
    )(latents["mesh_nodes"], noise_emb)
    out = BipartiteInteractionGNN(
        edge_set="mesh2grid",
        sender_set="mesh_nodes",
        receiver_set="grid_nodes",
        embed_nodes=False,
        node_output_size={"grid_nodes": n_outputs},
        f32_aggregation=False,
        aggregate_normalization=None,
        name="mesh2grid_gnn",
        **common,
    )(
        {"grid_nodes": latents["grid_nodes"], "mesh_nodes": mesh_latent},
        g.m2g_features,
        g.m2g_senders,
        g.m2g_receivers,
        noise_emb,
    )["grid_nodes"]  # [N_grid, B, C_out]
    return jnp.swapaxes(out, 0, 1).reshape(b, n_lat, n_lon, n_outputs)


def build_denoiser(
    arch_cfg: DenoiserArchitectureConfig,
    task: TaskConfig,
    lat: np.ndarray,
    lon: np.ndarray,
    noise_encoder_cfg: NoiseEncoderConfig | None = None,
    *,
    attention_type: str | None = None,
) -> Denoiser:
    """Build the GenCast denoiser for `task` on the grid (lat ascending, lon from 0, degrees).

    The graphs are built (numpy, cached) here. The attention backend is `attention_type` if given,
    else the config's, resolved for this machine: a `splash_mha` config runs as `triblockdiag_mha`
    off TPU. `arch_cfg.node_output_size`, if set, must equal the task's target channel count.
    """
    arch_cfg.validate()
    noise_encoder_cfg = noise_encoder_cfg or NoiseEncoderConfig()
    lay = task.layout
    if arch_cfg.node_output_size is not None and arch_cfg.node_output_size != lay.n_targets:
        raise ValueError(
            f"node_output_size is {arch_cfg.node_output_size} but the task has {lay.n_targets} "
            "target channels"
        )
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    if lat.ndim != 1 or lon.ndim != 1 or np.any(np.diff(lat) <= 0):
        # The grid comes from the data, not the model config: a DataError (checkpoint loading
        # wraps ValueError as a config problem).
        raise DataError(
            "grid: expected 1-D ascending latitudes and 1-D longitudes (degrees), found lat "
            f"shape {lat.shape} starting {lat.ravel()[:3].tolist()}, lon shape {lon.shape}"
        )
    requested = arch_cfg.sparse_transformer_config.attention_type
    run_type = attention_type or transformer_lib.resolve_attention_type(
        arch_cfg.sparse_transformer_config
    )
    if run_type != requested:
        arch_cfg = with_attention_type(
            arch_cfg, run_type, "full" if run_type != "splash_mha" else None
        )
    st = arch_cfg.sparse_transformer_config
    g = graphs_lib.build_graphs(
        lat, lon, arch_cfg.mesh_size, arch_cfg.radius_query_fraction_edge_length, st.attention_k_hop
    )
    attention = transformer_lib.make_attention_fn(
        st.attention_type, g.attention_mask, g.block_size, st
    )
    fn = functools.partial(
        _network,
        arch=arch_cfg,
        noise_encoder=noise_encoder_cfg,
        noisy_block_index=np.asarray(lay.noisy_block_index),
        n_outputs=lay.n_targets,
        g=g,
        attention=attention,
    )
    return Denoiser(
        arch=arch_cfg,
        requested_attention_type=requested,
        task=task,
        noise_encoder=noise_encoder_cfg,
        lat=lat,
        lon=lon,
        graphs=g,
        _transformed=hk.without_apply_rng(hk.transform(fn)),
    )


def denoise_fn_for(denoiser: Denoiser) -> DenoiseFn:
    """The generic `denoise_fn(params, x_noisy, sigma, cond) -> x0_hat` (preconditioned D)."""
    return denoiser.apply


def count_params(params: Any) -> tuple[int, int]:
    """(number of scalars, number of tensors) of a params tree (arrays or ShapeDtypeStructs)."""
    leaves = jax.tree_util.tree_leaves(params)
    return int(sum(int(np.prod(x.shape)) for x in leaves)), len(leaves)
