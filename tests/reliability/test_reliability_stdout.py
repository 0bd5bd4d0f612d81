"""The `gencast-rmmd` entry point itself: how it ends when its output's reader goes away."""

from __future__ import annotations

import os
import subprocess

from reliability_helpers import CLI_SCRIPT, REPO, subprocess_env

from gencast_rmmd import cli
from gencast_rmmd.cli import data as data_cli


def test_closed_stdout_pipe_stops_quietly(tmp_path):
    # `gencast-rmmd data cache | head -1` where the reader has gone before the command writes:
    # the child writes into a pipe whose read end is already closed.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [str(CLI_SCRIPT), "data", "cache"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=subprocess_env(GENCAST_RMMD_CACHE=str(tmp_path / "c")),
            cwd=REPO,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == "", proc.stderr  # no "internal error", no "Exception ignored"


def test_other_broken_pipes_are_reported(monkeypatch, capsys):
    # A broken pipe that is not stdout's (a remote store's socket, say) is the failure it is.
    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(data_cli, "_cache", broken)
    assert cli.main(["data", "cache"]) == 1
    assert "internal error: BrokenPipeError" in capsys.readouterr().err
