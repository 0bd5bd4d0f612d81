"""Crash tests: kill -9 trainers and pipelines at random points (fixed seeds), resume or re-run,
and compare with an uninterrupted run.

Each trainer test runs one uninterrupted reference run and one chain of runs in another directory
in which every run but the last is SIGKILLed at a point drawn with `numpy.random.default_rng(seed)`:
during start-up (imports, compilation), while orbax writes a checkpoint, or a random number of
steps after the last checkpoint (mid-step or mid-metrics-write). The last run resumes to the end.
The final parameters must equal the reference's exactly (same bits), and so must the logged loss
of every step; a run directory never holds an exported model before the run has finished.
"""

from __future__ import annotations

import os
import pathlib
import time

import numpy as np
import pytest
from reliability_helpers import (
    CLI_SCRIPT,
    Kill,
    checkpoint_steps,
    command_available,
    crash_env,
    has_tmp_entry,
    last_metric_step,
    run_to_completion,
    run_until_killed,
    tiny_workspace,
)
from reliability_table import FAULTS

# The kinds of kill of a chain, in order; the seed of trial i is SEED + i.
KILL_KINDS = ("startup", "during_save", "at_step", "at_step", "during_save")
SEED = 1000


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("crash_ws"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return crash_env(tmp_path_factory.mktemp("xla_cache"), tmp_path_factory.mktemp("child_tmp"))


def _fault(fid: str):
    return next(f for f in FAULTS if f.id == fid)


def _timed(progress, target: int, delay: float):
    """A kill trigger: `delay` s after `progress()` (steps logged, regions written) first reaches
    `target`, or as soon as it passes it. The cut-off keeps a fast trainer (a few ms a step) from
    running on past the moment a kill aims at: a fixed delay alone let one run 36 steps in its
    "start-up" and finish the chain early. One read of the progress per poll."""
    since: list[float] = []

    def trigger() -> bool:
        done = progress()
        if done > target:
            return True
        if not since and done >= target:
            since.append(time.monotonic())
        return bool(since) and time.monotonic() - since[0] >= delay

    return trigger


def make_kill(kind: str, run_dir: pathlib.Path, rng: np.random.Generator, every: int) -> Kill:
    """A kill of `kind` for a trainer writing `run_dir/checkpoints` and `run_dir/metrics.jsonl`."""
    import os

    ckpt = run_dir / "checkpoints"
    metrics = run_dir / "metrics.jsonl"
    base = max(checkpoint_steps(ckpt), default=0)
    logged = lambda: last_metric_step(metrics)  # noqa: E731
    if kind == "startup":  # 0.5-3 s in, or when it logs its first step, whichever comes first
        first = max(base, logged())
        return Kill(kind, _timed(logged, first, float(rng.uniform(0.5, 3.0))))
    if kind == "during_save":
        stale = set(os.listdir(ckpt)) if ckpt.exists() else set()

        def saving() -> bool:
            names = set(os.listdir(ckpt)) if ckpt.exists() else set()
            fresh = names - stale
            return any("tmp" in n for n in fresh) or max(checkpoint_steps(ckpt), default=0) > base

        return Kill(kind, saving, poll=0.0005)
    if kind == "at_step":
        # Records after `base` may remain from the killed run until the resumed one trims them.
        target = max(base, logged()) + int(rng.integers(1, every + 1))
        return Kill(f"at_step {target}", _timed(logged, target, float(rng.uniform(0.0, 0.2))))
    if kind == "past_checkpoint":  # a new checkpoint completes, then 1..every more steps run
        k = int(rng.integers(1, every + 1))

        def past() -> bool:
            new = max(checkpoint_steps(ckpt), default=0)
            return new > base and last_metric_step(metrics) >= new + k

        return Kill(f"{k} steps past a new checkpoint", past)
    raise ValueError(kind)


def kill_chain(
    cmd, run_dir: pathlib.Path, env, every: int, finished_marker: pathlib.Path, kinds=KILL_KINDS
):
    """Also checks that no half-written checkpoint directory is left at the end.

    Run `cmd` len(KILL_KINDS) times with kills, then once to the end. Returns the kill log."""
    log = []
    for i, kind in enumerate(kinds):
        rng = np.random.default_rng(SEED + i)
        kill = make_kill(kind, run_dir, rng, every)
        saving = has_tmp_entry(run_dir / "checkpoints")
        outcome = run_until_killed(cmd, env, kill)
        name = kill.name + (
            " (orbax tmp dir present)"
            if has_tmp_entry(run_dir / "checkpoints") and not saving
            else ""
        )
        log.append((name, outcome, max(checkpoint_steps(run_dir / "checkpoints"), default=0)))
        print("kill", i, log[-1])
        if outcome == "killed":
            assert not finished_marker.exists(), (
                f"{finished_marker.name} exists after a kill: an interrupted run looks finished"
            )
    run_to_completion(cmd, env)
    left = [n for n in os.listdir(run_dir / "checkpoints") if not n.isdigit()]
    assert not left, f"half-written checkpoints left behind after resuming: {left}"
    return log


def _losses(run_dir: pathlib.Path) -> dict[int, float]:
    import json

    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[int(rec["step"])] = rec["loss"]
    return out


def _assert_same_params(a: pathlib.Path, b: pathlib.Path) -> int:
    from gencast_rmmd.model.checkpoint import load_checkpoint

    pa, pb = load_checkpoint(a).params, load_checkpoint(b).params
    assert pa.keys() == pb.keys()
    n = 0
    for m in pa:
        assert pa[m].keys() == pb[m].keys()
        for k in pa[m]:
            np.testing.assert_array_equal(pa[m][k], pb[m][k], err_msg=f"{m}:{k}")
            n += 1
    return n


TEACHER_STEPS, TEACHER_EVERY = 24, 3


def _teacher_cmd(w: dict, out: pathlib.Path) -> list[str]:
    """`gencast-rmmd teacher train` on the tiny workspace `w` into `out` (24 steps, a
    checkpoint every 3, every step logged)."""
    return [
        str(CLI_SCRIPT), "teacher", "train", "--config", str(w["model"]), "--data",
        str(w["store"]), "--stats", str(w["stats"]), "--task", str(w["task"]), "--out", str(out),
        "--steps", str(TEACHER_STEPS), "--batch-size", "2", "--no-progress",
        "--set", f"training.checkpoint_every={TEACHER_EVERY}", "--set", "training.log_every=1",
        "--set", "training.keep_checkpoints=2",
    ]  # fmt: skip


@pytest.mark.slow
def test_teacher_kill9_resume(tmp_path, workspace, env):
    if not command_available("teacher", "train"):
        pytest.skip("`gencast-rmmd teacher train` is not built yet (placeholder)")
    assert _fault("teacher-kill9").trials == len(KILL_KINDS)

    def cmd(out):
        return _teacher_cmd(workspace, out)

    ref, run = tmp_path / "reference", tmp_path / "crashed"
    run_to_completion(cmd(ref), env)
    log = kill_chain(cmd(run), run, env, TEACHER_EVERY, run / "teacher.npz")
    assert [o for _, o, _ in log] == ["killed"] * len(KILL_KINDS), log
    assert _assert_same_params(run / "teacher.npz", ref / "teacher.npz") > 0
    lr, lc = _losses(ref), _losses(run)
    assert sorted(lc) == list(range(1, TEACHER_STEPS + 1)), "metrics.jsonl has gaps or repeats"
    assert lc == lr, "the logged losses of the resumed run differ from the uninterrupted run"


FAULT_TESTS = {"teacher-kill9": test_teacher_kill9_resume}


def sigterm_at(cmd, env, metrics: pathlib.Path, target: int, total: int, checkpoints):
    """Run `cmd` (a trainer logging every step to `metrics`) and send it SIGTERM once step
    `target` is logged: it must finish its step, save a checkpoint there, say so and exit with
    status 143. Returns the step it stopped after."""
    import re
    import signal
    import subprocess

    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    t0 = time.monotonic()
    while last_metric_step(metrics) < target and proc.poll() is None:
        assert time.monotonic() - t0 < 600
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM received: stopping after this step with a checkpoint" in err
    found = re.search(
        rf"stopped by SIGTERM after step (\d+) of {total}; checkpoint (\S+) saved", err
    )
    assert found, err[-3000:]
    step = int(found.group(1))
    assert step >= target and pathlib.Path(found.group(2)) == checkpoints / str(step)
    assert max(checkpoint_steps(checkpoints)) == step
    return step


@pytest.mark.slow
def test_teacher_sigterm_resume(tmp_path, workspace, env):
    """SIGTERM (a preempted VM's notice, a batch system's time limit) to `teacher train` at a
    step between two checkpoints, twice: each time it finishes the step, saves a checkpoint
    there, says so and exits with status 143; the resumed run ends with an uninterrupted run's
    parameters and losses."""
    fault = _fault("teacher-sigterm")
    ref, run = tmp_path / "reference", tmp_path / "stopped"
    run_to_completion(_teacher_cmd(workspace, ref), env)
    stopped_at = []
    for i in range(fault.trials):
        rng = np.random.default_rng(SEED + 50 + i)
        target = max(stopped_at, default=0) + int(rng.integers(1, 2 * TEACHER_EVERY))
        cmd = _teacher_cmd(workspace, run)
        stopped_at.append(
            sigterm_at(cmd, env, run / "metrics.jsonl", target, TEACHER_STEPS, run / "checkpoints")
        )
        assert not (run / "teacher.npz").exists()
    assert any(s % TEACHER_EVERY for s in stopped_at), stopped_at  # saved between checkpoints
    run_to_completion(_teacher_cmd(workspace, run), env)
    assert _assert_same_params(run / "teacher.npz", ref / "teacher.npz") > 0
    assert _losses(run) == _losses(ref)


FAULT_TESTS["teacher-sigterm"] = test_teacher_sigterm_resume


@pytest.mark.slow
def test_distill_kill9_resume(tmp_path, env):
    """The distiller (`distill.trainer.run_phase`, RMMD phase-2 settings, alternating aux/student
    rules, frozen teacher and student copies) killed 5 times, resumed: same final params."""
    import sys

    import reliability_distill_worker as worker

    assert _fault("distill-kill9").trials == len(KILL_KINDS)
    script = pathlib.Path(worker.__file__)

    def cmd(run):
        return [sys.executable, str(script), str(run), str(run / "final.npz")]

    ref, run = tmp_path / "reference", tmp_path / "crashed"
    ref.mkdir()
    run.mkdir()
    run_to_completion(cmd(ref), env)
    log = kill_chain(cmd(run), run, env, worker.EVERY, run / "final.npz")
    assert [o for _, o, _ in log] == ["killed"] * len(KILL_KINDS), log
    with (
        np.load(ref / "final.npz", allow_pickle=False) as a,
        np.load(run / "final.npz", allow_pickle=False) as b,
    ):
        assert sorted(a.files) == sorted(b.files) and len(a.files) == 8
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert not np.array_equal(a["student/w1"], worker.teacher_params()["w1"])
    lr, lc = _losses(ref), _losses(run)
    assert sorted(lc) == list(range(1, worker.NUM_STEPS + 1))
    assert lc == lr


DISTILL_CLI_KILLS = ("past_checkpoint", "during_save")


DISTILL_CLI_STEPS, DISTILL_CLI_EVERY = 12, 3


def _distill_cli(w: dict, tmp_path: pathlib.Path):
    """A tiny teacher for the workspace `w`'s grid, and `cmd(out)`: `gencast-rmmd distill
    --phase mmd` from it into `out` (12 steps, a checkpoint every 3, every step logged)."""
    import xarray as xr
    from reliability_helpers import tiny_checkpoint

    from gencast_rmmd.model.checkpoint import save_checkpoint

    ds = xr.open_zarr(w["store"])
    teacher = save_checkpoint(
        tmp_path / "teacher.npz", tiny_checkpoint(ds["lat"].values, ds["lon"].values)
    )

    def cmd(out):
        return [
            str(CLI_SCRIPT), "distill", "--config", "tiny", "--teacher", str(teacher), "--data",
            str(w["store"]), "--stats", str(w["stats"]), "--out", str(out), "--phase", "mmd",
            "--no-progress", "--set", f"mmd.loop.num_steps={DISTILL_CLI_STEPS}", "--set",
            f"mmd.loop.checkpoint_every={DISTILL_CLI_EVERY}", "--set", "mmd.loop.log_every=1",
            "--set", "mmd.loop.batch_size=2", "--set", "student_sampler.num_steps=2",
        ]  # fmt: skip

    return cmd


@pytest.mark.slow
def test_distill_cli_kill9_resume(tmp_path, workspace, env):
    """`gencast-rmmd distill` (GenCast objective on the tiny teacher, phase 1) killed twice and
    resumed: the exported student equals an uninterrupted run's."""
    if not command_available("distill"):
        pytest.skip("`gencast-rmmd distill` is not built yet (placeholder)")
    assert _fault("distill-cli-kill9").trials == len(DISTILL_CLI_KILLS)
    cmd = _distill_cli(workspace, tmp_path)
    ref, run = tmp_path / "reference", tmp_path / "crashed"
    run_to_completion(cmd(ref), env)
    log = kill_chain(
        cmd(run), run / "mmd", env, DISTILL_CLI_EVERY, run / "mmd" / "student.npz",
        DISTILL_CLI_KILLS,
    )  # fmt: skip
    assert [o for _, o, _ in log] == ["killed"] * len(DISTILL_CLI_KILLS), log
    assert _assert_same_params(run / "mmd" / "student.npz", ref / "mmd" / "student.npz") > 0
    assert _losses(run / "mmd") == _losses(ref / "mmd")


@pytest.mark.slow
def test_distill_cli_sigterm_resume(tmp_path, workspace, env):
    """SIGTERM to `gencast-rmmd distill` at a step between two checkpoints: the phase finishes
    its step, saves a checkpoint there, says so and exits with status 143 without exporting a
    student; the re-run resumes there and exports an uninterrupted run's student."""
    fault = _fault("distill-cli-sigterm")
    cmd = _distill_cli(workspace, tmp_path)
    ref, run = tmp_path / "reference", tmp_path / "stopped"
    run_to_completion(cmd(ref), env)
    stopped_at = []
    for i in range(fault.trials):
        rng = np.random.default_rng(SEED + 70 + i)
        target = max(stopped_at, default=0) + int(rng.integers(1, 2 * DISTILL_CLI_EVERY - 1))
        stopped_at.append(
            sigterm_at(cmd(run), env, run / "mmd" / "metrics.jsonl", target, DISTILL_CLI_STEPS,
                       run / "mmd" / "checkpoints")
        )  # fmt: skip
        assert not (run / "mmd" / "student.npz").exists()
    run_to_completion(cmd(run), env)
    assert _assert_same_params(run / "mmd" / "student.npz", ref / "mmd" / "student.npz") > 0
    assert _losses(run / "mmd") == _losses(ref / "mmd")


FAULT_TESTS["distill-cli-sigterm"] = test_distill_cli_sigterm_resume


# ------------------------------------------------------------------------------------------------
# Pipelines: kill mid-way, check the interrupted output is never reported complete, re-run, compare.


def _assert_same_dataset(a, b, skip_attrs=()):
    import xarray as xr

    da, db = xr.open_zarr(a, chunks=None), xr.open_zarr(b, chunks=None)
    assert sorted(da.data_vars) == sorted(db.data_vars)
    for v in da.data_vars:
        np.testing.assert_array_equal(da[v].values, db[v].values, err_msg=v)
    for c in da.coords:
        np.testing.assert_array_equal(da[c].values, db[c].values, err_msg=c)
    ka = {k: v for k, v in da.attrs.items() if k not in skip_attrs}
    kb = {k: v for k, v in db.attrs.items() if k not in skip_attrs}
    assert ka == kb


def _done_count(store: pathlib.Path) -> int:
    import zarr

    try:
        return int(np.asarray(zarr.open_group(str(store), mode="r")["region_done"][...]).sum())
    except Exception:  # not created yet, or being created
        return -1


FORECAST_KILLS = ("startup", "regions", "regions")


@pytest.mark.slow
def test_forecast_kill9_rerun(tmp_path, workspace, env):
    if not command_available("forecast"):
        pytest.skip("`gencast-rmmd forecast` is not built yet (placeholder)")
    import xarray as xr

    from gencast_rmmd.errors import DataError
    from gencast_rmmd.evaluation.stores import open_forecast

    assert _fault("forecast-kill9").trials == len(FORECAST_KILLS)
    w = workspace
    times = xr.open_zarr(w["store"])["time"].values
    inits = f"{str(times[2])[:19]}/{str(times[9])[:19]}"  # 8 init times
    n_regions = 8 * 2  # 4 members in blocks of 2

    def cmd(out):
        return [
            str(CLI_SCRIPT), "forecast", "--model", "persistence:0.5", "--data-config",
            str(w["data_config"]), "--stats", str(w["stats"]), "--data", str(w["store"]),
            "--init-times", inits, "--members", "4", "--member-block", "2", "--lead-steps", "3",
            "--seed", "7", "--out", str(out),
        ]  # fmt: skip

    ref, out = tmp_path / "reference.zarr", tmp_path / "crashed.zarr"
    run_to_completion(cmd(ref), env)
    log = []
    for i, kind in enumerate(FORECAST_KILLS):
        rng = np.random.default_rng(SEED + 100 + i)
        if kind == "startup":
            kill = Kill(kind, lambda: True, delay=float(rng.uniform(0.5, 3.0)))
        else:
            target = max(_done_count(out), 0) + int(rng.integers(1, n_regions // 4))
            # `_timed`: at once when the count passes the target, so a fast run cannot finish
            # during the delay (it did once, with another job loading the cores)
            done = lambda: _done_count(out)  # noqa: E731
            kill = Kill(
                f"after {target} regions",
                _timed(done, target, float(rng.uniform(0.0, 0.3))),
                poll=0.01,
            )
        outcome = run_until_killed(cmd(out), env, kill)
        log.append((kill.name, outcome, _done_count(out)))
        assert outcome == "killed", log
        if out.exists():  # an interrupted store is never reported complete
            assert xr.open_zarr(out).attrs.get("gencast_rmmd_status") != "complete"
            with pytest.raises(DataError, match="incomplete"):
                open_forecast(str(out))
    assert log[-1][2] > 0, f"no region was written before the last kill: {log}"
    run_to_completion(cmd(out), env)
    assert xr.open_zarr(out).attrs["gencast_rmmd_status"] == "complete"
    _assert_same_dataset(out, ref, skip_attrs=("created", "gencast_rmmd_store_id"))


@pytest.mark.slow
def test_evaluate_kill9_rerun(tmp_path, env):
    """Killed mid-run: no output directory at all (temp dir + rename); the re-run (which resumes
    from the work items the killed runs kept) equals a clean run, and leaves no temporary
    directory or kept items behind."""
    import json
    import os

    import xarray as xr

    from gencast_rmmd.evaluation.synthetic import write_synthetic_pair

    assert _fault("evaluate-kill9").trials == 2
    f, t = tmp_path / "f.zarr", tmp_path / "t.zarr"
    write_synthetic_pair(str(f), str(t), n_init=4, n_lead=3, members=3, n_lat=8, n_lon=16)

    def cmd(out):
        return [
            str(CLI_SCRIPT), "evaluate", "--forecast", str(f), "--truth", str(t), "--out",
            str(out), "--engine", "memory", "--allow-overlap",
        ]  # fmt: skip

    ref, out = tmp_path / "ref", tmp_path / "crashed"
    run_to_completion(cmd(ref), env)

    def tmp_dirs():
        return [n for n in os.listdir(tmp_path) if ".eval-tmp-" in n]

    for i in range(2):
        rng = np.random.default_rng(SEED + 200 + i)
        before = set(tmp_dirs())
        kill = Kill(
            "mid-run",
            lambda b=before: bool(set(tmp_dirs()) - b),
            delay=float(rng.uniform(0.0, 1.0)),
            poll=0.005,
        )
        assert run_until_killed(cmd(out), env, kill) == "killed"
        assert not out.exists(), "a killed evaluation left a (partial) output directory"
    assert tmp_dirs(), "the kills left no temporary directory: the test did not kill mid-run"
    run_to_completion(cmd(out), env)
    assert not tmp_dirs(), f"temporary directories of killed runs left behind: {tmp_dirs()}"
    assert not [n for n in os.listdir(tmp_path) if ".eval-items-" in n], "kept items left behind"
    a, b = xr.open_dataset(out / "scorecard.nc"), xr.open_dataset(ref / "scorecard.nc")
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    ja, jb = (json.loads((d / "evaluation.json").read_text()) for d in (out, ref))
    for j in (ja, jb):
        j.pop("created", None)
        for k in ("forecast", "truth"):
            j.pop(k, None)
    assert ja == jb
    assert sorted(os.listdir(out)) == sorted(os.listdir(ref))


@pytest.mark.slow
def test_prepare_kill9_rerun(tmp_path, workspace, env, capfd):
    if not command_available("data", "prepare"):
        pytest.skip("`gencast-rmmd data prepare` is not built yet (placeholder)")
    import xarray as xr
    from reliability_helpers import run_cli, tiny_data_config_text

    assert _fault("prepare-kill9").trials == 2
    w = workspace
    cfg = tmp_path / "data.yaml"
    cfg.write_text(tiny_data_config_text(w["store"]))

    def cmd(out):
        return [
            str(CLI_SCRIPT), "data", "prepare", "--config", str(cfg), "--out", str(out),
            "--steps-per-item", "2",
        ]  # fmt: skip

    ref, out = tmp_path / "reference.zarr", tmp_path / "crashed.zarr"
    run_to_completion(cmd(ref), env)
    progress = pathlib.Path(str(out) + ".prepare-progress")
    for i in range(2):
        rng = np.random.default_rng(SEED + 300 + i)
        have = len(list(progress.glob("*.done"))) if progress.exists() else 0
        target = have + int(rng.integers(1, 3))

        def trigger(t=target):
            return progress.exists() and len(list(progress.glob("*.done"))) >= t

        assert run_until_killed(cmd(out), env, Kill("blocks", trigger, poll=0.005)) == "killed"
        res = run_cli(["data", "validate", "--data", out, "--config", cfg], capfd)
        assert res.rc == 2 and "[incomplete]" in res.err, res.err
    run_to_completion(cmd(out), env)
    res = run_cli(["data", "validate", "--data", out, "--config", cfg], capfd)
    assert res.rc == 0, res.err
    _assert_same_dataset(out, ref, skip_attrs=("gencast_rmmd_store_id",))
    assert xr.open_zarr(out).attrs.get("gencast_rmmd_prepare") == "complete"


@pytest.mark.slow
def test_stats_kill9_rerun(tmp_path, workspace, env):
    from gencast_rmmd.data.stats import STATS_FILES
    from gencast_rmmd.safety import file_sha256

    assert _fault("stats-kill9").trials == 2

    def cmd(out):
        return [str(CLI_SCRIPT), "data", "stats", "--data", str(workspace["store"]), "--out",
                str(out), "--block", "1"]  # fmt: skip

    ref, out = tmp_path / "ref", tmp_path / "crashed"
    run_to_completion(cmd(ref), env)

    def kept():
        return [p for d in tmp_path.glob(".crashed.stats-blocks-*") for p in d.glob("*.npz")]

    for i in range(2):
        rng = np.random.default_rng(SEED + 400 + i)
        target = len(kept()) + int(rng.integers(1, 6))
        kill = Kill("blocks", lambda t=target: len(kept()) >= t, poll=0.005)
        assert run_until_killed(cmd(out), env, kill) == "killed"
        assert not any((out / n).exists() for n in STATS_FILES.values())
    assert kept(), "the kills left no kept block: the test did not kill mid-run"
    run_to_completion(cmd(out), env)
    for name in STATS_FILES.values():
        assert file_sha256(out / name) == file_sha256(ref / name), name
    assert not list(tmp_path.glob(".crashed.stats-blocks-*")), "kept blocks left behind"


FAULT_TESTS.update(
    {
        "stats-kill9": test_stats_kill9_rerun,
        "distill-kill9": test_distill_kill9_resume,
        "distill-cli-kill9": test_distill_cli_kill9_resume,
        "forecast-kill9": test_forecast_kill9_rerun,
        "evaluate-kill9": test_evaluate_kill9_rerun,
        "prepare-kill9": test_prepare_kill9_rerun,
    }
)
