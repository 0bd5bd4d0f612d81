"""Resources that run out: a full disk (or quota), a read-only output, the device's memory. Each
is one `gencast-rmmd: error:` line saying so (and what to change), nothing is half-written, and
the run resumes once there is room.

Measured before: `teacher train` whose first checkpoint met a full disk printed 1 682 lines of
tracebacks (orbax's writer threads) and ended as an internal error; `evaluate` crashed with a
segmentation fault (HDF5 writing a netCDF file); `forecast` left its store's temporary directory
beside `--out`; the output lock's own record failed the command.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import shutil
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from reliability_helpers import CLI_SCRIPT, subprocess_env, tiny_workspace

from gencast_rmmd import remote
from gencast_rmmd.cli import _QuietFilter, disk_full, main
from gencast_rmmd.errors import OutputError
from gencast_rmmd.evaluation import netcdf_io
from gencast_rmmd.training import checkpointing
from gencast_rmmd.training.checkpointing import CheckpointManager, checkpoint_bytes


def _free(monkeypatch, module, free: int) -> None:
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(
        module.shutil, "disk_usage", lambda p: type(usage)(usage.total, usage.used, free)
    )


def test_a_full_disk_is_recognised_in_the_forms_libraries_raise_it():
    plain = OSError(errno.ENOSPC, "No space left on device", "/data/run/metrics.jsonl")
    msg = disk_full(plain)
    assert msg.startswith("no space left on the device writing /data/run/metrics.jsonl (")
    assert "run the same command again" in msg
    # tensorstore under orbax and Zarr: a ValueError whose text names the file and errno 28
    ts = ValueError(
        'RESOURCE_EXHAUSTED: Error writing local file "/r/checkpoints/3.orbax-checkpoint-tmp/x": '
        "Failed to write 80987 bytes to file 18: No space left on device [os_error_code='28']"
    )
    assert disk_full(ts).startswith(
        "no space left on the device writing /r/checkpoints/3.orbax-checkpoint-tmp/x ("
    )
    # h5py: "filename = '...'"
    h5 = OSError("Can't close file (filename = '/e/stats/a.nc', errno = 28, error message = "
                 "'No space left on device')")  # fmt: skip
    assert disk_full(h5).startswith("no space left on the device writing /e/stats/a.nc (")
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert disk_full(quota).startswith("the disk quota is exhausted (")
    try:  # found down the chain
        try:
            raise plain
        except OSError as e:
            raise RuntimeError("a Beam step failed") from e
    except RuntimeError as chained:
        assert disk_full(chained).startswith("no space left on the device writing /data/run/")
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(ValueError("shapes do not match (28, 3)")) is None


def test_a_command_stopped_by_a_full_disk_says_so_in_one_line(tmp_path, monkeypatch, capfd):
    from gencast_rmmd.data import stats

    ws = tiny_workspace(tmp_path / "ws")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "s" / "mean.nc"))

    monkeypatch.setattr(stats, "save_stats", full)
    capfd.readouterr()
    assert main(["data", "stats", "--data", str(ws["store"]), "--out", str(tmp_path / "s")]) == 2
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("gencast-rmmd:")]
    assert lines == [lines[0]] and lines[0].startswith("gencast-rmmd: error: no space left on")
    assert "internal error" not in err and "Traceback" not in err


def test_library_log_records_lose_their_tracebacks_and_full_disk_ones_go():
    f = _QuietFilter()

    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            "orbax", logging.ERROR, __file__, 1, "thread failed: %s", (exc,), (type(exc), exc, None)
        )

    assert not f.filter(record(OSError(errno.ENOSPC, "No space left on device")))
    assert not f.filter(record(OutputError("no room")))  # the command's own error line says it
    # orbax's writer threads that find the interpreter shutting down after the command ended
    shutdown = "cannot schedule new futures after interpreter shutdown"
    assert not f.filter(record(RuntimeError(shutdown)))
    assert f.filter(record(RuntimeError("another runtime error")))
    other = record(KeyError("k"))
    assert f.filter(other)
    assert other.exc_info is None and other.getMessage().endswith(
        "(its traceback: run with --debug)"
    )


def test_unraisable_errors_of_a_failed_write_go_and_others_are_passed_on():
    """tensorstore's callbacks into the closed event loop of orbax's failed write ("Event loop
    is closed", some 240 of them) are dropped; any other unraisable error goes to the hook that
    was there before (the interpreter's, or pytest's)."""
    import types

    from gencast_rmmd.cli import _QuietUnraisable

    passed = []
    hook = _QuietUnraisable(passed.append)

    def unraisable(exc):
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                                     err_msg=None, object=None)  # fmt: skip

    hook(unraisable(RuntimeError("Event loop is closed")))
    assert passed == []
    other = unraisable(ValueError("Event loop is closed"))  # not the RuntimeError: passed on
    hook(other)
    assert passed == [other]


def test_a_checkpoint_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    state = {"w": jnp.ones((64, 64)), "b": jnp.zeros((64,)), "step": jnp.asarray(3)}
    mngr = CheckpointManager(tmp_path / "ckpt")
    mngr.save(1, state, {"x": 1})
    need = checkpoint_bytes(state)
    _free(monkeypatch, checkpointing, need - 1)
    with pytest.raises(OutputError) as e:
        mngr.save(2, state, {"x": 2})
    msg = str(e.value)
    assert "not enough free space for checkpoint 2" in msg and "it resumes from step 1" in msg
    assert mngr.all_steps() == [1] and sorted(os.listdir(tmp_path / "ckpt")) == ["1"]
    _free(monkeypatch, checkpointing, need)
    mngr.save(2, state, {"x": 2})
    assert mngr.all_steps() == [1, 2]


@pytest.mark.parametrize("n_arrays", [1, 40])
def test_the_checkpoint_size_estimate_is_an_upper_bound(tmp_path, n_arrays):
    rng = np.random.default_rng(0)
    state = {f"a{i}": jnp.asarray(rng.normal(size=(i % 7 + 1, 300))) for i in range(n_arrays)}
    path = CheckpointManager(tmp_path / "ckpt").save(5, state, {"note": "x" * 500})
    on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert on_disk <= checkpoint_bytes(state), (on_disk, checkpoint_bytes(state))


def test_a_netcdf_file_that_cannot_fit_is_refused_and_the_estimate_bounds_it(tmp_path, monkeypatch):
    ds = xr.Dataset(
        {f"v{i}": (("x", "y"), np.ones((4, 5), np.float32)) for i in range(9)},
        coords={"x": np.arange(4), "y": np.arange(5)},
    )
    path = tmp_path / "a.nc"
    netcdf_io.write_netcdf(ds, str(path))
    estimate = int(ds.nbytes) + netcdf_io.NETCDF_OVERHEAD_BYTES * (1 + len(ds.variables))
    assert path.stat().st_size <= estimate
    _free(monkeypatch, remote, estimate - 1)
    with pytest.raises(OutputError, match=r"no space left on the device writing .*b\.nc"):
        netcdf_io.write_netcdf(ds, str(tmp_path / "b.nc"))
    assert sorted(os.listdir(tmp_path)) == ["a.nc"]


def test_a_forecast_store_that_fails_to_be_made_leaves_no_temporary_directory(
    tmp_path, monkeypatch
):
    from gencast_rmmd.forecast import store

    out = tmp_path / "f.zarr"
    dead = tmp_path / "f.zarr.tmp-999999999"  # left by a killed run (no such process)
    alive = tmp_path / f"f.zarr.tmp-{os.getppid()}"  # another run making it now
    dead.mkdir()
    alive.mkdir()

    def full(path, tmpl, spec):
        os.makedirs(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "create", full)
    with pytest.raises(OSError):
        store.publish(str(out), xr.Dataset(), {})
    assert sorted(os.listdir(tmp_path)) == [alive.name]


def _mount_tmpfs(where: pathlib.Path, size: str) -> bool:
    where.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@contextlib.contextmanager
def _full_disk(tmp_path: pathlib.Path):
    """(disk, ws, fill): a 2 MiB tmpfs at `tmp_path/disk` filled to 16 KiB free by the file
    `fill`, and a tiny workspace beside it; unmounted at the end. Skips the test where it
    cannot mount one (not root)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        ws = tiny_workspace(tmp_path / "ws")
        fill = disk / "fill"
        fill.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 16 * 1024))
        yield disk, ws, fill
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=60)


@pytest.mark.slow
def test_teacher_train_and_evaluate_on_a_really_full_disk(tmp_path):
    """The `disk-full` fault row. On a 2 MiB tmpfs filled up (as root; skipped where the tests
    cannot mount one): each command ends with one error line, exit status 2, and nothing
    half-made is left beside its output; once there is room the same commands finish."""
    with _full_disk(tmp_path) as (disk, ws, fill):
        env = subprocess_env()

        def run(*argv):
            return subprocess.run(
                [str(CLI_SCRIPT), *map(str, argv)], capture_output=True, text=True, env=env,
                timeout=600,
            )  # fmt: skip

        teacher = [
            "teacher", "train", "--config", ws["model"], "--data", ws["store"], "--stats",
            ws["stats"], "--task", ws["task"], "--out", disk / "run", "--steps", "4",
            "--batch-size", "2", "--no-progress", "--set", "training.checkpoint_every=2",
        ]  # fmt: skip
        r = run(*teacher)
        errs = [ln for ln in r.stderr.splitlines() if ln.startswith("gencast-rmmd:")]
        assert r.returncode == 2 and len(r.stderr.splitlines()) <= 2, r.stderr[-3000:]
        assert errs and "not enough free space for checkpoint 2" in errs[0], r.stderr
        # evaluate a forecast made elsewhere into the full disk
        fc = tmp_path / "f.zarr"
        init = str(xr.open_zarr(ws["store"])["time"].values[10])[:13]
        made = run("forecast", "--model", "persistence", "--data", ws["store"],
                   "--data-config", ws["data_config"],
                   "--stats", ws["stats"], "--init-times", init, "--lead-time", "24h",
                   "--members", "2", "--out", fc)  # fmt: skip
        assert made.returncode == 0, made.stderr[-3000:]
        ev = ["evaluate", "--forecast", fc, "--truth", ws["store"], "--out", disk / "ev",
              "--engine", "memory"]  # fmt: skip
        r = run(*ev)
        assert r.returncode == 2, r.stderr[-3000:]
        errs = [ln for ln in r.stderr.splitlines() if ln.startswith("gencast-rmmd:")]
        assert len(errs) == 1 and "no space left on the device" in errs[0], r.stderr
        assert "Traceback" not in r.stderr
        left = {p.name for p in disk.iterdir()} - {"fill", "run"}
        assert all(".eval-items-" in n for n in left), left  # kept work, nothing half-written
        fill.unlink()
        assert run(*teacher).returncode == 0
        r = run(*ev)
        assert r.returncode == 0, r.stderr[-3000:]
        assert sorted(p.name for p in disk.iterdir()) == ["ev", "run"]


def test_an_output_on_a_read_only_mount_is_refused_before_any_work(tmp_path, capfd):
    """Was: `evaluate` into an existing directory on a read-only file system ended as an internal
    error (its temporary directory beside `--out` could not be made)."""
    disk = tmp_path / "ro"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        (disk / "out").mkdir()
        remount = ["mount", "-o", "remount,ro", str(disk)]
        assert subprocess.run(remount, capture_output=True, timeout=30).returncode == 0
        out = disk / "out"
        ws = tiny_workspace(tmp_path / "ws")
        for argv in (
            ["evaluate", "--forecast", tmp_path / "f.zarr", "--truth", ws["store"], "--out", out],
            ["data", "stats", "--data", ws["store"], "--out", out],
            ["forecast", "--model", "persistence", "--data", ws["store"], "--stats", ws["stats"],
             "--data-config", ws["data_config"], "--init-times", "2020-01-02T00", "--lead-time",
             "24h", "--members", "2", "--out", out],
            ["teacher", "train", "--config", ws["model"], "--data", ws["store"], "--stats",
             ws["stats"], "--task", ws["task"], "--out", out],
        ):  # fmt: skip
            capfd.readouterr()
            assert main([str(a) for a in argv]) == 2, argv
            err = capfd.readouterr().err
            assert err.startswith(f"gencast-rmmd: error: --out '{out}': cannot write in '{out}' (")
            assert err.count("\n") == 1, err
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=60)


@pytest.mark.slow
def test_a_disk_that_fills_while_a_checkpoint_is_written_is_one_line(tmp_path):
    """The room check passes (here: switched off) but the disk fills while orbax writes the
    checkpoint at step 2 of 4 (another process filling it meanwhile): the command still ends
    with one error line and status 2. Before, some 1 500 lines of tracebacks followed that line
    ("Event loop is closed" from tensorstore's callbacks, orbax's threads at interpreter
    shutdown)."""
    import sys

    with _full_disk(tmp_path) as (disk, ws, fill):
        argv = [
            "teacher", "train", "--config", ws["model"], "--data", ws["store"], "--stats",
            ws["stats"], "--task", ws["task"], "--out", disk / "run", "--steps", "4",
            "--batch-size", "2", "--no-progress", "--set", "training.checkpoint_every=2",
        ]  # fmt: skip
        script = (
            "import sys\n"
            "from gencast_rmmd.training.checkpointing import CheckpointManager\n"
            "CheckpointManager.check_room = lambda self, step, state: None\n"
            "from gencast_rmmd.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        r = subprocess.run(
            [sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True,
            env=subprocess_env(), timeout=600,
        )  # fmt: skip
        lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("note: ")]
        assert r.returncode == 2, r.stderr[-3000:]
        assert len(lines) == 1, f"{len(lines)} lines:\n{r.stderr[-3000:]}"
        assert lines[0].startswith("gencast-rmmd: error: no space left on the device"), lines


FAULT_TESTS = {"disk-full": test_teacher_train_and_evaluate_on_a_really_full_disk}


@pytest.mark.parametrize(
    ("argv", "advice"),
    [
        (["forecast", "--model", "persistence", "--members", "2", "--lead-time", "24h"],
         "lower --member-block (members per compiled call)"),
        (["data", "stats"], "make the work per step smaller"),
    ],
)  # fmt: skip
def test_a_command_out_of_device_memory_says_so_with_what_to_lower(
    tmp_path, monkeypatch, capfd, argv, advice
):
    """XLA's own failed allocation (a real one: 1 TiB asked of the CPU backend) inside a command
    is one error line with the command's way to make each step smaller, not an internal error."""
    import jax.numpy as jnp

    from gencast_rmmd.data import stats
    from gencast_rmmd.forecast import store

    def allocate(*a, **k):
        jnp.zeros((2**38,), jnp.float32).block_until_ready()

    ws = tiny_workspace(tmp_path / "ws")
    monkeypatch.setattr(stats, "save_stats", allocate)
    monkeypatch.setattr(store, "publish", allocate)
    full = [*argv, "--data", str(ws["store"])]
    if argv[0] == "forecast":
        full += ["--stats", str(ws["stats"]), "--data-config", str(ws["data_config"])]
        full += ["--init-times", "2020-01-02T00"]
    capfd.readouterr()
    assert main([*full, "--out", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err
    assert err.startswith("gencast-rmmd: error: the device ran out of memory (RESOURCE_EXHAUSTED: ")
    assert f"; {advice}, or run on a device with more memory" in err and err.count("\n") == 1


def test_image_commands_out_of_memory_name_accumulation_and_the_batch_sizes():
    """`image teacher --config imagenet64` on CPU asked 129 GB for its step; the advice was the
    generic "make the work per step smaller". It names the gradient accumulation first (the
    batch, and so the training, stays) and the batch sizes."""
    from gencast_rmmd.cli import out_of_memory

    e = RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 129759185728 bytes.")
    for command in ("image teacher", "image distill", "image pareto"):
        msg = out_of_memory(e, command)
        assert "(--set teacher.grad_accum_steps, mmd.grad_accum_steps or " in msg
        assert "(teacher.batch_size, classifier.batch_size, mmd.batch_size" in msg
    assert out_of_memory(RuntimeError("other"), "image teacher") is None
