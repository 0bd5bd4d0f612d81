"""GenCast distillation end to end through the CLI on a synthetic store and a tiny random teacher:
both phases run, students are exported in the official layout with the student sampler and
provenance, the forecast loader reads them as K-step models, and runs resume / refuse mismatches
(another config, a teacher rewritten at the same path, phase 1 changed under a started phase 2),
while a diverged phase may run again with a lower learning rate."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from gencast_rmmd.cli import main
from gencast_rmmd.data.stats import compute_stats, save_stats, stats_sha256
from gencast_rmmd.data.task import gencast_task
from gencast_rmmd.evaluation.synthetic import synthetic_canonical_store
from gencast_rmmd.model.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    read_provenance,
    save_checkpoint,
)
from gencast_rmmd.model.configs import (
    DenoiserArchitectureConfig,
    ModelConfig,
    SparseTransformerConfig,
)
from gencast_rmmd.model.denoiser import build_denoiser
from gencast_rmmd.safety import current_umask, file_sha256


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill_gc")
    task = gencast_task(levels=(500, 850))
    ds = synthetic_canonical_store(str(d / "data.zarr"), task, n_times=8, n_lat=32, n_lon=64)
    save_stats(compute_stats(ds), str(d / "stats"))
    arch = DenoiserArchitectureConfig(
        sparse_transformer_config=SparseTransformerConfig(
            attention_k_hop=2, d_model=16, num_layers=1, num_heads=2, ffw_hidden=32
        ),
        mesh_size=1,
        latent_size=16,
    )
    den = build_denoiser(arch, task, ds["lat"].values, ds["lon"].values)
    params = jax.jit(den.init)(jax.random.key(0), *den.example_inputs(1))
    ck = make_checkpoint(
        params, task, ModelConfig(denoiser_architecture_config=arch), license="test-license"
    )
    save_checkpoint(d / "teacher.npz", ck)
    return d


def _world_args(d, out, phase="both", extra=()):
    sets = [
        "mmd.loop.num_steps=2",
        "mmd.loop.batch_size=2",
        "mmd.loop.checkpoint_every=1",
        "rmmd.loop.num_steps=2",
        "rmmd.loop.batch_size=2",
        "student_sampler.num_steps=2",
        *extra,
    ]
    args = ["distill", "--config", "tiny", "--teacher", str(d / "teacher.npz")]
    args += ["--data", str(d / "data.zarr"), "--stats", str(d / "stats"), "--out", str(out)]
    args += ["--phase", phase, "--no-progress"]
    for s in sets:
        args += ["--set", s]
    return args


@pytest.mark.slow
def test_cli_runs_both_phases_and_exports_students(world, tmp_path, capsys):
    from gencast_rmmd.forecast.model import load_forecast_model

    out = tmp_path / "run"
    teacher = tmp_path / "teacher.npz"  # a copy: retrained (rewritten) at the end of the test
    shutil.copy(world / "teacher.npz", teacher)

    def run_args(d, out, **kw):
        a = _world_args(d, out, **kw)
        a[a.index("--teacher") + 1] = str(teacher)
        return a

    # phase 2 before phase 1 is a user error
    assert main(run_args(world, out, phase="rmmd")) == 2
    assert "run phase 1 first" in capsys.readouterr().err
    assert not out.exists()  # a refused run leaves nothing behind
    assert main(run_args(world, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("summary.json", "config.yaml", "inputs.json", "mmd/student.npz"):
        # Written under a temporary name, published with a plain write's permissions (they
        # were mkstemp's 0600, unreadable to a team sharing the run directory).
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~current_umask(), name
    for ph in ("mmd", "rmmd"):
        assert summary[ph]["complete"] and summary[ph]["steps"] == 2
        assert np.isfinite(summary[ph]["last_metrics"]["loss"])
        ck = load_checkpoint(out / ph / "student.npz")
        prov = ck.extra["provenance"]
        assert str(np.asarray(prov["teacher"])).endswith("teacher.npz")
        assert str(np.asarray(prov["phase"])) == ph
        assert str(np.asarray(prov["data_store"])).endswith("data.zarr")
        assert np.datetime64(str(np.asarray(prov["train_start"]))) < np.datetime64(
            str(np.asarray(prov["train_end"]))
        )
        assert "student_sampler" in str(np.asarray(prov["config"]))
        assert ck.license == "test-license"
        assert (out / ph / "metrics.jsonl").exists()
    rm = json.loads((out / "rmmd" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"reward", "crps", "l2", "mmd", "aux_loss", "grad_norm/student"} <= set(rm)
    model = load_forecast_model(str(out / "rmmd" / "student.npz"), str(world / "stats"))
    assert model.nfe == 2 and model.name == "student-2"
    # phase-2 student differs from phase 1 (it was trained)
    a = load_checkpoint(out / "mmd" / "student.npz").params
    b = load_checkpoint(out / "rmmd" / "student.npz").params
    assert any(not np.array_equal(a[m][n], b[m][n]) for m in a for n in a[m])
    # re-running is a resume (no new steps) that keeps each phase's last metrics; a different
    # objective refuses the directory
    capsys.readouterr()
    assert main(run_args(world, out)) == 0
    printed = capsys.readouterr().out
    again = json.loads((out / "summary.json").read_text())
    for ph in ("mmd", "rmmd"):
        assert again[ph]["last_metrics"] == summary[ph]["last_metrics"]
        loss = summary[ph]["last_metrics"]["loss"]
        assert f"distill {ph}: 2 steps, loss {loss:.4g}," in printed
    assert "nan" not in printed.split("\n{")[0]
    assert main(run_args(world, out, extra=["rmmd.objective.reward_weight=0.5"])) == 2
    assert "different config (rmmd.objective.reward_weight: 1.0 -> 0.5)" in capsys.readouterr().err
    # Phase 2 has started from phase 1's exports: a longer phase 1 would retrain and re-export
    # its frozen anchor under phase 2's resumed state, so it is refused before anything runs.
    anchor = file_sha256(out / "mmd" / "student.npz")
    assert main(run_args(world, out, extra=["mmd.loop.num_steps=3"])) == 2
    err = capsys.readouterr().err
    assert "mmd.loop.num_steps: 2 -> 3" in err and "phase 2 has started" in err
    assert file_sha256(out / "mmd" / "student.npz") == anchor
    # The run records what it was begun from by content (RUN/inputs.json, the students'
    # provenance, read without the parameters); a teacher retrained at the same path would
    # continue a state it never made, so the run refuses it and stays as it was.
    inputs = json.loads((out / "inputs.json").read_text())
    assert inputs == {
        "teacher_sha256": file_sha256(teacher),
        "stats_sha256": stats_sha256(world / "stats"),
    }
    for ph in ("mmd", "rmmd"):
        prov = read_provenance(out / ph / "student.npz")
        assert {k: prov[k] for k in inputs} == inputs and prov["phase"] == ph
    ck = load_checkpoint(teacher)
    retrained = jax.tree_util.tree_map(lambda a: a * 1.01, ck.params)
    save_checkpoint(teacher, dataclasses.replace(ck, params=retrained))
    assert main(run_args(world, out)) == 2
    err = capsys.readouterr().err
    assert "begun from another teacher (SHA-256" in err and str(teacher) in err
    assert json.loads((out / "inputs.json").read_text()) == inputs
    # A data store gencast-rmmd made carries a creation id; one re-made at the same path is
    # refused the same way, by path (this world's store has no id: the record is edited).
    from gencast_rmmd.distill.gencast import _check_inputs
    from gencast_rmmd.errors import OutputError

    where = {"teacher": str(teacher), "stats": "S", "data_store": str(world / "data.zarr")}
    (out / "inputs.json").write_text(json.dumps(dict(inputs, data_store_id="made-once")))
    _check_inputs(out, dict(inputs, data_store_id="made-once"), where)
    with pytest.raises(OutputError, match=r"another data store \(store id made-once") as e:
        _check_inputs(out, dict(inputs, data_store_id="made-again"), where)
    assert f"same path ({world / 'data.zarr'})" in str(e.value)


def test_bad_teacher_and_config_are_user_errors(world, tmp_path, capsys):
    assert main(_world_args(world, tmp_path / "r", extra=["mmd.objective.members=0"])) == 2
    assert "members" in capsys.readouterr().err
    low = ["student_sampler.min_noise_level=0.01"]  # below the objectives' s_floor (0.02)
    assert main(_world_args(world, tmp_path / "r", extra=low)) == 2
    err = capsys.readouterr().err
    assert "s_floor 0.02" in err and "min_noise_level 0.01" in err
    assert not (tmp_path / "r").exists()
    args = _world_args(world, tmp_path / "r2")
    args[args.index("--teacher") + 1] = str(tmp_path / "missing.npz")
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
    # A teacher that records other statistics than --stats (ours record theirs) is refused.
    flat = dict(np.load(world / "teacher.npz"))
    flat["extra:provenance:stats_sha256"] = np.array("0" * 64)
    np.savez(tmp_path / "other.npz", **flat)
    args[args.index("--teacher") + 1] = str(tmp_path / "other.npz")
    assert main(args) == 2
    assert "was trained with other normalisation statistics" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


@pytest.mark.slow
def test_distill_reads_a_store_by_url(world, tmp_path, capsys):
    """`--data`, `--teacher` and `--stats` may be URLs (gs:// on a pod, e.g. the official
    weights and statistics; fsspec's memory:// here): the run reads them as given, records the
    URLs, and trains exactly as from the same files on disk."""
    import fsspec
    import xarray as xr

    root = "memory://gencast_rmmd_distill_test"
    url = f"{root}/data.zarr"
    ds = xr.open_zarr(world / "data.zarr", consolidated=False).drop_encoding()
    ds.to_zarr(url, consolidated=False, mode="w")
    fs = fsspec.filesystem("memory")
    fs.put_file(str(world / "teacher.npz"), f"{root}/teacher.npz")
    fs.put(str(world / "stats"), f"{root}/stats", recursive=True)
    local, remote = tmp_path / "local", tmp_path / "url"
    assert main(_world_args(world, local, phase="mmd")) == 0
    args = _world_args(world, remote, phase="mmd")
    for flag, value in (("--data", url), ("--teacher", f"{root}/teacher.npz")):
        args[args.index(flag) + 1] = value
    args[args.index("--stats") + 1] = f"{root}/stats"
    assert main(args) == 0, capsys.readouterr().err
    a = load_checkpoint(local / "mmd" / "student.npz")
    b = load_checkpoint(remote / "mmd" / "student.npz")
    prov = {k: str(np.asarray(v)) for k, v in b.extra["provenance"].items()}
    assert (prov["data_store"], prov["teacher"]) == (url, f"{root}/teacher.npz")
    local_prov = load_checkpoint(local / "mmd" / "student.npz").extra["provenance"]
    for k in ("teacher_sha256", "stats_sha256"):
        assert prov[k] == str(np.asarray(local_prov[k])), k
    for m in a.params:
        for n in a.params[m]:
            np.testing.assert_array_equal(a.params[m][n], b.params[m][n], err_msg=f"{m}/{n}")


def _fake_checkpoint(directory):
    """A complete orbax checkpoint at step 1: what makes a phase count as started."""
    from gencast_rmmd.training.checkpointing import CheckpointManager

    mngr = CheckpointManager(directory)
    mngr.save(1, {"x": np.zeros(2, np.float32)}, {})
    mngr.close()


def test_what_may_change_when_a_run_resumes(tmp_path):
    """The config check before a run (refused runs stop before the teacher is read: here it
    does not exist, so an accepted config ends in that CheckpointError). A phase has started
    when it holds a complete checkpoint, not when `checkpoints/` exists (a phase that diverged
    at step 1 left it empty); a started phase may change its length, bookkeeping and optimizer
    settings (a lower learning rate, as the divergence message advises), not clipping on/off
    nor anything else; once phase 2 has started, phase 1 may not change at all."""
    import yaml

    from gencast_rmmd.config import load_config, to_dict
    from gencast_rmmd.distill.gencast import DistillConfig, run_distill
    from gencast_rmmd.errors import CheckpointError, OutputError

    def cfg(*sets):
        return load_config(DistillConfig, "tiny", list(sets), kind="distill")

    out = tmp_path / "run"

    def attempt(c):
        data = (tmp_path / "data.zarr", tmp_path / "stats")
        return run_distill(c, tmp_path / "missing.npz", *data, out, "both", progress=False)

    huge = "mmd.optimizer.learning_rate=1.0e+30"
    (out / "mmd" / "checkpoints").mkdir(parents=True)  # diverged before its first save
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg(huge)), sort_keys=False))
    with pytest.raises(CheckpointError, match="does not exist"):
        attempt(cfg("mmd.optimizer.learning_rate=1.0e-5", "mmd.objective.aux_reg_weight=0.5"))

    _fake_checkpoint(out / "mmd" / "checkpoints")  # phase 1 has started
    lower = ["mmd.optimizer.learning_rate=1.0e-5", "mmd.optimizer.schedule=constant"]
    with pytest.raises(CheckpointError, match="does not exist"):
        attempt(cfg(*lower, "mmd.loop.num_steps=400", "mmd.optimizer.b2=0.999"))
    with pytest.raises(OutputError) as e:
        attempt(cfg(huge, "mmd.optimizer.grad_clip_norm=1.0"))
    assert "mmd.optimizer.grad_clip_norm: 'null' -> 'set'" in str(e.value)
    with pytest.raises(OutputError, match=r"mmd.objective.aux_reg_weight: 1.0 -> 0.5"):
        attempt(cfg(huge, "mmd.objective.aux_reg_weight=0.5"))
    assert "phase 2 has started" not in str(e.value)

    _fake_checkpoint(out / "rmmd" / "checkpoints")  # phase 2 has started from phase 1's exports
    with pytest.raises(OutputError) as e:
        attempt(cfg(huge, "mmd.loop.num_steps=400"))
    assert "mmd.loop.num_steps: 300 -> 400" in str(e.value)
    assert "phase 2 has started from phase 1's exports" in str(e.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        attempt(cfg(huge, "mmd.loop.log_every=7", "rmmd.loop.num_steps=400", *lower[1:]))


def test_micro_batch_not_splitting_over_the_devices_is_refused_first(
    world, tmp_path, host_devices_env
):
    """On 4 devices the world's batch of 2 cannot be split, nor can RMMD's GenCast setting
    (batch 16, accumulation 8: micro-batches of 2): one user error (exit 2) naming the keys and a
    setting that works, and nothing written into --out (it was an internal error after
    config.yaml and inputs.json were written)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    paper = [f"{ph}.loop.batch_size=16" for ph in ("mmd", "rmmd")]  # as in rmmd_gencast.yaml
    for config, extra, expect in (
        ("tiny", [], "mmd.loop.batch_size 2 / mmd.loop.grad_accum_steps 1"),
        ("rmmd_gencast", paper, "batch_size 16 / mmd.loop.grad_accum_steps 8 gives micro-"),
    ):
        args = _world_args(world, out, extra=extra)
        args[args.index("--config") + 1] = config
        cmd = [sys.executable, "-m", "gencast_rmmd", *args]
        res = subprocess.run(
            cmd, env=host_devices_env(4), capture_output=True, text=True, timeout=600
        )
        assert res.returncode == 2, res.stderr[-3000:]
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and expect in err[0] and "over the 4 devices" in err[0], err
        assert config == "tiny" or "--set mmd.loop.grad_accum_steps=4" in err[0]
        assert not out.exists()


@pytest.mark.slow
def test_a_diverged_phase_runs_again_with_a_lower_learning_rate(world, tmp_path, capsys):
    """The divergence message's advice, followed: LR 1e30 blows up at step 1, before the first
    checkpoint; the same command with a lower rate is accepted and trains the phase."""
    out = tmp_path / "run"
    sets = ["mmd.optimizer.warmup_steps=0", "mmd.optimizer.schedule=constant"]
    sets += ["mmd.loop.checkpoint_every=2"]
    args = _world_args(world, out, phase="mmd", extra=[*sets, "mmd.optimizer.learning_rate=1e30"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "non-finite loss or gradient at step 1" in err and "starts again from step 0" in err
    assert main(_world_args(world, out, phase="mmd", extra=sets)) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mmd"]["complete"] and summary["mmd"]["steps"] == 2
