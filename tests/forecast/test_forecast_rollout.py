"""Autoregressive ensemble rollout: reference loop, member keys, compile-once, devices."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gencast_rmmd.data import normalization as nz
from gencast_rmmd.data.task import TaskConfig
from gencast_rmmd.forecast.model import ForecastModel, persistence_model
from gencast_rmmd.forecast.rollout import Rollout, member_keys, run_key, trace_count

N_LAT, N_LON = 4, 8
LAT = -67.5 + 45.0 * np.arange(N_LAT)
LON = 45.0 * np.arange(N_LON)


def small_task() -> TaskConfig:
    return TaskConfig(
        input_variables=("2m_temperature", "temperature", "day_progress_sin", "day_progress_cos"),
        target_variables=("2m_temperature", "temperature", "total_precipitation_12hr"),
        forcing_variables=("day_progress_sin", "day_progress_cos"),
        static_variables=(),
        pressure_levels=(500, 850),
    )


def small_norm(task: TaskConfig) -> nz.NormalizationArrays:
    lay = task.layout
    rng = np.random.default_rng(0)
    return nz.NormalizationArrays(
        input_mean=rng.normal(size=lay.n_inputs).astype(np.float32),
        input_std=(1 + rng.random(lay.n_inputs)).astype(np.float32),
        forcing_mean=np.zeros(lay.n_forcings, np.float32),
        forcing_std=np.ones(lay.n_forcings, np.float32),
        target_scale=(0.5 + rng.random(lay.n_targets)).astype(np.float32),
        target_mean=np.where(lay.last_input_of_target >= 0, 0.0, 0.1).astype(np.float32),
        last_input_of_target=lay.last_input_of_target,
    )


def damped_step(task):
    """Stand-in model: residual = -0.2 * (normalized last state) + mean forcing + 0.3 * noise."""
    last = np.maximum(task.layout.last_input_of_target, 0)

    def step(params, rng, inputs_norm, forcings_norm):
        x = jnp.take(inputs_norm, last, axis=-1)
        noise = jax.random.normal(rng, x.shape)
        return params["a"] * x + forcings_norm.mean(-1, keepdims=True) + params["s"] * noise

    return step


def stand_in_model(task=None) -> ForecastModel:
    task = task or small_task()
    step = damped_step(task)
    return ForecastModel(
        name="damped",
        checkpoint="",
        sampler="test",
        nfe=1,
        task=task,
        norm=small_norm(task),
        builder=lambda lat, lon: (step, {"a": jnp.float32(-0.2), "s": jnp.float32(0.3)}),
    )


def initial(task, lead_steps, seed=0):
    rng = np.random.default_rng(seed)
    lay = task.layout
    inputs = rng.normal(size=(N_LAT, N_LON, lay.n_inputs)).astype(np.float32) * 3
    forcings = rng.normal(size=(lead_steps, N_LAT, N_LON, lay.n_forcings)).astype(np.float32)
    return inputs, forcings


def reference_rollout(model, key, ids, inputs, forcings):
    """Plain Python loop, one member and one step at a time (no vmap/scan/jit)."""
    step, params = model.build(LAT, LON)
    out = []
    for i in ids:
        k_i = jax.random.fold_in(key, i)
        x = inputs
        states = []
        for s in range(forcings.shape[0]):
            r = step(
                params,
                jax.random.fold_in(k_i, s),
                nz.normalize_inputs(model.norm, x),
                nz.normalize_forcings(model.norm, forcings[s]),
            )
            state = nz.targets_from_residuals(model.norm, np.asarray(r), x)
            x = nz.next_inputs(model.task.layout, x, state, forcings[s])
            states.append(state)
        out.append(np.stack(states))
    return np.stack(out)


def test_matches_reference_loop():
    model = stand_in_model()
    inputs, forcings = initial(model.task, 3)
    key = run_key(0, np.datetime64("2021-01-01T00"))
    ro = Rollout(model, LAT, LON, block_size=2)
    got = ro(key, [0, 1, 2], inputs, forcings)
    ref = reference_rollout(model, key, [0, 1, 2], inputs, forcings)
    assert got.shape == (3, 3, N_LAT, N_LON, model.task.layout.n_targets)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
    # Members differ (own noise), and each feeds its own state forward: member 0's step-2 state
    # differs from what member 1's history would give.
    assert not np.allclose(got[0], got[1])


def test_first_members_do_not_depend_on_ensemble_size_or_blocking():
    model = stand_in_model()
    inputs, forcings = initial(model.task, 2)
    key = run_key(7, np.datetime64("2021-03-01T12"))
    big = Rollout(model, LAT, LON, block_size=3)(key, range(6), inputs, forcings)
    small = Rollout(model, LAT, LON, block_size=2)(key, range(2), inputs, forcings)
    np.testing.assert_allclose(big[:2], small, rtol=1e-6, atol=1e-6)
    # Another seed or init time gives another ensemble.
    other = Rollout(model, LAT, LON, block_size=2)(
        run_key(8, np.datetime64("2021-03-01T12")), range(2), inputs, forcings
    )
    assert not np.allclose(other, small)
    keys = member_keys(key, [0, 1])
    np.testing.assert_array_equal(np.asarray(keys[1]), np.asarray(jax.random.fold_in(key, 1)))


def test_compiles_once_across_init_times_and_blocks():
    model = stand_in_model()
    ro = Rollout(model, LAT, LON, block_size=2)
    before = trace_count()
    for seed, t in enumerate(["2021-01-01T00", "2021-01-01T12", "2021-01-02T00"]):
        inputs, forcings = initial(model.task, 2, seed=seed)
        ro(run_key(0, np.datetime64(t)), [0, 1, 2], inputs, forcings)  # 2 blocks, last one padded
    assert trace_count() - before == 1


def test_persistence_without_noise_repeats_the_initial_state():
    task = small_task()
    model = persistence_model(task, small_norm(task), noise_scale=0.0)
    inputs, forcings = initial(task, 3)
    out = Rollout(model, LAT, LON, block_size=2)(
        run_key(0, np.datetime64("2021-01-01")), [0, 1], inputs, forcings
    )
    lay = task.layout
    for c, src in enumerate(lay.last_input_of_target):
        if src >= 0:
            np.testing.assert_allclose(
                out[..., c], np.broadcast_to(inputs[..., src], out[..., c].shape), rtol=1e-6
            )
        else:  # not an input (precipitation): the normalized mean
            np.testing.assert_allclose(out[..., c], model.norm.target_mean[c], rtol=1e-6)
    # With noise: each member is a random walk whose spread grows with lead time.
    noisy = persistence_model(task, small_norm(task), noise_scale=0.5, spherical_noise=False)
    ens = Rollout(noisy, LAT, LON, block_size=8)(
        run_key(0, np.datetime64("2021-01-01")), range(8), inputs, initial(task, 6)[1]
    )
    spread = ens.std(axis=0).mean(axis=(1, 2, 3))
    assert spread[-1] > spread[0] > 0


@pytest.mark.slow
def test_two_devices_give_the_same_members(host_devices_env):
    code = textwrap.dedent(
        """
        import sys, numpy as np, jax
        sys.path.insert(0, "tests/forecast")
        from test_forecast_rollout import stand_in_model, initial, LAT, LON
        from gencast_rmmd.forecast.rollout import Rollout, run_key
        assert len(jax.devices()) == 2, jax.devices()
        m = stand_in_model()
        inputs, forcings = initial(m.task, 2)
        key = run_key(3, np.datetime64("2021-01-01"))
        a = Rollout(m, LAT, LON, block_size=4)(key, range(5), inputs, forcings)
        b = Rollout(m, LAT, LON, block_size=1, devices=jax.devices()[:1])(key, range(5), inputs, forcings)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        print("OK")
        """
    )
    env = host_devices_env(2)
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]
