"""Teacher training on a tiny synthetic store: learning, exact resume, export round trip, info, CLI."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import xarray as xr

from gencast_rmmd.config import from_dict
from gencast_rmmd.data.task import TaskConfig
from gencast_rmmd.errors import OutputError
from gencast_rmmd.model.configs import ModelConfig
from gencast_rmmd.training import teacher
from gencast_rmmd.training.loop import OptimizerConfig

TASK = TaskConfig(
    input_variables=(
        "2m_temperature",
        "temperature",
        "year_progress_sin",
        "year_progress_cos",
        "day_progress_sin",
        "day_progress_cos",
        "geopotential_at_surface",
        "land_sea_mask",
    ),
    target_variables=("2m_temperature", "temperature"),
    pressure_levels=(500, 850),
)

MODEL = from_dict(
    ModelConfig,
    {
        "description": "test teacher",
        "denoiser_architecture_config": {
            "mesh_size": 1,
            "latent_size": 16,
            "sparse_transformer_config": {
                "attention_k_hop": 1,
                "d_model": 16,
                "num_layers": 1,
                "num_heads": 2,
                "ffw_hidden": 32,
                "attention_type": "mha",
                "mask_type": "full",
            },
        },
        "sampler_config": {"num_noise_levels": 4},
    },
)


def _store(tmp_path_factory):
    """8x16 equiangular grid, 40 12-hourly times: a wave travelling east plus noise."""
    from gencast_rmmd.data.era5 import add_progress_forcings
    from gencast_rmmd.data.stats import compute_stats, save_stats

    root = tmp_path_factory.mktemp("teacher_data")
    rng = np.random.default_rng(0)
    nt, nlat, nlon = 40, 8, 16
    times = np.datetime64("2020-01-01T00", "ns") + np.arange(nt) * np.timedelta64(12, "h")
    lat = -90 + (np.arange(nlat) + 0.5) * 180 / nlat
    lon = np.arange(nlon) * 360 / nlon
    phase = np.deg2rad(lon)[None, None, :] - 0.4 * np.arange(nt)[:, None, None]
    wave = np.cos(np.deg2rad(lat))[None, :, None] * np.sin(phase)  # [t, lat, lon]
    t2m = 280 + 5 * wave + 0.3 * rng.normal(size=wave.shape)
    temp = np.stack([250 + 8 * wave, 270 + 6 * wave], axis=1) + 0.3 * rng.normal(
        size=(nt, 2, nlat, nlon)
    )
    land = np.zeros((nlat, nlon), np.float32)
    land[2:4, 3:7] = 1
    ds = xr.Dataset(
        {
            "2m_temperature": (("time", "lat", "lon"), t2m.astype(np.float32)),
            "temperature": (("time", "level", "lat", "lon"), temp.astype(np.float32)),
            "geopotential_at_surface": (("lat", "lon"), 1000 * land),
            "land_sea_mask": (("lat", "lon"), land),
        },
        coords={"time": times, "level": np.array([500, 850]), "lat": lat, "lon": lon},
    )
    ds = add_progress_forcings(ds)
    store = root / "store.zarr"
    ds.to_zarr(store, consolidated=False)
    stats = save_stats(compute_stats(ds), root / "stats")
    return store, stats


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _store(tmp_path_factory)


def _cfg(**kw):
    base = dict(
        num_steps=6,
        batch_size=4,
        grad_accum_steps=1,
        checkpoint_every=2,
        log_every=1,
        optimizer=OptimizerConfig(learning_rate=3e-3, schedule="cosine", warmup_steps=2),
        train_end="2020-01-15T00",
    )
    base.update(kw)
    return teacher.TeacherTrainingConfig(**base)


def _flat_params(npz):
    with np.load(npz, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith("params:")}


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory):
    store, stats = data
    out = tmp_path_factory.mktemp("straight")
    summary = teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(), progress=False)
    return out, summary


def test_training_writes_run_metrics_and_export(straight_run):
    out, summary = straight_run
    assert summary["steps"] == 6 and np.isfinite(summary["loss"])
    assert summary["export"] and (out / "teacher.npz").is_file()
    assert (out / "run.json").is_file()
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert all("loss" in r and "lr/denoiser" in r and "weighted_mse" in r for r in recs)
    # Warm-up then cosine: lr rises over the first 2 updates, then decays.
    lrs = [r["lr/denoiser"] for r in recs]
    assert lrs[1] > lrs[0] and lrs[-1] < lrs[2]
    # Training window honoured: the last target time is train_end + 12 h.
    assert summary["train_end"] == "2020-01-15T12:00:00"
    assert summary["examples"] == 28  # init times 2020-01-01T12 .. 2020-01-15T00


@pytest.mark.slow
def test_resume_is_exact(data, straight_run, tmp_path):
    store, stats = data
    out_a, _ = straight_run
    out_b = tmp_path / "b"
    s1 = teacher.train_teacher(
        MODEL, TASK, store, stats, out_b, _cfg(), progress=False, stop_after=3
    )
    assert s1["steps"] == 3 and s1["export"] is None  # "crashed" after step 3, last ckpt at 2
    s2 = teacher.train_teacher(MODEL, TASK, store, stats, out_b, _cfg(), progress=False)
    assert s2["steps"] == 6
    a, b = _flat_params(out_a / "teacher.npz"), _flat_params(out_b / "teacher.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ra = [json.loads(x) for x in (out_a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (out_b / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rb] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in rb], [r["loss"] for r in ra], rtol=1e-6)


def test_other_run_in_same_dir_is_refused(data, straight_run):
    store, stats = data
    out, _ = straight_run
    with pytest.raises(OutputError, match="different teacher run"):
        teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(seed=1), progress=False)


def test_export_round_trip_and_info(straight_run, tmp_path):
    from gencast_rmmd.model.checkpoint import denoiser_from_checkpoint, load_checkpoint

    out, summary = straight_run
    exported = teacher.export_teacher(out, tmp_path / "again.npz", license="test-license")
    a, b = _flat_params(out / "teacher.npz"), _flat_params(exported)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    ck = load_checkpoint(exported)
    assert ck.license == "test-license" and ck.task_config == TASK
    assert ck.extra["provenance"]["train_end"] == "2020-01-15T12:00:00"
    assert ck.extra["provenance"]["step"] == 6
    run = teacher.read_run(out)
    den, params = denoiser_from_checkpoint(ck, np.asarray(run.lat), np.asarray(run.lon))
    x, sigma, cond = den.example_inputs(batch=2)
    x = jax.random.normal(jax.random.key(0), x.shape)
    y = jax.jit(den.apply)(params, x, sigma * 3.0, cond)
    assert y.shape == x.shape and np.all(np.isfinite(np.asarray(y)))
    # An earlier step exports different (less trained) weights.
    early = _flat_params(teacher.export_teacher(out, tmp_path / "s4.npz", step=4))
    assert any(not np.array_equal(early[k], a[k]) for k in a)
    text = teacher.describe_checkpoint(exported)
    assert f"{summary['num_params']:,} in {summary['num_tensors']} tensors" in text
    assert "test-license" in text and "7 network evaluations" in text
    assert "mesh refinement 1 (42 nodes)" in text


def test_cli_info_export_and_errors(data, straight_run, tmp_path, capsys):
    from gencast_rmmd.cli import main

    store, stats = data
    out, summary = straight_run
    assert main(["teacher", "info", str(out / "teacher.npz")]) == 0
    text = capsys.readouterr().out
    assert f"{summary['num_params']:,}" in text and "DPM-Solver++ 2S" in text
    assert main(["teacher", "export", "--run", str(out), "--out", str(tmp_path / "e.npz")]) == 0
    assert (tmp_path / "e.npz").is_file()
    assert main(["teacher", "info", str(tmp_path / "missing.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # A store without a task attribute needs --task.
    argv = ["teacher", "train", "--config", "tiny", "--data", str(store), "--stats", str(stats)]
    assert main(argv + ["--out", str(tmp_path / "r")]) == 2
    assert "--task" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_info_export(data, tmp_path, capsys):
    import yaml

    from gencast_rmmd.cli import main
    from gencast_rmmd.config import to_dict

    store, stats = data
    cfg = tmp_path / "model.yaml"
    cfg.write_text(yaml.safe_dump(to_dict(MODEL)))
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"task": to_dict(TASK)}))
    out = tmp_path / "run"
    argv = ["teacher", "train", "--config", str(cfg), "--data", str(store), "--stats", str(stats)]
    argv += ["--task", str(task), "--out", str(out), "--steps", "2", "--batch-size", "2"]
    argv += ["--set", "training.log_every=1", "--no-progress"]
    assert main(argv) == 0
    assert "teacher.npz" in capsys.readouterr().out
    assert main(["teacher", "info", str(out / "teacher.npz")]) == 0
    assert "parameters:" in capsys.readouterr().out
    assert main(["teacher", "export", "--run", str(out), "--out", str(tmp_path / "e.npz")]) == 0
    assert (tmp_path / "e.npz").is_file()
    # A bad override is a one-line user error (exit 2).
    assert main(argv[:-3] + ["--set", "training.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
