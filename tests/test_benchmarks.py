"""The benchmark scripts' own options (what tools/device_check.sh relies on)."""

from __future__ import annotations

import importlib.util
import logging
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _distill_bench():
    spec = importlib.util.spec_from_file_location("bench_distill", REPO / "benchmarks/distill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--phases", "ppo"], "--phases: expected mmd, rmmd or mmd,rmmd, found 'ppo'"),
        (["--phases", ""], "--phases: expected"),
        (["--skip-train", "--skip-sample"], "leave nothing to time"),
        (["--memory", "1", "3"], "--memory: each ACCUM must divide --batch 2, found [1, 3]"),
    ],
)
def test_distill_benchmark_refuses_options_that_time_nothing(argv, message):
    r = subprocess.run(
        [sys.executable, "benchmarks/distill.py", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert message in r.stderr
    assert r.stdout == ""  # no JSON: nothing was measured


def test_slow_compiles_are_logged_and_the_rest_dropped(capsys):
    import jax
    import jax.numpy as jnp

    bench = _distill_bench()
    logger = logging.getLogger("jax")
    handlers, propagate = list(logger.handlers), logger.propagate
    try:
        bench.log_slow_compiles(min_seconds=0.0)
        jax.jit(lambda x: jnp.sin(x) * 2.0)(jnp.arange(3.0)).block_until_ready()
        err = capsys.readouterr().err
        assert "compiled jit(<lambda>) in" in err
        assert "Finished tracing" not in err  # only the compilations reach stderr
        logger.handlers[:] = handlers
        bench.log_slow_compiles(min_seconds=1e9)  # nothing takes that long
        jax.jit(lambda x: jnp.cos(x) + 1.0)(jnp.arange(4.0)).block_until_ready()
        assert "compiled" not in capsys.readouterr().err
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.handlers[:] = handlers
        logger.propagate = propagate
