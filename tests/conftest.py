"""Shared pytest setup: JAX on CPU, float32, quiet logs."""

import atexit
import os
import shutil
import tempfile

import pytest
from hypothesis import settings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Many tests spend most of their time compiling small XLA programs. LLVM backend optimisation
# level 1 (XLA's default is 3) compiles them 2-3x faster with the same semantics (side by side:
# tests/image/test_image_uvit.py 128 s -> 46 s); tests bound by run time gain nothing. The product
# keeps XLA's defaults (except `image.finetune.STEP_COMPILER_OPTIONS`).
# Child processes inherit the flag: tests that set XLA_FLAGS for a child append to this value.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1"
    ).strip()

# The trainers' automatic local copies of small stores (`local_cache: auto`) of the many
# temporary test stores go to one throw-away directory, not the user's cache.
if not os.environ.get("GENCAST_RMMD_EXAMPLES_CACHE"):
    _examples_cache = tempfile.mkdtemp(prefix="gencast-rmmd-examples-")
    os.environ["GENCAST_RMMD_EXAMPLES_CACHE"] = _examples_cache
    atexit.register(shutil.rmtree, _examples_cache, True)
# Local copies of the checkpoints and statistics tests read by URL (memory://) likewise.
if not os.environ.get("GENCAST_RMMD_REMOTE_CACHE"):
    _remote_cache = tempfile.mkdtemp(prefix="gencast-rmmd-remote-")
    os.environ["GENCAST_RMMD_REMOTE_CACHE"] = _remote_cache
    atexit.register(shutil.rmtree, _remote_cache, True)

# Property tests draw the same examples on every run (`derandomize`), so a CI run cannot fail on
# an example no earlier run drew; `HYPOTHESIS_PROFILE=explore` draws fresh ones (and keeps
# failures in .hypothesis/) for hunting bugs by hand.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def host_devices_env():
    """`env(n)`: the environment of a child process that sees `n` CPU devices and keeps the
    suite's XLA flags (the optimisation level above)."""

    def env(n: int) -> dict[str, str]:
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
        return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags.strip())

    return env
