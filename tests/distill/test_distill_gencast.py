"""GenCast distillation end to end through the CLI on a synthetic store and a tiny random teacher:
both phases run, students are exported in the official layout with the student sampler and
provenance, the forecast loader reads them as K-step models, and runs resume / refuse mismatches
(another config, a teacher rewritten at the same path)."""

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
    # re-running is a resume (no new steps); a different objective refuses the directory
    assert main(run_args(world, out)) == 0
    assert main(run_args(world, out, extra=["rmmd.objective.reward_weight=0.5"])) == 2
    assert "different config" in capsys.readouterr().err
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
    args = _world_args(world, tmp_path / "r2")
    args[args.index("--teacher") + 1] = str(tmp_path / "missing.npz")
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err
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
