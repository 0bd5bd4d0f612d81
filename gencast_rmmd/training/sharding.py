"""Data-parallel `jax.sharding` helpers: one mesh axis `data`, parameters replicated, batch sharded.

Everything runs under `jax.jit` with explicit shardings, so the math is that of one device with
the global batch (GSPMD inserts the cross-device reductions). That is what makes N devices give
the same loss and update as one device, up to float summation order.

Multi-host: call `maybe_initialize_distributed()` before anything touches a device. It calls
`jax.distributed.initialize()` when the environment says the job is multi-process
(`GENCAST_RMMD_DISTRIBUTED=1`, or `JAX_COORDINATOR_ADDRESS` / `COORDINATOR_ADDRESS` set, as on
Cloud TPU pods and SLURM launchers); each process then feeds its own slice of the global batch to
`shard_batch`, which assembles one global array.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gencast_rmmd.errors import ConfigError

DATA_AXIS = "data"

_DISTRIBUTED_ENV = ("GENCAST_RMMD_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")
# The number of processes and this one's index, for launchers JAX does not detect (several
# processes started by hand, e.g. one per GPU); on Cloud TPU, SLURM, Open MPI and GKE JAX
# finds them itself.
NUM_PROCESSES_ENV = "GENCAST_RMMD_NUM_PROCESSES"
PROCESS_ID_ENV = "GENCAST_RMMD_PROCESS_ID"


def maybe_initialize_distributed() -> bool:
    """Initialize multi-host JAX when the environment asks for it; return whether it did.

    Reads `GENCAST_RMMD_DISTRIBUTED` ("1" forces it; "0" disables it) and otherwise the usual
    coordinator variables; `GENCAST_RMMD_NUM_PROCESSES` and `GENCAST_RMMD_PROCESS_ID` where the
    launcher is not one JAX detects. Safe to call twice (the second call is a no-op). What JAX
    cannot work out from the environment is a `ConfigError` naming the variables to set, and so
    is a CPU host whose name does not resolve (gloo's collectives need its address).
    """
    flag = os.environ.get("GENCAST_RMMD_DISTRIBUTED")
    if flag == "0":
        return False
    if jax.distributed.is_initialized():  # a second call (once the backends are up, JAX
        return True  # refuses a second `initialize` with another message than "already")
    if flag != "1" and not any(os.environ.get(k) for k in _DISTRIBUTED_ENV[1:]):
        return False
    kwargs = {}
    for key, env in (("num_processes", NUM_PROCESSES_ENV), ("process_id", PROCESS_ID_ENV)):
        if os.environ.get(env):
            try:
                kwargs[key] = int(os.environ[env])
            except ValueError:
                raise ConfigError(f"{env} must be an integer, found {os.environ[env]!r}") from None
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:  # already initialized
        if "already" not in str(e).lower():
            raise
    except (ValueError, TypeError) as e:  # what the environment left undefined
        raise ConfigError(
            f"a multi-process run was asked for, but JAX cannot set it up: {str(e).rstrip('.')}. "
            "Outside the launchers JAX detects (Cloud TPU, SLURM, Open MPI, GKE), set "
            f"JAX_COORDINATOR_ADDRESS (host:port of process 0), {NUM_PROCESSES_ENV} and "
            f"{PROCESS_ID_ENV} for each process; GENCAST_RMMD_DISTRIBUTED=0 runs a single process"
        ) from None
    try:  # the backends start here; on CPU with several processes, gloo's TCP collectives too
        jax.devices()
    except RuntimeError as e:
        if "gloo" not in str(e):
            raise
        import socket

        reason = str(e).split(" (set JAX_PLATFORMS")[0]  # JAX's hint does not apply here
        raise ConfigError(
            "a multi-process run on CPU needs JAX's gloo collectives, which could not start "
            f"({reason}). gloo finds this machine's address by its host name, "
            f"{socket.gethostname()!r}: make that name resolve (e.g. an /etc/hosts line), or "
            "set GENCAST_RMMD_DISTRIBUTED=0 to run a single process"
        ) from None
    return True


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes) with axis `data`."""
    devs = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devs.reshape(-1), (DATA_AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for parameters, optimizer state and scalars: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Sharding that splits array axis `batch_axis` over the `data` mesh axis."""
    spec = [None] * batch_axis + [DATA_AXIS]
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf of `tree` fully replicated on the mesh (host values must agree across hosts)."""
    sharding = replicated_sharding(mesh)
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def shard_batch(local_batch: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Host-local numpy batch pytree -> global jax arrays sharded along `batch_axis`.

    Each process passes its own slice (its `1/process_count` share of the global batch along
    `batch_axis`); with one process that is the whole batch. Leaves with fewer dimensions than
    `batch_axis + 1` (scalars) are replicated instead.
    """
    sharding = batch_sharding(mesh, batch_axis)
    n_proc = jax.process_count()

    def put(x):
        x = np.asarray(x)
        if x.ndim <= batch_axis:
            return jax.device_put(x, replicated_sharding(mesh))
        global_shape = list(x.shape)
        global_shape[batch_axis] *= n_proc
        if global_shape[batch_axis] % mesh.size:
            raise ValueError(
                f"batch axis {batch_axis} of size {global_shape[batch_axis]} is not divisible by "
                f"the {mesh.size} devices of the data mesh"
            )
        if n_proc == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x, tuple(global_shape))

    return jax.tree.map(put, local_batch)
