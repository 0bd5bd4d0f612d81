"""Teacher training on a tiny synthetic store: learning, exact resume, export round trip, info, CLI."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import xarray as xr

from gencast_rmmd.config import from_dict
from gencast_rmmd.data.task import TaskConfig
from gencast_rmmd.errors import CheckpointError, OutputError
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


def test_training_writes_run_metrics_and_export(data, straight_run):
    from gencast_rmmd.data.stats import stats_sha256
    from gencast_rmmd.model.checkpoint import read_provenance

    out, summary = straight_run
    assert summary["steps"] == 6 and np.isfinite(summary["loss"])
    assert summary["export"] and (out / "teacher.npz").is_file()
    assert (out / "run.json").is_file()
    # The statistics it trained with, by content: in the run and in the export.
    digest = stats_sha256(data[1])
    assert json.loads((out / "inputs.json").read_text()) == {"stats_sha256": digest}
    assert read_provenance(out / "teacher.npz")["stats_sha256"] == digest
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert all("loss" in r and "lr/denoiser" in r and "weighted_mse" in r for r in recs)
    # Warm-up then cosine: lr rises over the first 2 updates, then decays.
    lrs = [r["lr/denoiser"] for r in recs]
    assert lrs[1] > lrs[0] and lrs[-1] < lrs[2]
    # Training window honoured: every example's whole window, inputs to target, lies inside
    # it, so the last target is train_end itself (a window ending where a held-out split begins
    # never trains on it), as in the distillation (`training.periods`).
    assert summary["train_end"] == "2020-01-15T00:00:00"
    assert summary["examples"] == 27  # init times 2020-01-01T12 .. 2020-01-14T12


def test_a_complete_run_run_again_keeps_its_export(data, straight_run, tmp_path):
    """`teacher train` on a finished run makes no step and leaves the export as it is (it was
    re-written: with a provenance field added since, other bytes, and a distillation begun from
    the old ones would refuse to resume); the export records the training grid; a missing export
    is written again."""
    import shutil

    from gencast_rmmd.model.checkpoint import read_provenance

    store, stats = data
    out = tmp_path / "run"
    shutil.copytree(straight_run[0], out)
    export = out / "teacher.npz"
    grid = xr.open_zarr(store, consolidated=False)
    assert read_provenance(export)["grid"] == f"{grid['lat'].size}x{grid['lon'].size}"
    export.write_bytes(export.read_bytes() + b"")  # same bytes, a new modification time
    before = (export.stat().st_mtime_ns, export.read_bytes())
    again = teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(), progress=False)
    assert again["steps"] == 6 and again["export"] == str(export)
    assert (export.stat().st_mtime_ns, export.read_bytes()) == before
    export.unlink()
    teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(), progress=False)
    assert _flat_params(export).keys() == _flat_params(straight_run[0] / "teacher.npz").keys()


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


def test_resume_on_other_examples_is_refused(data, tmp_path, monkeypatch):
    """A run whose examples change under it (the window rule of training/periods.py once let
    the last target reach into the held-out split; a resume under the new rule saw one example
    fewer, undetected) is not resumed: the error names both windows and the run is left as it
    was. The checkpoint meta records the examples; the teacher's export carries them too."""
    store, stats = data
    out = tmp_path / "run"
    teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(), progress=False, stop_after=3)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    record = (out / "run.json").read_bytes()
    rule = teacher.select_init_times
    monkeypatch.setattr(teacher, "select_init_times", lambda *a: rule(*a)[:-1])
    lower = OptimizerConfig(learning_rate=1e-4, schedule="cosine", warmup_steps=2)
    with pytest.raises(OutputError, match="26 examples"):  # refused before run.json is written
        teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(optimizer=lower), progress=False)
    assert (out / "run.json").read_bytes() == record
    with pytest.raises(
        OutputError,
        match=r"was trained on .*\.\.2020-01-15T00:00:00, 27 examples "
        r"and would now resume on .*\.\.2020-01-14T12:00:00, 26 examples",
    ) as e:
        teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(), progress=False)
    assert "delete it to train again" in str(e.value)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    monkeypatch.setattr(teacher, "select_init_times", rule)
    s = teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(), progress=False)
    assert s["steps"] == 6 and s["examples"] == 27


def test_other_run_in_same_dir_is_refused(data, straight_run):
    store, stats = data
    out, _ = straight_run
    with pytest.raises(OutputError, match=r"different teacher run \(training.seed: 0 -> 1\)"):
        teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(seed=1), progress=False)


def test_a_run_made_before_a_config_key_existed_resumes(data, straight_run, tmp_path):
    """A run.json written by an earlier version lacks the keys added since: they take their
    defaults (the earlier code's behaviour) and the run resumes; a non-default value is a change
    named with the default. It was refused as a change from None."""
    import shutil

    store, stats = data
    out = tmp_path / "old"
    shutil.copytree(straight_run[0], out)
    saved = json.loads((out / "run.json").read_text())
    del saved["training"]["seed"], saved["model"]["sampler_config"]["rho"]
    (out / "run.json").write_text(json.dumps(saved))
    with pytest.raises(OutputError, match=r"different teacher run \(training.seed: 0 -> 1\)"):
        teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(seed=1), progress=False)
    s = teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(), progress=False)
    assert s["steps"] == 6


def test_a_diverged_run_resumes_with_a_lower_learning_rate(data, tmp_path):
    """The divergence message's advice works. A run that diverged before its first checkpoint
    has trained nothing (its empty checkpoints/ is no start): run again with a lower learning
    rate, it starts over. A run with checkpoints resumes with other optimizer settings (the
    rate each update ran at is in metrics.jsonl); only turning clipping on or off is refused,
    since the saved optimizer state has no place for it."""
    from gencast_rmmd.errors import TrainingDivergedError
    from gencast_rmmd.training.checkpointing import latest_step

    store, stats = data
    out = tmp_path / "run"
    huge = OptimizerConfig(learning_rate=1e30, schedule="constant")
    with pytest.raises(TrainingDivergedError, match="it starts again from step 0"):
        teacher.train_teacher(
            MODEL, TASK, store, stats, out, _cfg(num_steps=3, optimizer=huge), progress=False
        )
    assert (out / "checkpoints").is_dir() and latest_step(out / "checkpoints") is None
    s = teacher.train_teacher(MODEL, TASK, store, stats, out, _cfg(num_steps=3), progress=False)
    assert s["steps"] == 3 and np.isfinite(s["loss"])
    lower = OptimizerConfig(learning_rate=1e-4, schedule="constant", b2=0.999)
    s = teacher.train_teacher(
        MODEL, TASK, store, stats, out, _cfg(num_steps=4, optimizer=lower), progress=False
    )
    assert s["steps"] == 4
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[-1]["lr/denoiser"] == 1e-4
    assert teacher.read_run(out).training.optimizer == lower  # run.json: the settings in force
    clipped = OptimizerConfig(learning_rate=1e-4, grad_clip_norm=1.0)
    with pytest.raises(OutputError, match="training.optimizer.grad_clip_norm: 'null' -> 'set'"):
        teacher.train_teacher(
            MODEL, TASK, store, stats, out, _cfg(num_steps=5, optimizer=clipped), progress=False
        )


def test_micro_batch_not_splitting_over_the_devices_is_refused_first(
    data, tmp_path, host_devices_env
):
    """On 4 devices a batch of 2 cannot be split: one user error (exit 2) naming the keys, and
    nothing written into --out (it used to be an internal error after run.json was written)."""
    import subprocess
    import sys

    store, stats = data
    cfg, task = _cli_configs(tmp_path)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gencast_rmmd", "teacher", "train", "--config", str(cfg)]
    cmd += ["--data", str(store), "--stats", str(stats), "--task", str(task)]
    cmd += ["--out", str(out), "--steps", "1", "--batch-size", "2", "--no-progress"]
    res = subprocess.run(cmd, env=host_devices_env(4), capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "training.batch_size 2 / training.grad_accum_steps 1" in err[0]
    assert "over the 4 devices" in err[0]
    assert not out.exists()


def test_other_stats_at_same_path_are_refused(data, straight_run, tmp_path):
    """Statistics rewritten at the run's stats path (other bytes) would change the normalised
    targets under a trained state: the run is not resumed, and is left as it was."""
    import shutil

    from gencast_rmmd.data.stats import load_stats, save_stats

    store, stats = data
    out, _ = straight_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shutil.copytree(stats, tmp_path / "stats")
    record = json.loads((run / "run.json").read_text())
    record["stats"] = str((tmp_path / "stats").absolute())
    (run / "run.json").write_text(json.dumps(record))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    moved = load_stats(tmp_path / "stats")
    moved["mean"] = moved["mean"] + 1e-3
    save_stats(moved, tmp_path / "stats")
    with pytest.raises(OutputError, match="other normalisation statistics") as e:
        teacher.train_teacher(MODEL, TASK, store, tmp_path / "stats", run, _cfg(), progress=False)
    assert f"delete {run}" in str(e.value)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_a_data_store_re_made_at_the_same_path_is_refused(data, straight_run, tmp_path):
    """A run begun from a data store gencast-rmmd made (it has a creation id) refuses the store
    re-made at the same path, naming it; a run that recorded no id takes the store as it is."""
    import shutil

    import zarr

    from gencast_rmmd.data.era5 import STORE_ID_ATTR

    store, stats = data
    out, _ = straight_run
    run, copy = tmp_path / "run", tmp_path / "data.zarr"
    shutil.copytree(out, run)
    shutil.copytree(store, copy)
    record = json.loads((run / "run.json").read_text())
    record["data"] = str(copy.absolute())
    (run / "run.json").write_text(json.dumps(record))
    zarr.open_group(str(copy), mode="r+").attrs[STORE_ID_ATTR] = "made-once"
    inputs = teacher.input_digests(stats, copy)
    assert inputs["data_store_id"] == "made-once"
    teacher._check_inputs(run, inputs, teacher.read_run(run))  # recorded none: taken as is
    (run / teacher.INPUTS_FILE).write_text(json.dumps(inputs))
    teacher._check_inputs(run, inputs, teacher.read_run(run))  # the same store
    zarr.open_group(str(copy), mode="r+").attrs[STORE_ID_ATTR] = "made-again"
    with pytest.raises(OutputError, match="begun from another data store \\(store id") as e:
        teacher.train_teacher(MODEL, TASK, copy, stats, run, _cfg(), progress=False)
    assert str(copy.absolute()) in str(e.value)


@pytest.mark.slow
def test_training_reads_a_store_by_url(data, straight_run, tmp_path):
    """A canonical store named by URL (fsspec's memory:// here; gs:// written by `data prepare`
    on Dataflow in production) trains exactly as the same store on disk: the URL is recorded as
    given (not made into a local path), its store id is checked, and the parameters match."""
    import zarr

    from gencast_rmmd.data.era5 import STORE_ID_ATTR

    store, stats = data
    out_a, _ = straight_run
    url = "memory://gencast_rmmd_teacher_test/store.zarr"
    xr.open_zarr(store, consolidated=False).to_zarr(url, consolidated=False, mode="w")
    zarr.open_group(url, mode="r+").attrs[STORE_ID_ATTR] = "made-once"
    import fsspec

    stats_url = "memory://gencast_rmmd_teacher_test/stats"  # the statistics by URL too
    fsspec.filesystem("memory").put(str(stats), stats_url, recursive=True)
    out = tmp_path / "url"
    summary = teacher.train_teacher(MODEL, TASK, url, stats_url, out, _cfg(), progress=False)
    assert summary["steps"] == 6
    assert teacher.read_run(out).data == url
    inputs = json.loads((out / teacher.INPUTS_FILE).read_text())
    assert (
        inputs["stats_sha256"]
        == json.loads((out_a / teacher.INPUTS_FILE).read_text())["stats_sha256"]
    )
    assert json.loads((out / teacher.INPUTS_FILE).read_text())["data_store_id"] == "made-once"
    a, b = _flat_params(out_a / "teacher.npz"), _flat_params(out / "teacher.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    zarr.open_group(url, mode="r+").attrs[STORE_ID_ATTR] = "made-again"
    with pytest.raises(OutputError, match="begun from another data store") as e:
        teacher.train_teacher(MODEL, TASK, url, stats_url, out, _cfg(num_steps=8), progress=False)
    assert url in str(e.value)


def test_export_round_trip_and_info(straight_run, tmp_path):
    from gencast_rmmd.model.checkpoint import denoiser_from_checkpoint, load_checkpoint

    out, summary = straight_run
    exported = teacher.export_teacher(out, tmp_path / "again.npz", license="test-license")
    a, b = _flat_params(out / "teacher.npz"), _flat_params(exported)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    ck = load_checkpoint(exported)
    assert ck.license == "test-license" and ck.task_config == TASK
    assert ck.extra["provenance"]["train_end"] == "2020-01-15T00:00:00"
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
    # A step the run has no checkpoint of: named with the steps there are (was orbax's "not
    # found" reported as a checkpoint that "does not match the expected training state").
    with pytest.raises(
        CheckpointError, match=r"no checkpoint at step 99 in .*; it holds steps .*4"
    ):
        teacher.export_teacher(out, tmp_path / "s99.npz", step=99)
    assert not (tmp_path / "s99.npz").exists()
    # A previous export is replaced; a file that is not an .npz archive (run.json given as
    # --out by mistake) is refused before any work and left as it was.
    assert teacher.export_teacher(out, tmp_path / "s4.npz", step=6) == tmp_path / "s4.npz"
    assert all(np.array_equal(v, a[k]) for k, v in _flat_params(tmp_path / "s4.npz").items())
    run_json = (out / "run.json").read_bytes()
    with pytest.raises(OutputError, match=r"run.json' exists and is not an .npz archive"):
        teacher.export_teacher(out, out / "run.json")
    assert (out / "run.json").read_bytes() == run_json
    with pytest.raises(
        OutputError, match=r"`teacher export` writes its output on local disk.*a path for the \.npz"
    ):
        teacher.export_teacher(out, "gs://some-bucket/teacher.npz")
    assert not os.path.exists("gs:")  # nothing written where pathlib would have put it
    text = teacher.describe_checkpoint(exported)
    assert f"{summary['num_params']:,} in {summary['num_tensors']} tensors" in text
    assert "test-license" in text and "7 network evaluations" in text
    assert "mesh refinement 1 (42 nodes)" in text
    # A student's file: the sampler `forecast` runs is the student's (it said the teacher's
    # DPM-Solver++ 2S and its 7 evaluations, with the student's as a raw dict at the end).
    import dataclasses

    from gencast_rmmd.distill.student_sampler import StudentSamplerConfig
    from gencast_rmmd.model import checkpoint as ckpt_lib

    ck = ckpt_lib.load_checkpoint(exported)
    k4 = StudentSamplerConfig(num_steps=4, rho=100.0, eta=0.5)
    extra = {**ck.extra, "student_sampler_config": ckpt_lib.config_to_tree(k4)}
    ckpt_lib.save_checkpoint(tmp_path / "k4.npz", dataclasses.replace(ck, extra=extra))
    text = teacher.describe_checkpoint(tmp_path / "k4.npz")
    sampler = text.split("sampler (what `forecast` runs):\n")[1].splitlines()
    assert sampler[0].startswith("  student, 4 steps: noise levels 80 -> 0.03 on the edm grid")
    assert sampler[0].endswith("eta 0.5; 4 network evaluations per step")
    assert sampler[1].startswith("  (the teacher's, kept in the file and not used: DPM-Solver")


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
    # By URL (the official weights: gs://dm_graphcast/gencast/params/...; memory:// here).
    import fsspec

    url = "memory://gencast_rmmd_teacher_info/teacher.npz"
    fsspec.filesystem("memory").put_file(str(out / "teacher.npz"), url)
    assert main(["teacher", "info", url]) == 0
    assert f"{summary['num_params']:,}" in capsys.readouterr().out
    assert main(["teacher", "info", url + ".missing"]) == 2
    assert f"'{url}.missing' does not exist" in capsys.readouterr().err
    # A store without a task attribute needs --task.
    argv = ["teacher", "train", "--config", "tiny", "--data", str(store), "--stats", str(stats)]
    assert main(argv + ["--out", str(tmp_path / "r")]) == 2
    assert "--task" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_info_export(data, tmp_path, capsys):
    from gencast_rmmd.cli import main

    store, stats = data
    cfg, task = _cli_configs(tmp_path)
    out = tmp_path / "run"
    argv = ["teacher", "train", "--config", str(cfg), "--data", str(store), "--stats", str(stats)]
    argv += ["--task", str(task), "--out", str(out), "--steps", "2", "--batch-size", "2"]
    argv += ["--set", "training.log_every=1", "--no-progress"]
    assert main(argv) == 0
    assert "teacher.npz" in capsys.readouterr().out
    # Re-running a finished run is a no-op that re-exports.
    assert main(argv) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["teacher", "info", str(out / "teacher.npz")]) == 0
    assert "parameters:" in capsys.readouterr().out
    # A model override is named in the description that the checkpoint carries.
    over = tmp_path / "over"
    argv_over = [str(over) if a == str(out) else a for a in argv]
    assert main([*argv_over, "--set", "sampler_config.num_noise_levels=7"]) == 0
    capsys.readouterr()
    assert main(["teacher", "info", str(over / "teacher.npz")]) == 0
    assert f"{MODEL.description}; overridden: num_noise_levels=7" in capsys.readouterr().out
    assert main(["teacher", "export", "--run", str(out), "--out", str(tmp_path / "e.npz")]) == 0
    assert (tmp_path / "e.npz").is_file()
    # A bad override is a one-line user error (exit 2).
    assert main(argv[:-3] + ["--set", "training.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


@pytest.mark.slow
def test_two_devices_match_one_device(data, tmp_path, host_devices_env):
    """Data parallel over 2 CPU devices (batch split over the `data` axis) gives the same losses
    and weights as 1 device with the same global batch (up to float summation order)."""
    import subprocess
    import sys

    store, stats = data
    cfg, task = _cli_configs(tmp_path)
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"dev{n}"
        env = host_devices_env(n)
        cmd = [sys.executable, "-m", "gencast_rmmd", "teacher", "train", "--config", str(cfg)]
        cmd += ["--data", str(store), "--stats", str(stats), "--task", str(task)]
        cmd += ["--out", str(out), "--steps", "3", "--batch-size", "4", "--no-progress"]
        cmd += ["--set", "training.log_every=1"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        outs[n] = out
    losses = {
        n: [json.loads(x)["loss"] for x in (o / "metrics.jsonl").read_text().splitlines()]
        for n, o in outs.items()
    }
    np.testing.assert_allclose(losses[2], losses[1], rtol=1e-4)
    a, b = _flat_params(outs[1] / "teacher.npz"), _flat_params(outs[2] / "teacher.npz")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-5, err_msg=k)


# ------------------------------------------------------------------------------------------------
# Skill of the tiny teacher on the embedded nature run (slow: trains for a few minutes).

# The low end of the tiny range (mesh 2, width 64, 2 layers; configs/model/tiny.yaml is
# the high end) so that training and a 39-evaluation ensemble forecast fit in a few minutes on
# 2 cores. Environment variables allow a bigger check by hand.
SKILL_STEPS = int(os.environ.get("GENCAST_RMMD_SKILL_STEPS", 1500))
SKILL_BATCH = int(os.environ.get("GENCAST_RMMD_SKILL_BATCH", 2))
SKILL_LR = float(os.environ.get("GENCAST_RMMD_SKILL_LR", 2e-3))
SKILL_INITS = 4  # init times in the held-out eval split, 5 days apart
SKILL_MEMBERS = 4
SKILL_LEADS = 6  # 72 h
# Leads (12 h steps) over which the CRPS must beat climatology. Measured with these settings
# (4 inits x 4 members): T850 and Z500 beat climatology to 48 h and lose narrowly from 60 h (the
# issue asks for 72 h: not reached with a few minutes of training; 600 steps reach 36 h).
# `make test-skill` runs this test at 5000 steps, batch 4 and 72 h (16 min): CRPS / climatology's
# at 72 h 0.82 (T850) and 0.88 (Z500).
# Other batch sizes, step counts and learning rates (the environment knobs): docs/teacher.md,
# "What else does and does not help a few-minute teacher".
SKILL_CRPS_LEADS = int(os.environ.get("GENCAST_RMMD_SKILL_CRPS_LEADS", 4))
SKILL_OVERRIDES = os.environ.get(
    "GENCAST_RMMD_SKILL_OVERRIDES",
    "denoiser_architecture_config.mesh_size=2 denoiser_architecture_config.latent_size=64 "
    "denoiser_architecture_config.sparse_transformer_config.d_model=64 "
    "denoiser_architecture_config.sparse_transformer_config.num_layers=2 "
    "denoiser_architecture_config.sparse_transformer_config.ffw_hidden=256",
).split()


def _lat_weighted_mean(x, lat):
    from gencast_rmmd.model.grid import latitude_weights

    w = latitude_weights(lat)
    return float(np.mean(np.mean(x, axis=-1) * w))  # mean over lon, then area-weighted over lat


def _gaussian_crps(mu, sd, y):
    from scipy.stats import norm

    z = (y - mu) / sd
    return sd * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))


@pytest.mark.slow
def test_tiny_teacher_skill_on_nature_run(tmp_path):
    """Tiny teacher (configs/model/tiny.yaml) trained on the train split of the embedded nature run;
    on the held-out eval split its ensemble-mean RMSE beats persistence at 12 h and 24 h for T850
    and Z500, and its fair CRPS beats a per-grid-point Gaussian climatology out to
    `SKILL_CRPS_LEADS` x 12 h (48 h by default; see the constant) and on average over 72 h."""
    from gencast_rmmd.config import load_config
    from gencast_rmmd.data.config import load_data_config
    from gencast_rmmd.data.examples import physical_window
    from gencast_rmmd.data.nature_run import embedded_store
    from gencast_rmmd.data.stats import compute_stats, save_stats
    from gencast_rmmd.evaluation.crps import fair_crps
    from gencast_rmmd.forecast.model import load_forecast_model
    from gencast_rmmd.forecast.rollout import Rollout, run_key

    data_cfg = load_data_config("embedded")
    task = data_cfg.task
    store = embedded_store(progress=False)
    ds = xr.open_zarr(store, chunks=None, consolidated=None)
    train_start, train_end = data_cfg.splits["train"]
    eval_start, eval_end = data_cfg.splits["eval"]
    # Normalization statistics from a contiguous part of the training split (no seasons in
    # Held-Suarez, so half a year is representative).
    stat_ds = ds.sel(time=slice(train_start, "2000-06-30T12:00"))
    stats = save_stats(compute_stats(stat_ds), tmp_path / "stats")

    model = load_config(ModelConfig, "tiny", SKILL_OVERRIDES, kind="model")
    training = teacher.TeacherTrainingConfig(
        num_steps=SKILL_STEPS,
        batch_size=SKILL_BATCH,
        optimizer=OptimizerConfig(
            learning_rate=SKILL_LR, schedule="cosine", warmup_steps=50, end_learning_rate=1e-5
        ),
        checkpoint_every=SKILL_STEPS,
        log_every=50,
        train_start=train_start,
        train_end=train_end,
    )
    summary = teacher.train_teacher(
        model, task, store, stats, tmp_path / "run", training, progress=False
    )
    fm = load_forecast_model(summary["export"], str(stats))
    lat, lon = ds["lat"].values, ds["lon"].values
    rollout = Rollout(fm, lat, lon, block_size=SKILL_MEMBERS)

    lay = task.layout
    ch = {
        "T850": lay.targets.index(("temperature", 0, 850)),
        "Z500": lay.targets.index(("geopotential", 0, 500)),
    }
    last_in = {k: int(lay.last_input_of_target[c]) for k, c in ch.items()}
    # Climatology: per grid point mean/std over the statistics window.
    clim = {
        "T850": stat_ds["temperature"].sel(level=850),
        "Z500": stat_ds["geopotential"].sel(level=500),
    }
    clim = {k: (v.mean("time").values, v.std("time").values) for k, v in clim.items()}

    inits = np.datetime64(eval_start, "ns") + np.arange(SKILL_INITS) * np.timedelta64(5, "D")
    assert inits[-1] + np.timedelta64(12 * SKILL_LEADS, "h") <= np.datetime64(eval_end, "ns")
    sq = {k: np.zeros((2, SKILL_LEADS)) for k in ch}  # ensemble-mean and persistence sq. errors
    crps = {k: np.zeros((2, SKILL_LEADS)) for k in ch}  # teacher, climatology
    for t0 in inits:
        inputs, forcings, truth = physical_window(ds, task, t0, SKILL_LEADS)
        ens = rollout(run_key(0, t0), range(SKILL_MEMBERS), inputs, forcings)  # [M, N, lat, lon, C]
        assert np.all(np.isfinite(ens))
        for k, c in ch.items():
            y = truth[..., c]  # [N, lat, lon]
            for n in range(SKILL_LEADS):
                sq[k][0, n] += _lat_weighted_mean((ens[:, n, ..., c].mean(0) - y[n]) ** 2, lat)
                sq[k][1, n] += _lat_weighted_mean((inputs[..., last_in[k]] - y[n]) ** 2, lat)
                crps[k][0, n] += _lat_weighted_mean(fair_crps(ens[:, n, ..., c], y[n]), lat)
                mu, sd = clim[k]
                crps[k][1, n] += _lat_weighted_mean(_gaussian_crps(mu, sd, y[n]), lat)
    report = {}
    for k in ch:
        rmse = np.sqrt(sq[k] / SKILL_INITS)
        cr = crps[k] / SKILL_INITS
        report[k] = {"rmse_teacher": rmse[0], "rmse_persistence": rmse[1], "crps": cr[0]}
        report[k]["crps_climatology"] = cr[1]
        print(k, {n: np.round(v, 3).tolist() for n, v in report[k].items()})
    print("training", {k: summary[k] for k in ("steps", "loss", "steps_per_sec")})
    for k in ch:
        r = report[k]
        assert np.all(r["rmse_teacher"][:2] < r["rmse_persistence"][:2]), (k, r)
        n = SKILL_CRPS_LEADS
        assert np.all(r["crps"][:n] < r["crps_climatology"][:n]), (k, r)
        # Averaged over all leads to 72 h the ensemble still beats climatology.
        assert r["crps"].mean() < r["crps_climatology"].mean(), (k, r)


def _cli_configs(tmp_path):
    """The tiny model and the task as YAML files for `teacher train --config/--task`."""
    import yaml

    from gencast_rmmd.config import to_dict

    cfg = tmp_path / "model.yaml"
    cfg.write_text(yaml.safe_dump(to_dict(MODEL)))
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"task": to_dict(TASK)}))
    return cfg, task
