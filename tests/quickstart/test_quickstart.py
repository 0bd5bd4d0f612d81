"""End to end: `gencast-rmmd quickstart --fast` runs the whole chain and reports what it measured."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest

from gencast_rmmd.cli import main
from gencast_rmmd.cli import quickstart_chain as chain

SUMMARY_KEYS = {
    "teacher_nfe",
    "student_nfe",
    "teacher_step_seconds",
    "student_step_seconds",
    "speedup",
    "win_rate",
    "mean_crps_change_percent",
    "spread_skill_teacher",
    "spread_skill_student",
    "entries",
}


# Name look-ups and connections the fast run's process attempts (Python audit events; a hook
# cannot be removed, so it records only while the run is on).
NETWORK = {"on": False, "seen": []}


def _record_network(event, args):
    if NETWORK["on"] and event in ("socket.getaddrinfo", "socket.connect", "urllib.Request"):
        NETWORK["seen"].append(f"{event} {args!r:.200}")


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "run"
    sys.addaudithook(_record_network)
    NETWORK["on"] = True
    try:
        rc = main(["quickstart", "--fast", "--no-progress", "--out", str(out)])
    finally:
        NETWORK["on"] = False
    assert rc == 0
    return out


@pytest.mark.slow
def test_fast_quickstart_needs_no_network(fast_run):
    """The embedded chain is offline: no name look-up, connection or URL request at all (Beam's
    DirectRunner once reached for GitHub in every pipeline, to download its Prism runner)."""
    assert NETWORK["seen"] == []


@pytest.mark.slow
def test_fast_quickstart_produces_report_and_summary(fast_run, capsys):
    summary = json.loads((fast_run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["teacher_nfe"] == 59  # 30 noise levels of DPM-Solver++ 2S
    assert summary["student_nfe"] == 8
    assert summary["teacher_step_seconds"] > 0 and summary["student_step_seconds"] > 0
    assert math.isclose(
        summary["speedup"],
        summary["teacher_step_seconds"] / summary["student_step_seconds"],
        rel_tol=1e-9,
    )
    # The steadier checks: median wall-clock and median process-CPU ratios, both positive.
    assert summary["speedup_median"] > 0 and summary["speedup_cpu"] > 0
    # ... and the median of the ratios paired by round.
    speed = json.loads((fast_run / "speed.json").read_text())
    pairs = [
        t / s
        for t, s in zip(
            speed["teacher"]["round_seconds"], speed["student"]["round_seconds"], strict=True
        )
    ]
    assert len(pairs) == summary["profile_config"]["speed_repeats"]
    assert math.isclose(summary["speedup_paired"], float(np.median(pairs)), rel_tol=1e-9)
    # The fast profile sets speed_one_member: the one-member step is timed beside the 2-member one.
    assert speed["one_member"]["student"]["members"] == 1
    assert speed["student"]["members"] == 2
    assert math.isclose(
        summary["speedup_one_member"],
        speed["one_member"]["teacher"]["seconds"] / speed["one_member"]["student"]["seconds"],
        rel_tol=1e-9,
    )
    assert 0.0 <= summary["win_rate"] <= 1.0
    assert summary["entries"] > 0
    assert math.isfinite(summary["mean_crps_change_percent"])
    # Spread/skill per role, read from the scorecard (teacher and student share no key even
    # when their model names are equal).
    import xarray as xr

    with xr.open_dataset(fast_run / "evaluation" / "scorecard.nc") as card:
        for var, key in (
            ("value", "spread_skill_student"),
            ("baseline_value", "spread_skill_teacher"),
        ):
            want = float(card[var].sel(metric="spread_skill", region="global").mean())
            assert math.isclose(summary[key], want, rel_tol=1e-6), (key, summary[key], want)
    html = (fast_run / "report.html").read_text()
    assert "speedup" in html and "evaluation/" in html
    assert f"<td>speedup_paired</td><td>{chain._fmt(summary['speedup_paired'])}</td>" in html
    assert (fast_run / "evaluation" / "scorecard.csv").exists()
    assert (fast_run / "forecasts" / "student.zarr").exists()


@pytest.mark.slow
def test_eta_is_tuned_on_the_validation_window_only(fast_run):
    """[train][validation][eval]: the students' eta is chosen on validation-window forecasts (inits
    and every target inside it), by the profile's criterion, and is the eta the held-out
    forecasts and the speed stage use."""
    import xarray as xr
    import yaml

    from gencast_rmmd.errors import OutputError
    from gencast_rmmd.model.checkpoint import load_checkpoint

    cfg = chain.load_profile("fast")
    assert cfg.tune_eta and cfg.validation_days > 0
    splits = yaml.safe_load((fast_run / "data.yaml").read_text())["splits"]
    (t0, t1), (v0, v1), (e0, e1) = (
        np.array(splits[k], dtype="datetime64[ns]") for k in ("train", "validation", "eval")
    )
    assert t0 < t1 < v0 < v1 < e0 < e1
    assert e1 - e0 == v1 - v0  # the fast profile holds out 10 days of each
    tuning = json.loads((fast_run / "tuning" / "tuning.json").read_text())
    assert [r["eta"] for r in tuning["results"]] == list(cfg.tune_eta)
    best = max(tuning["results"], key=lambda r: r["mean_crps_change_percent"])
    assert tuning["eta"] == best["eta"] and tuning["by"] == "mean_crps"
    for r in tuning["results"]:
        with xr.open_zarr(fast_run / "tuning" / f"eta_{r['eta']:g}" / "student.zarr") as ds:
            inits = ds["time"].values
            valid = inits[:, None] + ds["prediction_timedelta"].values[None, :]
            assert ds.attrs["sampler"].startswith(f"student K=8 (DDIM eta={r['eta']}")
        assert (inits >= v0).all() and (valid <= v1).all()
        assert 0 <= r["win_rate"] <= 1
    summary = json.loads((fast_run / "summary.json").read_text())
    assert summary["student_eta"] == tuning["eta"]
    ctx = chain.Context.from_run(fast_run)
    for who in ("student", "mmd_student"):
        with xr.open_zarr(ctx.forecast_store(who)) as ds:
            assert (ds["time"].values > v1).all()
            assert f"eta={tuning['eta']}" in ds.attrs["sampler"]
        eta = load_checkpoint(chain.forecast_npz(ctx, who)).extra["student_sampler_config"]["eta"]
        assert float(eta) == tuning["eta"]
    # The final student at the chosen eta is the file the tuning stage forecast with.
    chosen = fast_run / "tuning" / f"eta_{tuning['eta']:g}" / "student.npz"
    assert chain.forecast_npz(ctx, "student") == chosen
    # The speed stage timed the student that was scored.
    speed = json.loads((fast_run / "speed.json").read_text())
    assert speed["student"]["checkpoint"] == str(chain.forecast_npz(ctx, "student"))
    # The trained checkpoints are left as they were.
    trained = load_checkpoint(ctx.student_npz).extra["student_sampler_config"]["eta"]
    assert float(trained) == 0.25  # configs/distill/tiny.yaml
    with pytest.raises(OutputError, match="not a distilled student"):
        chain.with_student_eta(ctx.teacher_eval_npz, 0.0, fast_run / "tuning" / "x.npz")


@pytest.mark.slow
def test_a_student_rewritten_since_is_not_reused(fast_run, tmp_path):
    """The eta-rewritten checkpoint and the forecast stores are reused only while the checkpoint
    they were made from is byte-for-byte the same."""
    import shutil

    import jax

    from gencast_rmmd.model.checkpoint import load_checkpoint, save_checkpoint
    from gencast_rmmd.safety import file_sha256

    ctx = chain.Context.from_run(fast_run)
    src, dst = tmp_path / "student.npz", tmp_path / "student_eta.npz"
    shutil.copy(ctx.student_npz, src)
    chain.with_student_eta(src, 0.5, dst)
    extra = load_checkpoint(dst).extra
    assert float(extra["student_sampler_config"]["eta"]) == 0.5
    assert extra["eta_source_sha256"] == file_sha256(src)
    written = dst.stat().st_mtime_ns
    time.sleep(0.01)
    chain.with_student_eta(src, 0.5, dst)
    assert dst.stat().st_mtime_ns == written  # same source: reused
    ckpt = load_checkpoint(src)
    retrained = jax.tree_util.tree_map(lambda a: a * 1.01, ckpt.params)
    save_checkpoint(src, dataclasses.replace(ckpt, params=retrained))
    chain.with_student_eta(src, 0.5, dst)
    got = load_checkpoint(dst)
    assert got.extra["eta_source_sha256"] == file_sha256(src)
    for a, b in zip(jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(retrained)):
        np.testing.assert_array_equal(a, b)
    # A complete forecast store counts as done for the checkpoint it was made with only.
    store = ctx.forecast_store("student")
    assert chain._store_complete(ctx, store, chain.forecast_npz(ctx, "student"))
    assert not chain._store_complete(ctx, store, src)


@pytest.mark.slow
def test_an_evaluation_is_done_only_for_the_stores_it_scored(fast_run):
    """The evaluation stages skip themselves only while the forecast and baseline stores are the
    ones they scored: a store re-made at the same path (another store id) makes them stale."""
    import json

    import zarr

    from gencast_rmmd.data import era5

    ctx = chain.Context.from_run(fast_run)
    meta = json.loads((ctx.eval_dir / "evaluation.json").read_text())
    student, teacher = ctx.forecast_store("student"), ctx.forecast_store("teacher")
    assert meta["forecast_store_id"] == era5.store_id(str(student)) is not None
    assert meta["baseline_store_id"] == era5.store_id(str(teacher)) is not None
    assert meta["forecast_store_id"] != meta["baseline_store_id"]
    assert meta["truth_store_id"] == era5.store_id(ctx.store)
    assert chain._evaluate_done(ctx)
    g = zarr.open_group(str(teacher), mode="r+")
    original = g.attrs[era5.STORE_ID_ATTR]
    try:
        g.attrs[era5.STORE_ID_ATTR] = "re-made"
        zarr.consolidate_metadata(str(teacher))
        assert not chain._evaluate_done(ctx)
    finally:
        g.attrs[era5.STORE_ID_ATTR] = original
        zarr.consolidate_metadata(str(teacher))
    assert chain._evaluate_done(ctx)


@pytest.mark.slow
def test_a_student_counts_as_distilled_only_from_the_current_teacher(fast_run, tmp_path):
    from gencast_rmmd.model.checkpoint import load_checkpoint, read_provenance, save_checkpoint
    from gencast_rmmd.safety import file_sha256

    ctx = chain.Context.from_run(fast_run)
    assert read_provenance(ctx.student_npz)["teacher_sha256"] == file_sha256(ctx.teacher_npz)
    assert chain._distilled(ctx, ctx.student_npz, ctx.mmd_student_npz)
    ckpt = load_checkpoint(ctx.student_npz)
    extra = dict(ckpt.extra)
    extra["provenance"] = dict(extra["provenance"], teacher_sha256="0" * 64)
    other = save_checkpoint(tmp_path / "other.npz", dataclasses.replace(ckpt, extra=extra))
    assert not chain._distilled(ctx, ctx.student_npz, other)
    assert not chain._distilled(ctx, tmp_path / "missing.npz")


@pytest.mark.slow
def test_the_teacher_is_done_only_for_the_current_statistics(
    fast_run, tmp_path, monkeypatch, capsys
):
    """The teacher stage skips itself while the teacher was trained with the statistics the run
    holds now and its forecast copy was made from it; other statistics at the same path re-run
    the stage, which refuses to continue the trained run and says which directory to delete."""
    import shutil

    from gencast_rmmd.data import stats as stats_lib
    from gencast_rmmd.errors import AlreadyReported
    from gencast_rmmd.model.checkpoint import load_checkpoint, read_provenance, save_checkpoint
    from gencast_rmmd.safety import file_sha256
    from gencast_rmmd.training import teacher as teacher_lib

    ctx = chain.Context.from_run(fast_run)
    digest = stats_lib.stats_sha256(ctx.stats_dir)
    assert read_provenance(ctx.teacher_npz)["stats_sha256"] == digest
    eval_prov = read_provenance(ctx.teacher_eval_npz)
    assert eval_prov["source_sha256"] == file_sha256(ctx.teacher_npz)
    assert chain._teacher_done(ctx)
    # A forecast copy made from other teacher bytes is stale.
    backup = shutil.copy2(ctx.teacher_eval_npz, tmp_path / "eval.npz")
    ckpt = load_checkpoint(ctx.teacher_eval_npz)
    extra = dict(ckpt.extra, provenance=dict(eval_prov, source_sha256="0" * 64))
    try:
        save_checkpoint(ctx.teacher_eval_npz, dataclasses.replace(ckpt, extra=extra))
        assert not chain._teacher_done(ctx)
    finally:
        os.replace(backup, ctx.teacher_eval_npz)
    assert chain._teacher_done(ctx)
    # Statistics with other bytes: the stage is not done, and the trained run is refused as is.
    monkeypatch.setattr(stats_lib, "stats_sha256", lambda d: "1" * 64)
    monkeypatch.setattr(teacher_lib, "stats_sha256", lambda d: "1" * 64)
    assert not chain._teacher_done(ctx)
    before = {p: p.stat().st_mtime_ns for p in ctx.teacher_run.rglob("*") if p.is_file()}
    with pytest.raises(AlreadyReported) as refused:  # the stage's one line said it
        chain._stage_teacher(ctx)
    assert refused.value.status == 2
    err = capsys.readouterr().err
    assert err.startswith("gencast-rmmd: error: quickstart stage 'teacher train': ")
    assert "other normalisation statistics" in err and f"delete {ctx.teacher_run}" in err
    assert {p: p.stat().st_mtime_ns for p in ctx.teacher_run.rglob("*") if p.is_file()} == before


def _copy_run(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of a finished run directory (a few MB) that a test may change."""
    import shutil

    return pathlib.Path(shutil.copytree(run, tmp_path / "run", symlinks=True))


def _rewrite_weights(path: pathlib.Path) -> None:
    """Rewrite a checkpoint in place with other weights (x 1.01), same provenance: what a re-run
    of the distill stage leaves."""
    import jax

    from gencast_rmmd.model.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    params = jax.tree_util.tree_map(lambda a: a * 1.01, ckpt.params)
    save_checkpoint(path, dataclasses.replace(ckpt, params=params))


@pytest.mark.slow
def test_tuning_and_speed_are_done_only_for_the_models_they_ran(fast_run, tmp_path):
    """tuning.json and speed.json record the checkpoints they ran (teacher and student as used),
    the statistics and the data store; a student rewritten since makes both stages run again,
    so the summary never pairs an old eta or speed with a new scorecard."""
    import shutil

    from gencast_rmmd.data import era5
    from gencast_rmmd.data.stats import stats_sha256
    from gencast_rmmd.safety import file_sha256

    run = _copy_run(fast_run, tmp_path)
    ctx = chain.Context.from_run(run)
    stage = {st.name: st for st in chain.STAGES}
    tune, speed = stage["tune eta on the validation window"], stage["speed"]
    assert tune.done(ctx) and speed.done(ctx)
    backup = shutil.copy2(ctx.student_npz, tmp_path / "student.npz")
    _rewrite_weights(ctx.student_npz)
    assert not tune.done(ctx) and not speed.done(ctx)
    os.replace(backup, ctx.student_npz)
    assert tune.done(ctx) and speed.done(ctx)
    tuning_json = run / "tuning" / "tuning.json"
    tuned = json.loads(tuning_json.read_text())["inputs"]
    timed = json.loads(ctx.speed_json.read_text())["inputs"]
    assert tuned["student_sha256"] == file_sha256(ctx.student_npz)
    assert timed["student_sha256"] == file_sha256(chain.forecast_npz(ctx, "student"))
    for record in (tuned, timed):
        assert record["teacher_sha256"] == file_sha256(ctx.teacher_eval_npz)
        assert record["stats_sha256"] == stats_sha256(ctx.stats_dir)
        assert record["data_store_id"] == era5.store_id(ctx.store)
    # A record from before the inputs were kept says nothing of them: the stage runs again.
    kept = {k: v for k, v in json.loads(tuning_json.read_text()).items() if k != "inputs"}
    tuning_json.write_text(json.dumps(kept))
    assert not tune.done(ctx)


@pytest.mark.slow
def test_stores_made_with_a_rewritten_student_are_made_again(fast_run, tmp_path, capsys):
    """The chain owns its forecast paths: a store made with a student since rewritten (held-out
    or validation window) is removed and forecast again, rather than refused with advice ("use a
    new path") the quickstart cannot take. An interrupted store of the current inputs is kept
    for the forecast to resume, and what is not a forecast store of the run is left alone."""
    import shutil

    import zarr

    from gencast_rmmd.data import era5
    from gencast_rmmd.forecast import store as store_lib

    run = _copy_run(fast_run, tmp_path)
    ctx = chain.Context.from_run(run)
    ctx.progress = False
    _rewrite_weights(ctx.student_npz)
    capsys.readouterr()
    chain._stage_tune(ctx)
    chain._stage_forecast(ctx, "student")
    out = capsys.readouterr().out
    stale = [ctx.forecast_store("student")]
    stale += [run / "tuning" / f"eta_{eta:g}" / "student.zarr" for eta in ctx.cfg.tune_eta]
    for store in stale:
        assert f"{store} holds a forecast made with another checkpoint" in out
    assert "teacher.zarr holds" not in out  # the teacher's stores are still current
    assert chain._forecast_done(ctx, "student")
    for eta in ctx.cfg.tune_eta:
        model = chain.with_student_eta(ctx.student_npz, eta, chain._eta_npz(ctx, "student", eta))
        assert chain._store_complete(ctx, run / "tuning" / f"eta_{eta:g}" / "student.zarr", model)
    # Interrupted, with the current inputs: kept (the forecast resumes its missing regions).
    store = ctx.forecast_store("student")
    made = era5.store_id(str(store))
    g = zarr.open_group(str(store), mode="r+")
    g.attrs[store_lib.STATUS_ATTR] = "incomplete"
    zarr.consolidate_metadata(str(store))
    chain._remove_stale_store(ctx, store, chain.forecast_npz(ctx, "student"))
    assert era5.store_id(str(store)) == made
    # Not a forecast store, or not inside the run directory: never removed.
    other = ctx.path("forecasts", "other.zarr")
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    chain._remove_stale_store(ctx, other, ctx.teacher_eval_npz)
    assert (other / "notes.txt").read_text() == "mine"
    outside = pathlib.Path(shutil.copytree(store, tmp_path / "outside.zarr"))
    chain._remove_stale_store(ctx, outside, ctx.teacher_eval_npz)
    assert era5.store_id(str(outside)) == made


@pytest.mark.slow
def test_the_statistics_are_done_only_for_the_data_store_they_were_computed_from(
    fast_run, monkeypatch
):
    from gencast_rmmd.data import era5

    ctx = chain.Context.from_run(fast_run)
    source = json.loads((ctx.stats_dir / chain.STATS_SOURCE).read_text())
    assert source == {"store": ctx.store, "data_store_id": era5.store_id(ctx.store)}
    assert chain._stats_done(ctx)
    monkeypatch.setattr(era5, "store_id", lambda path: "re-made")
    assert not chain._stats_done(ctx)


def test_a_profile_that_is_neither_a_name_nor_a_file_says_which(tmp_path):
    from gencast_rmmd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'fastt': expected one of .* found not a profile name"):
        chain.load_profile("fastt")
    missing = str(tmp_path / "mine.yaml")
    with pytest.raises(ConfigError, match=r"or a YAML path, found no such file$"):
        chain.load_profile(missing)


def test_tuning_settings_are_checked():
    fast = chain.load_profile("fast")
    with pytest.raises(ValueError, match="needs a validation window"):
        dataclasses.replace(fast, validation_days=0).validate()
    with pytest.raises(ValueError, match=r"in \[0, 1\], found \[1.5\]"):
        dataclasses.replace(fast, tune_eta=(0.0, 1.5)).validate()
    with pytest.raises(ValueError, match="repeated"):
        dataclasses.replace(fast, tune_eta=(0.5, 0.5)).validate()
    with pytest.raises(ValueError, match="tune_by: expected one of mean_crps, win_rate"):
        dataclasses.replace(fast, tune_by="rmse").validate()
    # The headline profile tunes on its own validation window, as long as the held-out one.
    result = chain.load_profile("result")
    assert result.tune_eta and result.validation_days == result.eval_days


def test_time_in_rounds_alternates_and_reports_minima():
    """Every call sees the same background load: the calls run in turn, round by round."""
    order = []

    def call(name):
        def run(r):
            order.append((name, r))
            time.sleep(0.005 if name == "a" else 0.05)  # apart by more than a loaded wake-up
            return np.zeros(1)

        return run

    timed = chain.time_in_rounds({"a": call("a"), "b": call("b")}, 3)
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    for t in timed.values():
        assert t["seconds"] <= t["median_seconds"] and t["cpu_seconds"] <= t["median_cpu_seconds"]
        assert len(t["round_seconds"]) == 3 and min(t["round_seconds"]) == t["seconds"]
    assert 0.005 <= timed["a"]["seconds"] < timed["b"]["seconds"]


def test_summary_prints_the_speedup_unrounded(tmp_path, capsys):
    """The speed-up has two decimals and the medians' ratio beside it (three significant digits
    printed a 6.997x run as "7x")."""
    summary = {
        "teacher_nfe": 59,
        "student_nfe": 8,
        "teacher_step_seconds": 3.3125,
        "student_step_seconds": 0.47339,
        "speedup": 6.9975,
        "speedup_median": 6.9297,
        "win_rate": 0.98056,
        "entries": 360,
        "mean_crps_change_percent": 5.3013,
        "spread_skill_teacher": 1.382,
        "spread_skill_student": 1.145,
    }
    chain.print_summary(summary, tmp_path)
    out = capsys.readouterr().out
    assert "teacher 3.31 s, student 0.473 s -> 7.00x faster (medians 6.93x)" in out
    summary["speedup_one_member"] = 7.2912
    chain.print_summary(summary, tmp_path)
    assert "(medians 6.93x; one member per call 7.29x)" in capsys.readouterr().out
    summary["speedup_paired"] = 7.0412
    chain.print_summary(summary, tmp_path)
    out = capsys.readouterr().out
    assert "(medians 6.93x; paired by round 7.04x; one member per call 7.29x)" in out
    assert "98.1% of 360 scorecard entries" in out and "+5.30%" in out


@pytest.mark.slow
def test_packed_run_is_timed_by_speed_benchmark(fast_run, tmp_path):
    # What the GPU check does: pack a run's timed models (with a one-time-step copy of its store
    # for the grid) and time them by path with benchmarks/speed.py.
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHON": sys.executable, "DEVRUN": str(tmp_path / "pack")}
    subprocess.run(
        ["bash", "tools/device_check.sh", "pack", str(fast_run)], cwd=root, env=env, check=True
    )
    pack = tmp_path / "pack"
    ctx = chain.Context.from_run(fast_run)
    assert (pack / "teacher.npz").read_bytes() == ctx.teacher_eval_npz.read_bytes()
    assert (pack / "student.npz").read_bytes() == chain.forecast_npz(ctx, "student").read_bytes()
    with chain._open_zarr(str(pack / "grid.zarr")) as g, chain._open_zarr(ctx.store) as full:
        assert g.sizes["time"] == 1
        np.testing.assert_array_equal(g["lat"].values, full["lat"].values)
        np.testing.assert_array_equal(g["lon"].values, full["lon"].values)
    speed = [sys.executable, "benchmarks/speed.py", "--members", "2", "--repeats", "2"]
    models = ["--teacher", str(pack / "teacher.npz"), "--student", str(pack / "student.npz")]
    data = ["--stats", str(pack / "stats"), "--data", str(pack / "grid.zarr")]
    res = subprocess.run(
        speed + models + data + ["--one-member"], cwd=root, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    summary = json.loads((fast_run / "summary.json").read_text())
    assert (out["teacher_nfe"], out["student_nfe"]) == (59, summary["student_nfe"])
    assert out["teacher_nfe"] == summary["teacher_nfe"] and out["members"] == 2
    assert out["teacher_step_seconds"] > 0 and out["student_step_seconds"] > 0
    assert out["wall_clock_speedup"] == out["teacher_step_seconds"] / out["student_step_seconds"]
    assert out["one_member"]["nfe_ratio"] == out["nfe_ratio"]
    # The four paths go together.
    res = subprocess.run(speed + models, cwd=root, capture_output=True, text=True)
    assert res.returncode != 0 and "go together" in res.stderr


@pytest.mark.slow
def test_rerun_skips_completed_stages(fast_run, capsys):
    capsys.readouterr()
    rc = main(["quickstart", "--fast", "--no-progress", "--out", str(fast_run)])
    assert rc == 0
    out = capsys.readouterr().out
    for stage in ("stats", "teacher", "distill", "forecast teacher", "evaluate", "speed"):
        assert f"{stage}: already complete, skipped" in out
    # a stage the profile leaves out says so, and names the setting
    assert "distill offline ablation: not in this profile (ablation_offline: false)" in out
    assert "distill offline ablation: already complete" not in out


def test_profiles_load_and_validate():
    for name in chain.PROFILES:
        cfg = chain.load_profile(name)
        assert cfg.eval_members >= 2
    result = chain.load_profile("result")
    # The headline profile must be statistically meaningful (issue: >= 16 inits, 8 members, 5 days).
    assert result.eval_init_times >= 16 and result.eval_members >= 8
    assert result.eval_lead_steps * 12 >= 120


def test_other_settings_in_out_dir_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "quickstart.yaml").write_text("seed: 99\n")
    rc = main(["quickstart", "--fast", "--out", str(out)])
    assert rc == 2
    assert "other settings" in capsys.readouterr().err


def _same_results(marker_text, text):
    """The run chain's rule: two marker dumps differ only in timing-only keys."""
    return chain._timing_only(chain._changed_settings(marker_text, text))


def test_changed_speed_repeats_keeps_results_and_retimes(tmp_path):
    # A marker that differs only in the number of timing rounds is not "other settings".
    cfg = chain.load_profile("fast")
    marker = chain.dump_yaml(cfg)
    retimed = chain.dump_yaml(dataclasses.replace(cfg, speed_repeats=cfg.speed_repeats + 4))
    assert marker != retimed
    assert _same_results(marker, retimed)
    # So is one that adds or drops the one-member timing, or predates that setting.
    no_single = dataclasses.replace(cfg, speed_one_member=not cfg.speed_one_member)
    assert _same_results(marker, chain.dump_yaml(no_single))
    older = "\n".join(
        line for line in marker.splitlines() if not line.startswith("speed_one_member")
    )
    assert older != marker and _same_results(older, marker)
    assert not _same_results(marker, chain.dump_yaml(dataclasses.replace(cfg, seed=99)))
    # A run made before the validation window existed had none: the same as validation_days 0.
    untuned = chain.dump_yaml(dataclasses.replace(cfg, validation_days=0, tune_eta=()))
    before = "\n".join(
        line
        for line in untuned.splitlines()
        if not line.startswith(("validation_days", "tune_eta", "tune_by"))
    )
    assert _same_results(before, untuned)
    assert not _same_results(before, marker)
    assert not _same_results(marker, "seed: [unclosed\n")


def _no_stages(monkeypatch) -> None:
    """`run_chain` with its run-directory checks only: one stage, writing an empty summary."""
    summary = chain.Stage(
        "summary", lambda c: c.path("summary.json").write_text("{}"), lambda c: False
    )
    monkeypatch.setattr(chain, "STAGES", (summary,))
    monkeypatch.setattr(chain, "_check_data_store", lambda ctx: None)  # --data is named only


def test_speed_is_measured_again_only_when_a_timing_setting_changed(tmp_path, monkeypatch):
    cfg = dataclasses.replace(chain.load_profile("fast"), speed_one_member=False)  # the default
    _no_stages(monkeypatch)
    marker = tmp_path / "quickstart.yaml"
    # A marker from before speed_one_member existed: the run used its default, as now.
    marker.write_text(
        "\n".join(
            line
            for line in chain.dump_yaml(cfg).splitlines()
            if not line.startswith("speed_one_member")
        )
    )
    ctx = chain.Context(out=tmp_path, cfg=cfg, progress=False)
    ctx.speed_json.write_text("{}")
    chain.run_chain(ctx)
    assert ctx.speed_json.exists()
    # Another number of timing rounds: the speed stage measures again, the rest is kept.
    retimed = dataclasses.replace(cfg, speed_repeats=cfg.speed_repeats + 1)
    chain.run_chain(chain.Context(out=tmp_path, cfg=retimed, progress=False))
    assert not ctx.speed_json.exists()


def test_a_run_on_other_data_or_another_task_is_refused(tmp_path, monkeypatch):
    """The marker records the run's --data and its data config's task: a directory made on the
    embedded nature run is not reused for another store or other pressure levels."""
    import yaml

    from gencast_rmmd.data.config import load_data_config
    from gencast_rmmd.errors import OutputError

    cfg = chain.load_profile("fast")
    out = tmp_path / "run"
    _no_stages(monkeypatch)
    chain.run_chain(chain.Context(out=out, cfg=cfg, progress=False))
    marker = (out / "quickstart.yaml").read_text()
    base = load_data_config("embedded")
    other = dataclasses.replace(base, task=dataclasses.replace(base.task, pressure_levels=(500,)))
    (tmp_path / "other_levels.yaml").write_text(chain.dump_yaml(other))
    (tmp_path / "embedded.yaml").write_text(chain.dump_yaml(base))
    store = str(tmp_path / "era5.zarr")
    for data_config, want in (
        ("other_levels.yaml", "another task in its data config"),
        ("embedded.yaml", f"another --data (the embedded nature run, now {store!r})"),
    ):
        ctx = chain.Context(
            out=out, cfg=cfg, data_store=store, data_config_path=str(tmp_path / data_config)
        )
        with pytest.raises(OutputError) as e:
            chain.run_chain(ctx)
        assert str(e.value).startswith(f"{out} holds a quickstart run made from ")
        assert want in str(e.value) and str(e.value).endswith(f"or delete {out}")
    assert (out / "quickstart.yaml").read_text() == marker
    recorded = yaml.safe_load(marker)
    assert recorded["data"] == "embedded" and len(recorded["task_sha256"]) == 64
    assert chain.Context.from_run(out).cfg == cfg  # the data keys are not profile settings
    # An embedded run's marker from before the data keys were recorded takes the current ones.
    (out / "quickstart.yaml").write_text(chain.dump_yaml(cfg))
    chain.run_chain(chain.Context(out=out, cfg=cfg, progress=False))
    assert (out / "quickstart.yaml").read_text() == marker


def test_an_out_that_cannot_be_a_directory_is_refused(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    cases = [
        (afile, f"--out '{afile}' exists and is not a directory"),
        (afile / "run", f"--out '{afile / 'run'}': '{afile}' is a file; choose a directory"),
    ]
    if pathlib.Path("/proc/self").is_dir():  # Linux: no directory can be made in /proc
        cases.append(("/proc/x", "--out '/proc/x': cannot create a directory in '/proc' ("))
    for out, want in cases:
        rc = main(["quickstart", "--fast", "--no-progress", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and want in err and err.count("\n") == 1, err
    assert afile.read_text() == "x"


def test_nature_run_days_applies_to_the_embedded_run_only(tmp_path, capsys):
    """A profile for a year-long --data store need not fit the embedded nature run's length,
    which is ignored there; on the embedded run the windows must fit, checked before anything
    is made."""
    profile = tmp_path / "era5.yaml"
    profile.write_text(
        "data_config: gencast_1p0deg\neval_days: 365\nvalidation_days: 365\ntune_eta: [0.0, 0.5]\n"
    )
    cfg = chain.load_profile(str(profile))
    assert cfg.eval_days + cfg.validation_days >= cfg.nature_run_days
    ctx = chain.Context(out=tmp_path, cfg=cfg, data_store="era5.zarr", data_config_path="x")
    chain._check_nature_run_length(ctx)
    out = tmp_path / "run"
    rc = main(["quickstart", "--profile", str(profile), "--no-progress", "--out", str(out)])
    assert rc == 2
    assert "eval_days + validation_days (365 + 365) must be shorter than nature_run_days (730)" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_a_nature_run_too_long_for_memory_names_the_profiles_key(tmp_path, capsys, monkeypatch):
    """The quickstart's cache build refused for memory says which setting gives fewer days:
    the profile's `nature_run_days`, not `data nature-run`'s `--days` flag."""
    monkeypatch.setenv("GENCAST_RMMD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("gencast_rmmd.runtime.available_memory", lambda: 2**20)
    rc = main(["quickstart", "--fast", "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "more than the 1.0 MiB available here" in err
    assert "set a smaller nature_run_days (--set nature_run_days=N)" in err and "--days" not in err
    assert not any((tmp_path / "cache").glob("nature_run-*.zarr"))


def test_bad_stage_settings_or_data_are_refused_before_anything_is_made(tmp_path, capsys):
    """A bad key or value in the profile's model/distill overrides (or a --data that is no store)
    is refused before the first stage and before --out is made: it was refused only when its
    stage came (the distill overrides after the nature run, the statistics and the teacher's
    training), and a refused --data left --out/quickstart.yaml behind."""
    from gencast_rmmd.config import resolve_config_path

    g1e = tmp_path / "gencast_task_embedded.yaml"
    text = resolve_config_path("gencast_1p0deg", "data").read_text()
    g1e.write_text(re.sub(r"(?m)^source: .*$", "source: embedded", text))
    cases = [
        (["--set", "model_overrides=[nope=1]"], r"unknown key 'nope' in ModelConfig"),
        (["--set", "model_overrides=[training.batch_size=0]"], r"batch_size: must be >= 1"),
        (
            ["--set", "distill_overrides=[mmd.loop.num_stepz=3]"],
            r"unknown key 'mmd.loop.num_stepz'",
        ),
        (["--set", "distill_overrides=[rmmd.loop.batch_size=0]"], r"batch_size: must be >= 1"),
        (["--data", str(tmp_path / "nope.zarr"), "--data-config", "embedded"], r"does not exist"),
        (["--data", str(tmp_path), "--data-config", "embedded"], r"is a directory but not a Zarr"),
        (
            ["--data", str(tmp_path / "*.nc"), "--data-config", "embedded"],
            r"is a pattern of files; the quickstart trains on a canonical Zarr store: "
            r"`gencast-rmmd data prepare --source",
        ),
        # Without --data: a data config the nature run cannot feed (was: minutes of nature run and
        # statistics, then the teacher stage's "stats ... have no entry for ...")
        (
            ["--set", "data_config=gencast_1p0deg"],
            r"reads 'gs://\S+', and without --data the quickstart runs on the embedded nature run "
            r"only: prepare its store with `gencast-rmmd data prepare --config gencast_1p0deg",
        ),
        (
            ["--set", f"data_config={g1e}"],
            r"the embedded nature run has no sea_surface_temperature, specific_humidity, "
            r"total_precipitation_12hr, vertical_velocity",
        ),
    ]
    out = tmp_path / "run"
    for extra, want in cases:
        rc = main(["quickstart", "--fast", "--no-progress", "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and re.search(want, err) and err.count("\n") == 1, (extra, err)
        assert not out.exists(), extra


def test_a_data_store_without_the_tasks_variables_is_refused_before_anything_is_made(
    tmp_path, capsys
):
    """--data lacking variables and levels of --data-config's task: every such problem listed
    before the first stage (was: the data and statistics stages ran, hours on an ERA5 store, then
    the teacher stage failed on the statistics); a gappy time axis alone is not refused here."""
    import xarray as xr

    lat = -90 + (np.arange(4) + 0.5) * 45.0
    times = np.array(["2000-01-01T00", "2000-01-01T12", "2000-01-02T12"], "datetime64[ns]")
    small = tmp_path / "small.zarr"
    xr.Dataset(
        {"temperature": (("time", "level", "lat", "lon"), np.zeros((3, 1, 4, 8), np.float32))},
        coords={"time": times, "level": [500], "lat": lat, "lon": np.arange(8) * 45.0},
    ).to_zarr(small, zarr_format=2, consolidated=True)
    out = tmp_path / "run"
    argv = ["quickstart", "--fast", "--no-progress", "--out", str(out)]
    assert main([*argv, "--data", str(small), "--data-config", "embedded"]) == 2
    err = capsys.readouterr().err
    assert "does not match the task" in err and "Traceback" not in err
    assert "[missing-variable] expected variable 'geopotential'" in err
    assert "[missing-level] expected pressure level 850 hPa, found levels [500]" in err
    assert "time-gaps" not in err
    assert not out.exists()


def test_data_without_config_is_refused(tmp_path, capsys):
    rc = main(["quickstart", "--out", str(tmp_path / "x"), "--data", str(tmp_path)])
    assert rc == 2
    assert "--data and --data-config go together" in capsys.readouterr().err


def test_context_from_run_reads_settings_and_store(tmp_path):
    # Tools (benchmarks/speed.py) reopen a run directory through its saved settings.
    from gencast_rmmd.errors import OutputError

    with pytest.raises(OutputError, match="not a quickstart run"):
        chain.Context.from_run(tmp_path)
    cfg = dataclasses.replace(chain.load_profile("fast"), rmmd_steps=0)
    (tmp_path / "quickstart.yaml").write_text(chain.dump_yaml(cfg))
    (tmp_path / "store.json").write_text(json.dumps({"store": "/data/era5.zarr"}))
    ctx = chain.Context.from_run(tmp_path)
    assert ctx.cfg == cfg and ctx.store == "/data/era5.zarr"
    # Without phase 2 the final student is phase 1's.
    assert ctx.student_npz == tmp_path / "distill" / "mmd" / "student.npz"
    assert ctx.teacher_eval_npz.name == f"teacher_{cfg.teacher_sampler_levels}levels.npz"
    # Stages the profile leaves out, with the setting that does it.
    off = {st.name: st.off(ctx) for st in chain.STAGES}
    assert off["forecast mmd-only student"] == "rmmd_steps: 0, so the student is phase 1's"
    assert off["distill offline ablation"] == "ablation_offline: false"
    assert off["stats"] is None and off["forecast student"] is None
    with_offline = dataclasses.replace(cfg, ablation_offline=True)
    (tmp_path / "quickstart.yaml").write_text(chain.dump_yaml(with_offline))
    ctx = chain.Context.from_run(tmp_path)
    offline = next(st for st in chain.STAGES if st.name == "distill offline ablation")
    assert offline.off(ctx) == "rmmd_steps: 0, so the student is phase 1's"


def test_a_stage_that_stops_or_fails_is_one_line_naming_the_stage(tmp_path, capsys, monkeypatch):
    """A stage's trainer stopped on SIGTERM (status 143, its checkpoint saved) stops the whole
    quickstart with status 143, not as a failed stage (status 2); a stage that fails ends the
    quickstart with its status. Either way the stage's own line, naming the stage, is the only
    line: before, the quickstart added "stage ... failed; see the message above"."""
    import signal

    from gencast_rmmd import cli
    from gencast_rmmd.cli import quickstart_chain
    from gencast_rmmd.errors import AlreadyReported, StoppedBySignal

    def stopped(args):
        raise StoppedBySignal(signal.SIGTERM, "teacher: stopped by SIGTERM after step 7 of 24")

    missing = tmp_path / "missing.yaml"
    nested = ["teacher", "train", "--config", str(missing), "--data", str(tmp_path / "d.zarr")]
    nested += ["--stats", str(tmp_path / "stats"), "--out", str(tmp_path / "t")]
    with mock.patch.object(cli, "_run_command", side_effect=stopped):
        with pytest.raises(AlreadyReported) as e:
            quickstart_chain._run_cli(cli.main, nested, "teacher train")
    assert e.value.status == 128 + signal.SIGTERM
    assert capsys.readouterr().err == (
        "gencast-rmmd: quickstart stage 'teacher train': teacher: stopped by SIGTERM after "
        "step 7 of 24\n"
    )
    # the whole path: the quickstart's own `main` runs a real nested command that fails
    real = cli._run_command

    def quickstart(args):
        monkeypatch.setattr(cli, "_run_command", real)  # the nested command runs for real
        quickstart_chain._run_cli(cli.main, nested, "teacher train")

    monkeypatch.setattr(cli, "_run_command", quickstart)
    assert cli.main(["quickstart", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"gencast-rmmd: error: quickstart stage 'teacher train': config file '{missing}' not "
        "found (looked for it as a path and in configs/model/)"
    ]
    assert not (tmp_path / "t").exists()
    quickstart_chain._run_cli(lambda args: 0, [], "teacher train")  # success: nothing raised
