"""The allocator setting (gencast_rmmd/runtime.py): modes, errors, and its effect on page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gencast_rmmd import runtime
from gencast_rmmd.cli import main


def test_allocator_mode_parses_the_environment():
    assert runtime.allocator_mode({}) == runtime.DEFAULT_MODE == "keep"
    assert runtime.allocator_mode({runtime.ENV: "off"}) == "off"
    assert runtime.allocator_mode({runtime.ENV: " one-arena "}) == "one-arena"
    assert runtime.allocator_mode({runtime.ENV: ""}) == "keep"
    with pytest.raises(ValueError, match="expected one of keep, one-arena, off, found 'fast'"):
        runtime.allocator_mode({runtime.ENV: "fast"})


def test_cli_reports_a_bad_mode_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setenv(runtime.ENV, "fast")
    assert main(["data", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gencast-rmmd: error: GENCAST_RMMD_MALLOC: expected one of")
    assert "Traceback" not in err


# A child process: malloc, touch and free a 64 MiB block 20 times (as XLA:CPU does with its
# temporaries on every execution; numpy is not used because it asks for huge pages) and report
# the minor page faults of the loop.
_CHILD = """
import ctypes, json, resource, sys
from gencast_rmmd import runtime
mode = runtime.tune_allocator(sys.argv[1])
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 64 << 20
def cycle():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
cycle()  # warm-up: the first allocation faults in any mode
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print(json.dumps({"mode": mode, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(runtime._glibc() is None, reason="glibc only")
def test_kept_memory_is_not_faulted_in_again():
    off, kept = _faults("off"), _faults("keep")
    assert off["mode"] == "off" and kept["mode"] == "keep"
    pages = 20 * (64 << 20) // 4096
    # glibc's default maps and unmaps every 64 MiB block: each loop faults all its pages again.
    assert off["faults"] > 0.9 * pages
    # Kept memory is reused: (almost) no new faults.
    assert kept["faults"] < 0.01 * pages
    assert _faults("one-arena")["faults"] < 0.01 * pages


def test_version_is_the_installed_distributions(capsys):
    """`gencast-rmmd --version` prints the package version, which must be the one pip installed
    (pyproject.toml's `version` and `gencast_rmmd.__version__` are written twice)."""
    from importlib.metadata import version

    import gencast_rmmd

    assert gencast_rmmd.__version__ == version("gencast-rmmd")
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"gencast-rmmd {version('gencast-rmmd')}"


def test_available_memory_reads_memavailable(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   1234 kB\nSwapTotal: 0 kB\n")
    assert runtime.available_memory(str(meminfo)) == 1234 * 1024
    meminfo.write_text("MemTotal:       24000000 kB\n")  # a kernel before 3.14: not reported
    assert runtime.available_memory(str(meminfo)) is None
    assert runtime.available_memory(str(tmp_path / "missing")) is None  # not Linux
    if sys.platform.startswith("linux"):
        assert (
            0
            < runtime.available_memory()
            <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        )
