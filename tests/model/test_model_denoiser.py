"""Tests of the GenCast denoiser: official shapes, preconditioning, channel routing, behaviour."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_reference_keys import official_param_shapes

from gencast_rmmd.config import load_config
from gencast_rmmd.data.task import TaskConfig, gencast_task
from gencast_rmmd.model import denoiser as den_lib
from gencast_rmmd.model.configs import (
    DenoiserArchitectureConfig,
    ModelConfig,
    SparseTransformerConfig,
    with_attention_type,
)
from gencast_rmmd.model.denoiser import Conditioning, build_denoiser, count_params

LAT_5P625 = -87.1875 + 5.625 * np.arange(32)
LON_5P625 = 5.625 * np.arange(64)
LAT_1DEG = np.linspace(-90.0, 90.0, 181)
LON_1DEG = np.arange(360.0)


def small_task() -> TaskConfig:
    """GenCast's variables on 3 levels: 6 + 6*3 = 24 outputs."""
    return gencast_task(levels=(500, 850, 1000))


def tiny_arch(
    attention_type: str = "triblockdiag_mha", mesh_size: int = 2
) -> DenoiserArchitectureConfig:
    return DenoiserArchitectureConfig(
        sparse_transformer_config=SparseTransformerConfig(
            attention_k_hop=4,
            d_model=32,
            num_layers=2,
            num_heads=4,
            ffw_hidden=64,
            attention_type=attention_type,
        ),
        mesh_size=mesh_size,
        latent_size=32,
    )


def random_inputs(den, batch: int, seed: int = 0):
    x, sigma, cond = den.example_inputs(batch)
    k = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(k[0], x.shape)
    sigma = jnp.exp(jax.random.uniform(k[1], (batch,), minval=-3.0, maxval=4.0))
    cond = Conditioning(
        jax.random.normal(k[2], cond.inputs.shape), jax.random.normal(k[3], cond.forcings.shape)
    )
    return x, sigma, cond


def random_params(den, seed: int = 1):
    """Random params of the right names/shapes (w ~ N(0, 1/fan_in), b ~ N(0, 0.05^2)), without
    compiling Haiku's init; every path (also the zero-initialized ones) is active."""
    rng = np.random.default_rng(seed)

    def draw(a):
        std = 0.05 if len(a.shape) == 1 else 1.0 / np.sqrt(a.shape[0])
        return jnp.asarray((std * rng.standard_normal(a.shape)).astype(np.float32))

    return jax.tree_util.tree_map(draw, den.param_shapes())


@pytest.fixture(scope="module")
def tiny():
    den = build_denoiser(tiny_arch(), small_task(), LAT_5P625, LON_5P625)
    x, sigma, cond = random_inputs(den, 2)
    params = random_params(den)
    return den, params, (x, sigma, cond)


def test_preconditioning_identities():
    sigma = jnp.geomspace(0.02, 88.0, 50)
    np.testing.assert_allclose(den_lib.c_skip(sigma) + den_lib.c_out(sigma) ** 2, 1.0, rtol=1e-6)
    np.testing.assert_allclose(den_lib.c_in(sigma) ** 2 * (sigma**2 + 1), 1.0, rtol=1e-6)
    # The training loss weight (model/losses.py) is 1 / c_out^2.
    from gencast_rmmd.model.losses import loss_weight

    np.testing.assert_allclose(loss_weight(sigma) * den_lib.c_out(sigma) ** 2, 1.0, rtol=1e-5)


def test_mini_architecture_param_count_and_names():
    """eval_shape of the 1 deg Mini: 57,492,612 params in 278 tensors, official names/shapes."""
    cfg = load_config(ModelConfig, "gencast_1p0deg_mini", kind="model")
    arch = cfg.denoiser_architecture_config
    den = build_denoiser(arch, gencast_task(), LAT_1DEG, LON_1DEG, cfg.noise_encoder_config)
    shapes = den.param_shapes()
    assert count_params(shapes) == (57_492_612, 278)
    got = {f"{m}:{n}": tuple(a.shape) for m, p in shapes.items() for n, a in p.items()}
    assert got == official_param_shapes()
    assert all(a.dtype == jnp.float32 for p in shapes.values() for a in p.values())
    # Grid input width 264 + 3 and the 1 deg graph sizes of the official model.
    assert den.task.layout.n_denoiser_grid_features == 264
    assert len(den.graphs.g2m_senders) == 102_486
    assert np.bincount(den.graphs.g2m_senders, minlength=181 * 360).min() >= 1
    assert len(den.graphs.m2g_senders) == 3 * 181 * 360
    assert den.graphs.n_mesh == 2562
    # A splash checkpoint config runs as triblockdiag off TPU.
    assert den.requested_attention_type == "splash_mha"
    assert den.arch.sparse_transformer_config.attention_type == "triblockdiag_mha"
    assert arch.sparse_transformer_config.attention_type == "splash_mha"  # not mutated


def test_param_count_does_not_depend_on_mesh_or_grid():
    a = build_denoiser(tiny_arch(mesh_size=2), small_task(), LAT_5P625, LON_5P625).param_shapes()
    b = build_denoiser(tiny_arch(mesh_size=1), small_task(), LAT_5P625[::2], LON_5P625[::2])
    assert jax.tree_util.tree_map(lambda x: x.shape, a) == jax.tree_util.tree_map(
        lambda x: x.shape, b.param_shapes()
    )
    assert count_params(a) == (sum(np.prod(s) for s in official_param_shapes(
        latent=32, num_layers=2, ffw_hidden=64, grid_in=small_task().layout.n_denoiser_grid_features + 3, n_out=24
    ).values()), len(official_param_shapes(num_layers=2)))  # fmt: skip


def test_grid_feature_order_matches_reference_table():
    """The merged noisy-target/forcing block is in sorted-name order (reference §3.4)."""
    task = gencast_task()
    lay = task.layout
    names_in = [v for v, _, _ in lay.inputs]
    names_t = [v for v, _, _ in lay.targets]
    names_f = [v for v, _, _ in lay.forcings]
    codes = {n: i for i, n in enumerate(sorted(set(names_in + names_t + names_f)))}
    x = jnp.array([codes[n] for n in names_t], jnp.float32)[None, None, None]
    cond = Conditioning(
        jnp.array([codes[n] + 100 for n in names_in], jnp.float32)[None, None, None],
        jnp.array([codes[n] for n in names_f], jnp.float32)[None, None, None],
    )
    feats = np.asarray(den_lib.assemble_grid_features(x, cond, lay.noisy_block_index))[0, 0, 0]
    assert feats.shape == (264,)
    inv = {v: k for k, v in codes.items()}
    block = [inv[int(c)] for c in feats[176:]]
    expected = []
    for name, n in [
        ("10m_u_component_of_wind", 1), ("10m_v_component_of_wind", 1), ("2m_temperature", 1),
        ("day_progress_cos", 1), ("day_progress_sin", 1), ("geopotential", 13),
        ("mean_sea_level_pressure", 1), ("sea_surface_temperature", 1), ("specific_humidity", 13),
        ("temperature", 13), ("total_precipitation_12hr", 1), ("u_component_of_wind", 13),
        ("v_component_of_wind", 13), ("vertical_velocity", 13), ("year_progress_cos", 1),
        ("year_progress_sin", 1),
    ]:  # fmt: skip
        expected += [name] * n
    assert block == expected
    assert [inv[int(c) - 100] for c in feats[:176]] == names_in


def test_forward_shape_determinism_and_preconditioning(tiny):
    den, params, (x, sigma, cond) = tiny
    apply = jax.jit(den.apply)
    d1 = apply(params, x, sigma, cond)
    assert d1.shape == x.shape and bool(jnp.all(jnp.isfinite(d1)))
    np.testing.assert_array_equal(np.asarray(d1), np.asarray(apply(params, x, sigma, cond)))
    s = sigma[:, None, None, None]
    f = jax.jit(den.apply_raw)(params, den_lib.c_in(s) * x, sigma, cond)
    np.testing.assert_allclose(
        d1, den_lib.c_skip(s) * x + den_lib.c_out(s) * f, rtol=1e-4, atol=1e-5
    )
    # sigma -> 0: the denoiser returns its input (c_skip -> 1, c_out -> 0).
    small = jnp.full_like(sigma, 1e-4)
    np.testing.assert_allclose(apply(params, x, small, cond), x, atol=2e-3)
    assert den_lib.denoise_fn_for(den) == den.apply


def test_batch_elements_are_independent(tiny):
    den, params, (x, sigma, cond) = tiny
    apply = jax.jit(den.apply)
    both = apply(params, x, sigma, cond)
    for i in range(2):
        one = apply(
            params,
            x[i : i + 1],
            sigma[i : i + 1],
            Conditioning(cond.inputs[i : i + 1], cond.forcings[i : i + 1]),
        )
        np.testing.assert_allclose(both[i : i + 1], one, rtol=2e-4, atol=2e-5)


def test_output_depends_on_noise_level_inputs_and_noisy_targets(tiny):
    den, params, (x, sigma, cond) = tiny
    raw = jax.jit(den.apply_raw)
    base = raw(params, x, sigma, cond)
    assert not np.allclose(base, raw(params, x, sigma * 2.0, cond))
    assert not np.allclose(base, raw(params, x + 1.0, sigma, cond))
    bumped = Conditioning(cond.inputs.at[..., 0].add(1.0), cond.forcings)
    assert not np.allclose(base, raw(params, x, sigma, bumped))


def test_attention_backends_give_the_same_denoiser(tiny):
    den, params, (x, sigma, cond) = tiny
    dense = build_denoiser(tiny_arch("mha"), small_task(), LAT_5P625, LON_5P625)
    np.testing.assert_allclose(
        jax.jit(den.apply)(params, x, sigma, cond),
        jax.jit(dense.apply)(params, x, sigma, cond),
        rtol=1e-4,
        atol=1e-5,
    )


def test_grad_step_is_finite(tiny):
    den, params, (x, sigma, cond) = tiny

    def loss(p):
        return jnp.mean((den.apply(p, x, sigma, cond) - x) ** 2)

    g = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves)
    assert sum(float(jnp.sum(jnp.abs(a))) for a in leaves) > 0


def test_bad_input_shapes_and_configs_are_reported(tiny):
    den, params, (x, sigma, cond) = tiny
    with pytest.raises(ValueError, match="x_noisy: expected"):
        den.apply(params, x[..., :-1], sigma, cond)
    with pytest.raises(ValueError, match="d_model"):
        build_denoiser(
            dataclasses.replace(tiny_arch(), latent_size=48), small_task(), LAT_5P625, LON_5P625
        )
    with pytest.raises(ValueError, match="node_output_size"):
        build_denoiser(
            dataclasses.replace(tiny_arch(), node_output_size=84),
            small_task(),
            LAT_5P625,
            LON_5P625,
        )


def test_model_yaml_configs_load_and_tiny_matches_sizing():
    for name in ("gencast_1p0deg", "gencast_1p0deg_mini", "gencast_0p25deg", "tiny"):
        cfg = load_config(ModelConfig, name, kind="model")
        st = cfg.denoiser_architecture_config.sparse_transformer_config
        assert st.d_model == cfg.denoiser_architecture_config.latent_size
    tiny_cfg = load_config(ModelConfig, "tiny", kind="model")
    den = build_denoiser(
        tiny_cfg.denoiser_architecture_config, gencast_task(), LAT_5P625, LON_5P625
    )
    n, _ = count_params(den.param_shapes())
    assert 1_000_000 < n < 1_500_000  # ~1.33 M with the full GenCast task (reference §9)
    assert with_attention_type(tiny_cfg.denoiser_architecture_config, "mha") != (
        tiny_cfg.denoiser_architecture_config
    )
