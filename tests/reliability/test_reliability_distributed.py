"""Multi-process set-up on a host JAX's CPU collectives cannot use: one clear error, not an
internal error with gloo's assertion text."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
from reliability_helpers import CLI_SCRIPT, REPO, CliResult, assert_one_clear_error, subprocess_env

from gencast_rmmd.training.sharding import NUM_PROCESSES_ENV, PROCESS_ID_ENV

# RFC 6761: names under .invalid never resolve, from /etc/hosts or DNS.
UNRESOLVABLE = "gencast-rmmd-test.invalid"


def _can_rename_host() -> bool:
    """Root with util-linux's `unshare`: a child can get a UTS namespace with its own host name."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    res = subprocess.run(["unshare", "--uts", "true"], capture_output=True, timeout=30)
    return res.returncode == 0


@pytest.mark.skipif(not _can_rename_host(), reason="needs root and unshare --uts")
def test_unresolvable_host_name_is_one_clear_error(tmp_path):
    # gloo, JAX's CPU collectives, looks up this machine's address by its host name. A host whose
    # name does not resolve (a bare container, a chroot without /etc/hosts) failed with "internal
    # error: RuntimeError: Unable to initialize backend 'cpu': [enforce fail at ...gloo/transport/
    # tcp/device.cc:99] rv == 0. -2 vs 0 (set JAX_PLATFORMS='' ...)".
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["teacher", "train", "--config", "tiny", "--data", tmp_path / "none.zarr"]
    argv += ["--stats", tmp_path / "stats", "--out", tmp_path / "run"]
    command = f"hostname {UNRESOLVABLE} && exec {CLI_SCRIPT} " + " ".join(map(str, argv))
    env = subprocess_env(
        GENCAST_RMMD_DISTRIBUTED="1",
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        **{NUM_PROCESSES_ENV: "1", PROCESS_ID_ENV: "0"},
    )
    proc = subprocess.run(
        ["unshare", "--uts", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    msg = assert_one_clear_error(
        CliResult(proc.returncode, proc.stdout, proc.stderr),
        rf"gloo.*host name, '{UNRESOLVABLE}'.*resolve.*GENCAST_RMMD_DISTRIBUTED=0",
    )
    assert "JAX_PLATFORMS" not in msg  # JAX's own hint (another backend) does not apply
    assert not (tmp_path / "run").exists()  # nothing written
