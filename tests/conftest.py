"""Shared pytest setup: JAX on CPU, float32, quiet logs."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The trainers' automatic local copies of small stores (`local_cache: auto`) of the many
# temporary test stores go to one throw-away directory, not the user's cache.
if not os.environ.get("GENCAST_RMMD_EXAMPLES_CACHE"):
    _examples_cache = tempfile.mkdtemp(prefix="gencast-rmmd-examples-")
    os.environ["GENCAST_RMMD_EXAMPLES_CACHE"] = _examples_cache
    atexit.register(shutil.rmtree, _examples_cache, True)
