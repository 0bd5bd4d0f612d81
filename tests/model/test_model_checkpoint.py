"""Tests of GenCast checkpoint I/O: the official flat npz layout, validation, round trips."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_reference_keys import official_config_entries, official_param_shapes

from gencast_rmmd.data.task import gencast_task
from gencast_rmmd.errors import CheckpointError, DataError
from gencast_rmmd.model import checkpoint as ck
from gencast_rmmd.model.configs import ModelConfig, SamplerConfig
from gencast_rmmd.model.denoiser import Conditioning

LAT = -87.1875 + 5.625 * np.arange(32)
LON = 5.625 * np.arange(64)
SMALL = dict(mesh_size=2, latent=32, num_layers=2, ffw_hidden=64, k_hop=4, n_out=84)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_official(path: pathlib.Path, seed: int = 0, **overrides) -> dict[str, np.ndarray]:
    """A checkpoint in the official layout, written with plain np.savez from the documented keys
    (not through our writer), with random float32 params."""
    rng = np.random.default_rng(seed)
    cfg = dict(SMALL, **overrides)
    shapes = official_param_shapes(
        latent=cfg["latent"],
        num_layers=cfg["num_layers"],
        ffw_hidden=cfg["ffw_hidden"],
        n_out=cfg["n_out"],
    )
    flat = {
        f"params:{k}": (0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()
    }
    flat.update(official_config_entries(**cfg))
    with open(path, "wb") as f:
        np.savez(f, **flat)
    return flat


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "GenCast test <2019.npz"
    flat = write_official(path)
    return path, flat


def test_official_layout_loads_runs_and_round_trips(official, tmp_path):
    path, flat = official
    ckpt = ck.load_checkpoint(path)
    assert ckpt.description == "synthetic GenCast-layout checkpoint for tests"
    assert ckpt.license == "CC BY-NC-SA 4.0 (test string)"
    assert ckpt.task_config == gencast_task()
    arch = ckpt.denoiser_architecture_config
    assert arch.mesh_size == 2 and arch.node_output_size == 84
    # Splash checkpoint on CPU: run as triblockdiag.
    assert arch.sparse_transformer_config.attention_type == "triblockdiag_mha"
    assert ckpt.sampler_config == SamplerConfig()
    assert ckpt.num_params()[1] == 2 * 13 + 2 + 4 + 6 * 6 + 4 * 6 + 4
    assert ckpt.extra == {}

    den, params = ck.denoiser_from_checkpoint(ckpt, LAT, LON)
    x, sigma, cond = den.example_inputs(1)
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], x.shape)
    cond = Conditioning(
        jax.random.normal(k[1], cond.inputs.shape), jax.random.normal(k[2], cond.forcings.shape)
    )
    sigma = jnp.array([3.0])
    y = jax.jit(den.apply)(params, x, sigma, cond)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))

    # Round trip through our writer: identical params and config entries (except attention backend,
    # which keeps the stored value with attention_type=None).
    kept = ck.load_checkpoint(path, attention_type=None)
    assert (
        kept.denoiser_architecture_config.sparse_transformer_config.attention_type == "splash_mha"
    )
    out = ck.save_checkpoint(tmp_path / "export.npz", kept)
    with np.load(out, allow_pickle=False) as f:
        again = {key: f[key] for key in f.files}
    assert set(again) == set(flat)
    for key, value in flat.items():
        assert again[key].dtype.kind == np.asarray(value).dtype.kind, key
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    reloaded = ck.load_checkpoint(out)
    den2, params2 = ck.denoiser_from_checkpoint(reloaded, LAT, LON)
    np.testing.assert_array_equal(
        den2.apply(params2, x, sigma, cond), den.apply(params, x, sigma, cond)
    )
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as a plain write, not mkstemp's 0600


def test_extra_sections_round_trip(official, tmp_path):
    ckpt = ck.load_checkpoint(official[0], attention_type=None)

    @dataclasses.dataclass(frozen=True)
    class StudentCfg:
        num_steps: int = 8
        rho: float = 100.0
        eta: float = 1.0
        times: tuple[float, ...] = (80.0, 1.0)
        name: str | None = None

    extra = {
        "student_sampler_config": ck.config_to_tree(StudentCfg(num_steps=4)),
        "provenance": {
            "teacher": "tiny",
            "train_start": "2000-01-01T00:00:00",
            "train_end": "2000-02-01",
        },
    }
    new = dataclasses.replace(ckpt, extra=extra)
    path = ck.save_checkpoint(tmp_path / "student.npz", new)
    with np.load(path) as f:
        assert "extra:student_sampler_config:num_steps" in f.files
        assert "extra:provenance:train_end" in f.files
        assert "extra:student_sampler_config:name" not in f.files  # None omitted
    back = ck.load_checkpoint(path)
    assert back.extra["provenance"] == extra["provenance"]
    assert ck.config_from_tree(StudentCfg, back.extra["student_sampler_config"]) == StudentCfg(
        num_steps=4
    )
    with pytest.raises(CheckpointError, match="num_steps"):
        ck.config_from_tree(StudentCfg, {"num_steps": "eight"})


def test_pickled_entries_are_refused_and_all_listed(tmp_path):
    path = tmp_path / "pickled.npz"
    flat = write_official(path)
    flat["params:evil:w"] = np.array([{"a": 1}], dtype=object)
    flat["description"] = np.array(["x", 1], dtype=object)
    with open(path, "wb") as f:
        np.savez(f, **flat)
    with pytest.raises(CheckpointError) as e:
        ck.load_checkpoint(path)
    msg = str(e.value)
    assert "params:evil:w" in msg and "description" in msg and "pickled" in msg
    assert "2 problem" in msg


def test_param_mismatches_are_all_reported(tmp_path):
    path = tmp_path / "bad.npz"
    flat = write_official(path)
    pre = "params:mesh_transformer/~/transformer/block_00/"
    flat[pre + "ffw_up:w"] = np.zeros((32, 65), np.float32)  # wrong shape
    del flat[pre + "mha_final:b"]  # missing
    flat["params:mesh_transformer/~/transformer/block_09/ffw_up:w"] = np.zeros((2,), np.float32)
    flat[pre + "ffw_down:b"] = flat[pre + "ffw_down:b"].astype(np.float64)  # wrong dtype
    with open(path, "wb") as f:
        np.savez(f, **flat)
    # Both gates report all four at once: the loader (against eval_shape of the configs' model)...
    with pytest.raises(CheckpointError) as e:
        ck.load_checkpoint(path)
    # ... and building the model from an unvalidated checkpoint.
    ckpt = ck.load_checkpoint(path, validate_params=False)
    with pytest.raises(CheckpointError) as e2:
        ck.denoiser_from_checkpoint(ckpt, LAT, LON)
    assert "4 parameter mismatch" in str(e2.value)
    for msg in (str(e.value), str(e2.value)):
        assert "4 " in msg
        assert "block_00/ffw_up:w: expected shape (32, 64), found (32, 65)" in msg
        assert "missing parameter mesh_transformer/~/transformer/block_00/mha_final:b" in msg
        assert "unexpected parameter mesh_transformer/~/transformer/block_09/ffw_up:w" in msg
        assert "expected dtype float32, found float64" in msg


def test_a_bad_grid_is_a_data_error_not_a_checkpoint_error(tmp_path):
    path = tmp_path / "ok.npz"
    write_official(path)
    ckpt = ck.load_checkpoint(path)
    # A descending latitude axis is the caller's grid, not the checkpoint: it must not be
    # reported as "configs do not describe a buildable model".
    with pytest.raises(DataError, match=r"ascending latitudes.*found lat shape"):
        ck.denoiser_from_checkpoint(ckpt, LAT[::-1], LON)


def test_pickles_config_errors_and_param_mismatches_reported_together(tmp_path):
    path = tmp_path / "mixed.npz"
    flat = write_official(path)
    flat["license"] = np.array([object()], dtype=object)
    flat["sampler_config:rho"] = np.array("seven")
    pre = "params:mesh2grid_gnn/~_networks_builder/decoder_nodes_grid_nodes_mlp/~/linear_1:"
    flat[pre + "w"] = np.zeros((32, 83), np.float32)
    with open(path, "wb") as f:
        np.savez(f, **flat)
    with pytest.raises(CheckpointError) as e:
        ck.load_checkpoint(path)
    msg = str(e.value)
    assert "3 problem" in msg
    assert "license: holds a pickled Python object" in msg
    assert "sampler_config:rho" in msg
    assert (
        "decoder_nodes_grid_nodes_mlp/~/linear_1:w: expected shape (32, 84), found (32, 83)" in msg
    )


def test_config_problems_are_all_reported(tmp_path):
    path = tmp_path / "cfg.npz"
    flat = write_official(path)
    flat["sampler_config:num_noise_levels"] = np.array("twenty")
    flat["noise_config:unknown_field"] = np.array(1.0)
    del flat["denoiser_architecture_config:mesh_size"]
    flat["task_config:target_variables:3"] = np.array("not_a_variable")
    flat["something_else"] = np.array(0)
    with open(path, "wb") as f:
        np.savez(f, **flat)
    with pytest.raises(CheckpointError) as e:
        ck.load_checkpoint(path)
    msg = str(e.value)
    for part in (
        "sampler_config:num_noise_levels",
        "noise_config:unknown_field",
        "missing key denoiser_architecture_config:mesh_size",
        "not_a_variable",
        "unknown section 'something_else'",
    ):
        assert part in msg, part


def test_nan_and_infinite_config_values_are_refused_but_gencasts_own_inf_loads(tmp_path):
    """The official files hold `sampler_config:churn_max_noise_level = inf` (churn up to the
    top of the schedule), which loads; a NaN anywhere, or an infinite value elsewhere, passed
    every range check (comparisons with NaN are False) and sampled NaN forecasts. Both are now
    named, with the key, by the same rule as the YAML configs (`config.float_problem`)."""
    path = tmp_path / "cfg.npz"
    flat = write_official(path)
    assert np.isinf(flat["sampler_config:churn_max_noise_level"])
    assert ck.load_checkpoint(path).sampler_config.churn_max_noise_level == np.inf
    flat["sampler_config:rho"] = np.array(np.nan)
    flat["noise_config:training_max_noise_level"] = np.array(np.inf)
    with open(path, "wb") as f:
        np.savez(f, **flat)
    with pytest.raises(CheckpointError) as e:
        ck.load_checkpoint(path)
    msg = str(e.value)
    assert "sampler_config:rho: expected a number, found NaN" in msg, msg
    assert "noise_config:training_max_noise_level: expected a finite number, found inf" in msg, msg


def test_missing_file_and_non_npz(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nope.npz")
    with pytest.raises(CheckpointError, match="is a directory; expected an .npz file"):
        ck.load_checkpoint(tmp_path)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="npz"):
        ck.load_checkpoint(junk)


def test_make_checkpoint_from_trained_params(tmp_path):
    from gencast_rmmd.config import load_config
    from gencast_rmmd.model.denoiser import build_denoiser

    task = gencast_task(levels=(500, 850))
    model = load_config(
        ModelConfig,
        "tiny",
        kind="model",
        overrides=[
            "denoiser_architecture_config.mesh_size=1",
            "denoiser_architecture_config.sparse_transformer_config.num_layers=1",
        ],
    )
    den = build_denoiser(
        model.denoiser_architecture_config, task, LAT, LON, model.noise_encoder_config
    )
    params = den.init(jax.random.key(0), *den.example_inputs(1))
    c = ck.make_checkpoint(
        params, task, model, license="CC BY 4.0", extra={"provenance": {"teacher": "t"}}
    )
    assert model.denoiser_architecture_config.node_output_size is None  # not mutated
    assert c.denoiser_architecture_config.node_output_size == task.layout.n_targets
    back = ck.load_checkpoint(ck.save_checkpoint(tmp_path / "t.npz", c))
    assert back.task_config == task and back.model_config == c.model_config
    den2, p2 = ck.denoiser_from_checkpoint(back, LAT, LON)
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), params, p2)
    )


def test_non_12h_step_round_trips_through_extra(tmp_path):
    task = dataclasses.replace(gencast_task(levels=(500,)), step_hours=6, input_frames=3)
    arch = ck.load_checkpoint(write_official_path(tmp_path)).denoiser_architecture_config
    arch = dataclasses.replace(arch, node_output_size=None)
    shapes = ck.expected_param_shapes(arch, task, ck.NoiseEncoderConfig())
    params = {
        m: {n: np.zeros(a.shape, np.float32) for n, a in p.items()} for m, p in shapes.items()
    }
    c = ck.make_checkpoint(params, task, ModelConfig(arch), license="test")
    path = ck.save_checkpoint(tmp_path / "six.npz", c)
    with np.load(path) as f:
        assert str(f["task_config:input_duration"]) == "18h"
        assert int(f["extra:task:step_hours"]) == 6
    back = ck.load_checkpoint(path)
    assert back.task_config == task and back.extra == {}
    assert back.denoiser_architecture_config.node_output_size == task.layout.n_targets


def write_official_path(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "official.npz"
    write_official(path)
    return path


def test_a_checkpoint_runs_only_on_the_grid_it_was_trained_on():
    """The network builds on any grid, so a model trained at one resolution ran at another
    without a word. Ours record the grid (`extra:provenance:grid`); the official files, which
    record no provenance, name their resolution (`GenCast 1p0deg Mini <2019.npz`)."""
    from gencast_rmmd.model.checkpoint import grid_record, trained_grid_problem

    def grid(n_lat, n_lon, poles=True):
        step = 180.0 / (n_lat - 1) if poles else 180.0 / n_lat
        first = -90.0 if poles else -90.0 + step / 2
        return first + step * np.arange(n_lat), np.arange(n_lon) * 360.0 / n_lon

    lat32, lon64 = grid(32, 64, poles=False)
    ours = {"teacher": "", "grid": grid_record(lat32, lon64)}
    assert ours["grid"] == "32x64" and trained_grid_problem(ours, "", lat32, lon64) is None
    assert trained_grid_problem(ours, "", *grid(16, 32, poles=False)) == (
        "it was trained on a 32x64 (lat x lon) grid, the data are 16x32"
    )
    official = "GenCast 1p0deg Mini <2019.npz"
    assert trained_grid_problem({}, official, *grid(181, 360)) is None
    assert trained_grid_problem({}, official, *grid(721, 1440)) == (
        "it is named 1p0deg (1 deg), the data are on a 0.25 deg grid (721x1440)"
    )
    assert trained_grid_problem({}, "GenCast 0p25deg <2019.npz", *grid(721, 1440)) is None
    # ours from before grids were recorded, with a GenCast config's name: not checked
    assert (
        trained_grid_problem({"teacher": ""}, "GenCast 1p0deg architecture", lat32, lon64) is None
    )
    assert trained_grid_problem({}, "any model", lat32, lon64) is None  # nothing to go by
