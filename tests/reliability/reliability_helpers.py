"""Shared helpers of the reliability tests: run the real CLI, snapshot trees, build tiny inputs.

- `run_cli(argv, capfd)`: `gencast_rmmd.cli.main(argv)` in this process (the function behind the
  installed `gencast-rmmd` script), capturing stdout/stderr at the file-descriptor level.
- `run_cli_subprocess(argv)`: the installed `.venv/bin/gencast-rmmd` script in a child process.
- `assert_one_clear_error(...)`: non-zero exit, exactly one `gencast-rmmd: error: ...` line that
  matches a pattern, no traceback, no "internal error".
- `snapshot(root)`: {relative path: (size, mtime_ns)} of every file under `root`, to prove that a
  failed command wrote nothing and touched nothing.
- `command_available(*words)`: whether the CLI has the sub-command yet (other areas are being
  built in parallel; a test skips, naming the missing command, only while it is missing).
- `hold_output_lock(out, command, ready)`: a child process holding an output's lock as a running
  command does (`kill_process` ends it).
- tiny inputs: a canonical data store for a small task, its data config, and npz checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import xarray as xr

from gencast_rmmd.data.era5 import quiet_v3_consolidation

REPO = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = pathlib.Path(sys.executable).parent
CLI_SCRIPT = VENV_BIN / "gencast-rmmd"

ERROR_PREFIX = "gencast-rmmd: error: "


@dataclasses.dataclass
class CliResult:
    """What one CLI run returned and printed."""

    rc: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("gencast-rmmd:")]


def run_cli(argv: list[str], capfd) -> CliResult:
    """Run `gencast_rmmd.cli.main(argv)` here; exceptions that escape (only with --debug) propagate."""
    from gencast_rmmd.cli import main

    capfd.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capfd.readouterr()
    return CliResult(int(rc), out, err)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child `gencast-rmmd`: CPU JAX, quiet logs, no debug unless asked."""
    env = dict(os.environ)
    env.pop("GENCAST_RMMD_DEBUG", None)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_cli_subprocess(argv: list[str], timeout: float = 300, **env: str) -> CliResult:
    """Run the installed `gencast-rmmd` script in a child process."""
    proc = subprocess.run(
        [str(CLI_SCRIPT), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(**env),
        cwd=REPO,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_clear_error(res: CliResult, pattern: str) -> str:
    """Exit status 2, one `gencast-rmmd: error:` line matching `pattern` (regex, case-insensitive),
    no traceback and no internal error. Returns the message."""
    lines = res.error_lines()
    assert "Traceback" not in res.err, f"traceback printed:\n{res.err}"
    assert not any("internal error" in ln for ln in lines), (
        f"an internal error (a bug) instead of a user error:\n{res.err}"
    )
    assert len(lines) == 1, f"expected one error line, found {len(lines)}:\n{res.err}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    assert res.rc == 2, f"exit status {res.rc}, expected 2; stderr:\n{res.err}"
    # The message may go on over indented lines (e.g. a list of every problem found).
    err_lines = res.err.splitlines()
    start = err_lines.index(lines[0])
    rest = [ln for ln in err_lines[start + 1 :] if ln.startswith((" ", "\t"))]
    msg = "\n".join([lines[0][len(ERROR_PREFIX) :], *rest])
    assert re.search(pattern, msg, flags=re.IGNORECASE | re.DOTALL), (
        f"message does not name the problem (want /{pattern}/):\n{msg}"
    )
    return msg


def snapshot(root: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Every file and directory under `root`: relative path -> (size, mtime_ns) (dirs: (-1, 0))."""
    root = pathlib.Path(root)
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = (-1, 0)
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def command_available(*words: str) -> bool:
    """True when `gencast-rmmd <words...>` is a real command (not the area's placeholder)."""
    from gencast_rmmd.cli import build_parser

    parser = build_parser()
    node = parser
    for w in words:
        sub = next((a for a in node._actions if a.__class__.__name__ == "_SubParsersAction"), None)
        if sub is None or w not in sub.choices:
            return False
        node = sub.choices[w]
    func = node.get_default("func")
    if func is None:  # a group with its own sub-commands: available if any exist
        return any(a.__class__.__name__ == "_SubParsersAction" for a in node._actions)
    return getattr(func, "__name__", "") != "_not_built"


# ------------------------------------------------------------------------------------------------
# Tiny inputs.

TINY_LEVELS = (500, 850)


def tiny_task():
    """A small GenCast-structured task: 2 surface + 1 level variable, progress forcings, statics."""
    from gencast_rmmd.data.task import TaskConfig

    return TaskConfig(
        input_variables=(
            "2m_temperature",
            "mean_sea_level_pressure",
            "temperature",
            "year_progress_sin",
            "year_progress_cos",
            "day_progress_sin",
            "day_progress_cos",
            "geopotential_at_surface",
            "land_sea_mask",
        ),
        target_variables=("2m_temperature", "mean_sea_level_pressure", "temperature"),
        forcing_variables=(
            "year_progress_sin",
            "year_progress_cos",
            "day_progress_sin",
            "day_progress_cos",
        ),
        static_variables=("geopotential_at_surface", "land_sea_mask"),
        pressure_levels=TINY_LEVELS,
        input_frames=2,
        step_hours=12,
    )


def tiny_canonical_ds(
    n_times: int = 12, n_lat: int = 8, n_lon: int = 16, seed: int = 0, start="2020-01-01T00"
) -> xr.Dataset:
    """A canonical store (dims time, level, lat, lon; lat ascending) for `tiny_task()`."""
    from gencast_rmmd.data.era5 import add_progress_forcings

    rng = np.random.default_rng(seed)
    times = np.datetime64(start, "ns") + np.arange(n_times) * np.timedelta64(12, "h")
    lat = -90 + (np.arange(n_lat) + 0.5) * 180 / n_lat
    lon = np.arange(n_lon) * 360 / n_lon
    s3, s4 = (n_times, n_lat, n_lon), (n_times, len(TINY_LEVELS), n_lat, n_lon)
    land = np.zeros((n_lat, n_lon), np.float32)
    land[2:4, 3:7] = 1
    ds = xr.Dataset(
        {
            "2m_temperature": (
                ("time", "lat", "lon"),
                (280 + 5 * rng.normal(size=s3)).astype("f4"),
            ),
            "mean_sea_level_pressure": (
                ("time", "lat", "lon"),
                (1e5 + 500 * rng.normal(size=s3)).astype("f4"),
            ),
            "temperature": (
                ("time", "level", "lat", "lon"),
                (250 + 10 * rng.normal(size=s4)).astype("f4"),
            ),
            "geopotential_at_surface": (("lat", "lon"), (1000 * land).astype("f4")),
            "land_sea_mask": (("lat", "lon"), land),
        },
        coords={"time": times, "level": np.asarray(TINY_LEVELS, np.int64), "lat": lat, "lon": lon},
    )
    ds = add_progress_forcings(ds)
    for v in ds.data_vars:
        ds[v].encoding = {}
    return ds


def consolidate(path: str | os.PathLike) -> None:
    """`zarr.consolidate_metadata(path)` without zarr 3's warning about it."""
    import zarr

    with quiet_v3_consolidation():
        zarr.consolidate_metadata(str(path))


def write_store(ds: xr.Dataset, path: str | os.PathLike, time_chunk: int = 4) -> pathlib.Path:
    """Write `ds` as a Zarr store chunked along time (so single chunks can be damaged)."""
    chunks = {"time": time_chunk} if "time" in ds.dims else {}
    with quiet_v3_consolidation():
        ds.chunk(chunks).to_zarr(path, mode="w", consolidated=True)
    return pathlib.Path(path)


def tiny_data_config_text(store: str | os.PathLike, **top: str) -> str:
    """YAML of a DataConfig for `tiny_task()` reading `store` (extra top-level keys verbatim)."""
    import yaml

    from gencast_rmmd.config import to_dict

    data = {"task": to_dict(tiny_task()), "source": str(store)}
    data.update(top)
    return yaml.safe_dump(data, sort_keys=False)


def chunk_files(store: str | os.PathLike, variable: str) -> list[pathlib.Path]:
    """The chunk files of one array in a Zarr store (v2 `0.0.0` names or v3 `c/...`)."""
    root = pathlib.Path(store) / variable
    meta = {".zarray", ".zattrs", "zarr.json", ".zgroup"}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in meta)


def tiny_model_config():
    """The smallest GenCast denoiser the model area builds (mesh 0..1, width 8)."""
    from gencast_rmmd.model.configs import (
        DenoiserArchitectureConfig,
        ModelConfig,
        NoiseEncoderConfig,
        SparseTransformerConfig,
    )

    st = SparseTransformerConfig(
        attention_k_hop=1,
        d_model=8,
        num_layers=1,
        num_heads=2,
        ffw_hidden=16,
        attention_type="mha",
        mask_type="full",
    )
    arch = DenoiserArchitectureConfig(sparse_transformer_config=st, mesh_size=1, latent_size=8)
    return ModelConfig(
        denoiser_architecture_config=arch,
        noise_encoder_config=NoiseEncoderConfig(num_frequencies=4, output_sizes=(8, 4)),
    )


def tiny_checkpoint(lat: np.ndarray, lon: np.ndarray, seed: int = 0):
    """A GenCastCheckpoint for `tiny_task()` on the grid, random params of the exact shapes."""
    from gencast_rmmd.model.checkpoint import make_checkpoint
    from gencast_rmmd.model.denoiser import build_denoiser

    task, model = tiny_task(), tiny_model_config()
    den = build_denoiser(
        model.denoiser_architecture_config, task, lat, lon, model.noise_encoder_config
    )
    rng = np.random.default_rng(seed)
    params = {
        m: {n: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype) for n, s in p.items()}
        for m, p in den.param_shapes().items()
    }
    return make_checkpoint(params, task, model, license="CC BY 4.0 (test weights)")


def tiny_model_yaml() -> str:
    """YAML of `tiny_model_config()` for `--config` (configs/model schema)."""
    import yaml

    from gencast_rmmd.config import to_dict

    return yaml.safe_dump(to_dict(tiny_model_config()), sort_keys=False)


def tiny_workspace(root: str | os.PathLike, n_times: int = 16) -> dict[str, pathlib.Path]:
    """Everything a tiny teacher/forecast run needs, under `root`:
    store (canonical Zarr), stats (stats dir), task (data config with task + splits), model
    (model config), data_config (a full DataConfig reading the store)."""
    import yaml

    from gencast_rmmd.config import to_dict
    from gencast_rmmd.data.stats import compute_stats, save_stats

    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ds = tiny_canonical_ds(n_times=n_times)
    store = write_store(ds, root / "data.zarr")
    stats = save_stats(compute_stats(ds), root / "stats")
    times = ds["time"].values
    task = root / "task.yaml"
    task.write_text(
        yaml.safe_dump(
            {
                "task": to_dict(tiny_task()),
                "splits": {
                    "train": [str(times[0])[:16], str(times[n_times // 2])[:16]],
                    "eval": [str(times[n_times // 2 + 1])[:16], str(times[-1])[:16]],
                },
            },
            sort_keys=False,
        )
    )
    model = root / "model.yaml"
    model.write_text(tiny_model_yaml())
    data_config = root / "data_config.yaml"
    data_config.write_text(tiny_data_config_text(store))
    return {
        "root": root,
        "store": store,
        "stats": stats,
        "task": task,
        "model": model,
        "data_config": data_config,
    }


# ------------------------------------------------------------------------------------------------
# Killing processes.


@dataclasses.dataclass
class Kill:
    """How one trial picks its moment: `trigger() -> bool` polled every `poll` s, then `delay` s."""

    name: str
    trigger: object  # Callable[[], bool]
    delay: float = 0.0
    poll: float = 0.002


def run_until_killed(cmd: list[str], env: dict, kill: Kill, timeout: float = 600) -> str:
    """Start `cmd`, SIGKILL it when `kill.trigger()` fires (+ `kill.delay`); return "killed" or
    "finished" (it exited first, its status checked to be 0)."""
    import signal
    import time

    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    t0 = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")
                assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{err[-3000:]}"
                return "finished"
            if kill.trigger():
                if kill.delay:
                    time.sleep(kill.delay)
                if proc.poll() is not None:
                    continue
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return "killed"
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{cmd} ran for more than {timeout} s")
            time.sleep(kill.poll)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()


_HOLDER = """
import pathlib, sys, time
from gencast_rmmd import locks
with locks.output_lock(sys.argv[1], sys.argv[2], int(sys.argv[3])):
    pathlib.Path(sys.argv[4]).write_text("held")
    time.sleep(600)
"""


def hold_output_lock(
    out: str | os.PathLike, command: str, ready: pathlib.Path, index: int = 0
) -> subprocess.Popen:
    """A child process holding the `--out` lock of `out` as `command` (process `index` of a
    job) does while it runs (`locks.output_lock`), once it has written `ready`; it holds it
    until killed (`kill_process`) or for 10 minutes."""
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out), command, str(index), str(ready)],
        env=subprocess_env(),
    )
    t0 = time.monotonic()
    while not ready.exists():
        assert proc.poll() is None, "the lock holder died"
        assert time.monotonic() - t0 < 120, "the lock holder did not start"
        time.sleep(0.02)
    return proc


def kill_process(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_to_completion(cmd: list[str], env: dict, timeout: float = 600) -> CliResult:
    """Run `cmd` to the end; assert exit status 0."""
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def crash_env(cache_dir: str | os.PathLike, tmp_dir: str | os.PathLike) -> dict[str, str]:
    """Child environment with a shared persistent XLA compilation cache (relaunches compile once;
    the cached executables are the same programs, so results are unchanged) and its own TMPDIR:
    a child killed with SIGKILL cannot remove its temporary directories (Beam makes one per
    pipeline), so they land in the test's tree, not in the machine's /tmp."""
    return subprocess_env(
        TMPDIR=str(tmp_dir),
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


def last_metric_step(path: str | os.PathLike) -> int:
    """The step of the last complete JSON line of a metrics.jsonl (-1 if none)."""
    import json

    try:
        text = pathlib.Path(path).read_text()
    except FileNotFoundError:
        return -1
    step = -1
    for line in text.splitlines():
        try:
            step = max(step, int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            continue
    return step


def checkpoint_steps(ckpt_dir: str | os.PathLike) -> list[int]:
    """Complete orbax checkpoint steps (integer-named directories) in `ckpt_dir`."""
    try:
        names = os.listdir(ckpt_dir)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def has_tmp_entry(ckpt_dir: str | os.PathLike) -> bool:
    """True while orbax is writing a checkpoint (a `*tmp*` entry exists)."""
    try:
        return any("tmp" in n for n in os.listdir(ckpt_dir))
    except FileNotFoundError:
        return False
