"""`locks.output_lock`: a second command writing an output another process is writing refuses
before it writes anything; a holder killed by SIGKILL blocks nothing."""

from __future__ import annotations

import os
import pathlib

import pytest
from reliability_helpers import hold_output_lock, kill_process

from gencast_rmmd import locks
from gencast_rmmd.cli import main
from gencast_rmmd.errors import OutputError


def hold(out: pathlib.Path, command: str, tmp: pathlib.Path, index: int = 0):
    return hold_output_lock(out, command, tmp / f"ready-{index}", index)


def test_a_second_command_into_a_held_output_refuses_and_a_killed_holder_blocks_nothing(
    tmp_path, capfd
):
    out = tmp_path / "stats"
    missing = tmp_path / "no_such_store.zarr"
    argv = ["data", "stats", "--data", str(missing), "--out", str(out)]
    proc = hold(out, "data stats", tmp_path)
    try:
        capfd.readouterr()
        assert main(argv) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1, err
        assert (
            f"is being written by another gencast-rmmd process (gencast-rmmd data stats, pid "
            f"{proc.pid} on "
        ) in err, err
        assert str(tmp_path / ".stats.lock") in err
        assert not out.exists()
        # another spelling of the same output (a trailing '/', through a symlink) finds the lock
        link = tmp_path / "link"
        link.symlink_to(tmp_path)
        assert main([*argv[:-1], f"{link}/stats/"]) == 2
        assert "is being written by another gencast-rmmd process" in capfd.readouterr().err
    finally:
        kill_process(proc)
    # The kernel let go of the dead holder's lock; its file is left, and the next command takes
    # it, runs (here to its own error: the store is missing) and removes it.
    assert (tmp_path / ".stats.lock").exists()
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert "does not exist" in err and "being written" not in err, err
    assert not (tmp_path / ".stats.lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "ready-0"]


def test_the_lock_path_of_an_output(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    expected = tmp_path / ".run.lock"
    assert locks.output_lock_path(tmp_path / "run") == expected
    assert locks.output_lock_path(f"{tmp_path}/run/") == expected
    assert locks.output_lock_path(tmp_path / "alias" / ".." / "run") == expected
    assert locks.output_lock_path(tmp_path / "alias" / "x") == tmp_path / "real" / ".x.lock"
    assert locks.output_lock_path(tmp_path / "run", 3) == tmp_path / ".run.p3.lock"
    assert locks.output_lock_path("gs://bucket/forecast.zarr") is None
    assert locks.output_lock_path("/") is None


def test_the_processes_of_one_multi_process_job_hold_locks_of_their_own(tmp_path):
    """Every process of a multi-host run writes the same `--out`; each takes its own lock file,
    and process 0's is the one a single-process run takes, so two jobs still exclude each
    other."""
    out = tmp_path / "run"
    proc = hold(out, "teacher train", tmp_path, index=0)
    try:
        with locks.output_lock(out, "teacher train", 1):
            assert (tmp_path / ".run.p1.lock").exists()
        with pytest.raises(OutputError, match=f"pid {proc.pid} on"):
            with locks.output_lock(out, "teacher train", 0):
                pass
    finally:
        kill_process(proc)


def test_directories_made_for_the_lock_are_removed_unless_the_command_wrote_in_them(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with locks.output_lock(out, "distill"):
        assert (tmp_path / "a" / "b" / ".run.lock").is_file()
    assert not (tmp_path / "a").exists()  # a refused command leaves nothing behind
    with locks.output_lock(out, "distill"):
        out.mkdir()
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["run"]
    # a file where the output's directory goes: no lock, the command reports it itself
    (tmp_path / "f").write_text("x")
    with locks.output_lock(tmp_path / "f" / "run", "distill"):
        pass
    assert sorted(os.listdir(tmp_path)) == ["a", "f"]


def test_a_command_run_inside_another_may_name_the_same_output(tmp_path):
    out = tmp_path / "run"
    with locks.output_lock(out, "quickstart"):
        with locks.output_lock(out, "teacher train"):
            assert (tmp_path / ".run.lock").exists()
        assert (tmp_path / ".run.lock").exists()  # still held by the outer command
    assert not (tmp_path / ".run.lock").exists()


def test_a_lock_file_removed_by_the_holder_that_ended_is_not_taken(tmp_path, monkeypatch):
    """A holder removes its lock file before it lets go; a process that opened the file just
    before then and locks it afterwards holds a lock on a removed file, which guards nothing: it
    must lock a fresh file at the path instead."""
    out = tmp_path / "run"
    path = tmp_path / ".run.lock"
    real_flock = locks.fcntl.flock
    calls = []

    def flock(f, op):
        calls.append(op)
        if len(calls) == 1:  # the holder ends between this process's open and its lock
            path.unlink()
        return real_flock(f, op)

    path.write_text("{}")
    monkeypatch.setattr(locks.fcntl, "flock", flock)
    with locks.output_lock(out, "forecast"):
        assert path.exists()
        assert '"command": "gencast-rmmd forecast"' in path.read_text()
    assert len(calls) == 2
