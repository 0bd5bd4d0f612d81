"""load_forecast_model: teacher (DPM-Solver++ 2S) and student (K steps) from real checkpoints."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from gencast_rmmd.data.stats import compute_stats, save_stats
from gencast_rmmd.data.task import gencast_task
from gencast_rmmd.errors import CheckpointError
from gencast_rmmd.evaluation.synthetic import synthetic_canonical_store
from gencast_rmmd.forecast.model import load_forecast_model
from gencast_rmmd.forecast.rollout import Rollout, run_key
from gencast_rmmd.model.checkpoint import config_to_tree, make_checkpoint, save_checkpoint
from gencast_rmmd.model.configs import (
    DenoiserArchitectureConfig,
    ModelConfig,
    SamplerConfig,
    SparseTransformerConfig,
)
from gencast_rmmd.model.denoiser import build_denoiser

N_LAT, N_LON = 32, 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("gencast_rmmd.distill.student_sampler")
    from gencast_rmmd.distill.student_sampler import StudentSamplerConfig

    d = tmp_path_factory.mktemp("fm")
    task = gencast_task(levels=(500, 850))
    ds = synthetic_canonical_store(str(d / "data.zarr"), task, n_times=4, n_lat=N_LAT, n_lon=N_LON)
    save_stats(compute_stats(ds), str(d / "stats"))
    arch = DenoiserArchitectureConfig(
        sparse_transformer_config=SparseTransformerConfig(
            attention_k_hop=2, d_model=16, num_layers=1, num_heads=2, ffw_hidden=32
        ),
        mesh_size=1,
        latent_size=16,
    )
    lat, lon = ds["lat"].values, ds["lon"].values
    den = build_denoiser(arch, task, lat, lon)
    x, sigma, cond = den.example_inputs(1)
    params = den.init(jax.random.key(0), x, sigma, cond)
    model_cfg = ModelConfig(
        denoiser_architecture_config=arch, sampler_config=SamplerConfig(num_noise_levels=3)
    )
    prov = {"train_start": "2000-01-01T00:00:00", "train_end": "2001-09-30T12:00:00"}
    teacher = make_checkpoint(params, task, model_cfg, license="test", extra={"provenance": prov})
    student = make_checkpoint(
        params,
        task,
        model_cfg,
        license="test",
        extra={
            "provenance": prov,
            "student_sampler_config": config_to_tree(StudentSamplerConfig(num_steps=2)),
        },
    )
    aux = make_checkpoint(
        params, task, model_cfg, license="test", extra={"provenance": dict(prov, role="aux")}
    )
    save_checkpoint(d / "teacher.npz", teacher)
    save_checkpoint(d / "student.npz", student)
    save_checkpoint(d / "aux.npz", aux)
    return {"dir": d, "ds": ds, "task": task, "lat": lat, "lon": lon}


@pytest.mark.slow
@pytest.mark.parametrize("kind,nfe", [("teacher", 5), ("student", 2)])
def test_checkpoint_models_roll_out(setup, kind, nfe):
    d = setup["dir"]
    model = load_forecast_model(str(d / f"{kind}.npz"), str(d / "stats"))
    assert model.nfe == nfe
    assert model.name == ("teacher" if kind == "teacher" else "student-2")
    attrs = model.attrs()
    assert attrs["training_period_start"] == "2000-01-01T00:00:00"
    assert attrs["nfe_per_step"] == nfe
    assert ("DPM-Solver++" if kind == "teacher" else "student K=2") in attrs["sampler"]
    lay = setup["task"].layout
    rng = np.random.default_rng(0)
    inputs = (
        rng.normal(size=(N_LAT, N_LON, lay.n_inputs)).astype(np.float32) * model.norm.input_std
        + model.norm.input_mean
    )
    forcings = rng.normal(size=(2, N_LAT, N_LON, lay.n_forcings)).astype(np.float32)
    ro = Rollout(model, setup["lat"], setup["lon"], block_size=2)
    out = ro(run_key(0, np.datetime64("2001-10-01")), [0, 1], inputs, forcings)
    assert out.shape == (2, 2, N_LAT, N_LON, lay.n_targets)
    assert np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])  # members draw their own noise


def test_the_auxiliary_denoiser_is_not_named_teacher(setup):
    """A distillation's aux.npz (provenance role "aux") samples like a teacher; its forecasts and
    scorecards called it "teacher"."""
    d = setup["dir"]
    assert load_forecast_model(str(d / "aux.npz"), str(d / "stats")).name == "aux"
    assert load_forecast_model(str(d / "teacher.npz"), str(d / "stats")).name == "teacher"


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_forecast_model(str(tmp_path / "nope.npz"), str(tmp_path / "stats"))


def _resume_args(d, tmp_path, model, stats) -> dict:
    """`run_forecast` arguments of the resume tests: 2 members, one lead, one region each."""
    return dict(
        model=str(model),
        stats_dir=str(stats),
        data=str(d / "data.zarr"),
        out=str(tmp_path / "f.zarr"),
        init_times=["2021-01-01T12"],
        members=2,
        lead_steps=1,
        member_block=1,
        progress=False,
    )


def test_resume_refuses_a_checkpoint_rewritten_at_the_same_path(setup, tmp_path):
    """A forecast store resumes only with the checkpoint it was started with: one retrained at
    the same path would mix two models' members in one ensemble."""
    import dataclasses
    import shutil

    from gencast_rmmd.errors import OutputError
    from gencast_rmmd.model.checkpoint import load_checkpoint
    from pipelines.forecast import run_forecast

    d = setup["dir"]
    model = tmp_path / "student.npz"
    shutil.copy(d / "student.npz", model)
    args = _resume_args(d, tmp_path, model, d / "stats")
    assert run_forecast(**args)["regions_written"] == 2
    assert run_forecast(**args)["regions_written"] == 0  # same checkpoint: nothing left to do
    ckpt = load_checkpoint(model)
    params = jax.tree_util.tree_map(lambda a: a * 1.01, ckpt.params)
    save_checkpoint(model, dataclasses.replace(ckpt, params=params))  # "retrained", same path
    with pytest.raises(OutputError, match="another checkpoint"):
        run_forecast(**args)
    # A store written before the digest was recorded still resumes (its spec lacks the key).
    import json

    import zarr

    from gencast_rmmd.forecast import store as store_lib

    g = zarr.open_group(args["out"], mode="r+")
    spec = json.loads(g.attrs[store_lib.SPEC_ATTR])
    del spec["model_sha256"]
    g.attrs[store_lib.SPEC_ATTR] = json.dumps(spec, sort_keys=True)
    zarr.consolidate_metadata(args["out"])
    assert run_forecast(**args)["regions_written"] == 0


def test_resume_refuses_statistics_rewritten_at_the_same_path(setup, tmp_path):
    """Nor with normalisation statistics recomputed at the same path: the same checkpoint then
    makes other members. A store written before the stats digest was recorded still resumes."""
    import json
    import shutil

    import xarray as xr
    import zarr

    from gencast_rmmd.errors import OutputError
    from gencast_rmmd.forecast import store as store_lib
    from pipelines.forecast import run_forecast

    d = setup["dir"]
    stats = tmp_path / "stats"
    shutil.copytree(d / "stats", stats)
    # A checkpoint that records no statistics (as the official files): the store's own record is
    # what tells the recomputed statistics here (one that records them refuses them itself,
    # `data.stats.check_trained_stats`).
    with np.load(d / "student.npz") as f:
        flat = {k: f[k] for k in f.files if k != "extra:provenance:stats_sha256"}
    np.savez(tmp_path / "student.npz", **flat)
    args = _resume_args(d, tmp_path, tmp_path / "student.npz", stats)
    assert run_forecast(**args)["regions_written"] == 2
    complete = store_lib.is_complete
    assert complete(args["out"], model_sha256=None)
    mean = stats / "mean_by_level.nc"
    with xr.open_dataset(mean) as ds:
        ds = ds.load()
    # Recomputed over other times, say: a small change (a large one is refused as other units)
    (ds * 1.0001).assign_attrs(ds.attrs).to_netcdf(mean)
    with pytest.raises(OutputError, match="other normalisation statistics"):
        run_forecast(**args)
    from gencast_rmmd.data.stats import stats_sha256

    assert not complete(args["out"], stats_sha256=stats_sha256(stats))
    g = zarr.open_group(args["out"], mode="r+")
    spec = json.loads(g.attrs[store_lib.SPEC_ATTR])
    del spec["stats_sha256"]
    g.attrs[store_lib.SPEC_ATTR] = json.dumps(spec, sort_keys=True)
    zarr.consolidate_metadata(args["out"])
    assert complete(args["out"], stats_sha256=stats_sha256(stats))
    assert run_forecast(**args)["regions_written"] == 0


def test_forecast_with_every_input_and_the_output_by_url(setup, tmp_path, monkeypatch):
    """Dataflow's layout, where workers share no disk: checkpoint, statistics, data and the
    forecast store all at URLs (fsspec's memory:// here). The store equals the one made from
    local paths and records the URLs; a crash while the store's metadata is uploaded, or after
    some regions, resumes; a checkpoint re-made at the URL is refused."""
    import json
    import shutil

    import fsspec
    import xarray as xr
    import zarr

    from gencast_rmmd.errors import OutputError
    from gencast_rmmd.forecast import store as store_lib
    from pipelines import forecast as fc_pipe

    d = setup["dir"]
    fs = fsspec.filesystem("memory")
    root = "memory://gencast_rmmd_fc_url"
    if fs.exists(root):
        fs.rm(root, recursive=True)
    fs.put(str(d / "stats"), f"{root}/stats", recursive=True)
    fs.put_file(str(d / "student.npz"), f"{root}/student.npz")
    fs.put(str(d / "data.zarr"), f"{root}/data.zarr", recursive=True)
    local = _resume_args(d, tmp_path, d / "student.npz", d / "stats")
    local.update(members=3, member_block=2)
    url = dict(
        local,
        model=f"{root}/student.npz",
        stats_dir=f"{root}/stats",
        data=f"{root}/data.zarr",
        out=f"{root}/f.zarr",
    )
    assert fc_pipe.run_forecast(**local)["complete"]

    # A crash between the upload of the root attributes and of the consolidated metadata.
    real_put = type(fs).put_file

    def dies_at_zmetadata(self, lpath, rpath, **kw):
        if rpath.endswith("/.zmetadata"):
            raise OSError("connection reset")
        return real_put(self, lpath, rpath, **kw)

    monkeypatch.setattr(type(fs), "put_file", dies_at_zmetadata)
    with pytest.raises(OSError, match="connection reset"):
        fc_pipe.run_forecast(**url)
    monkeypatch.setattr(type(fs), "put_file", real_put)
    assert fs.exists(f"{root}/f.zarr/.zattrs") and not fs.exists(f"{root}/f.zarr/.zmetadata")
    # ... then one after the first region.
    real_run = fc_pipe._Worker.run
    calls = []

    def dies_on_the_second(self, item):
        calls.append(item)
        if len(calls) == 2:
            raise RuntimeError("worker died")
        return real_run(self, item)

    monkeypatch.setattr(fc_pipe._Worker, "run", dies_on_the_second)
    with pytest.raises(RuntimeError, match="worker died"):
        fc_pipe.run_forecast(**url)
    monkeypatch.setattr(fc_pipe._Worker, "run", real_run)
    assert fc_pipe.run_forecast(**url)["regions_written"] == 1
    a, b = xr.open_zarr(local["out"]), xr.open_zarr(url["out"])
    xr.testing.assert_identical(a.load().drop_attrs(), b.load().drop_attrs())
    assert (b.attrs["checkpoint"], b.attrs["data"]) == (url["model"], url["data"])
    spec = json.loads(b.attrs[store_lib.SPEC_ATTR])
    assert spec["model"] == url["model"]
    assert spec["stats_sha256"] == json.loads(a.attrs[store_lib.SPEC_ATTR])["stats_sha256"]
    log = [json.loads(x) for x in fs.cat_file(f"{root}/f.zarr.metrics.jsonl").splitlines()]
    assert len(log) == 2  # one line per region written (the first, then the last)
    assert store_lib.is_complete(url["out"])
    assert fc_pipe.run_forecast(**url)["regions_written"] == 0

    # A checkpoint re-made at the same URL is fetched again, and refused.
    bigger = tmp_path / "student.npz"
    shutil.copy(d / "student.npz", bigger)
    with open(bigger, "ab") as f:
        f.write(b"\0")  # the same arrays (npz ignores trailing bytes), other bytes
    fs.put_file(str(bigger), f"{root}/student.npz")
    with pytest.raises(OutputError, match="another checkpoint"):
        fc_pipe.run_forecast(**url)
    # Another Zarr store at the output URL is never taken for an interrupted creation.
    zarr.open_group(f"{root}/other.zarr", mode="w").attrs["x"] = 1
    with pytest.raises(OutputError, match="another Zarr store|not a forecast store"):
        fc_pipe.run_forecast(**dict(url, out=f"{root}/other.zarr"))
    fs.rm(root, recursive=True)
