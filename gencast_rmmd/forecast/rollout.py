"""Autoregressive ensemble rollout (GenCast's rollout, reference notes gencast.md §3.2, rmmd.md §4.5).

Each member is an independent autoregressive chain: at every 12 h step it draws its own noise,
samples the normalized residual from the model conditioned on its *own* last two states and the
forcings at the new time, adds the residual back to its last state and shifts its input frames
(`gencast_rmmd.data.normalization.targets_from_residuals` / `next_inputs`).

Randomness: member i of a forecast uses key_i = fold_in(run_key, i) with run_key =
fold_in(PRNGKey(seed), init time in hours since 1970), and step k uses fold_in(key_i, k). So a
member's trajectory does not depend on how many members are run, in which block, or on which
device: the first N members of an M-member ensemble equal an N-member ensemble.

Execution: members are batched with `vmap`, the member batch is sharded over the available devices
(`jax.sharding`, axis "members"), lead steps run in a `lax.scan`, and the whole rollout is one
`jax.jit`-compiled function per (grid, lead steps, block size), reused for every init time and
member block (the last block is padded), so a forecast campaign compiles once. Inside jit there is
no xarray: plain [lat, lon, C] arrays in the task's channel layout.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gencast_rmmd.data import normalization as nz
from gencast_rmmd.forecast.model import ForecastModel

_TRACES: collections.Counter = collections.Counter()


def trace_count(name: str = "rollout") -> int:
    """How many times the rollout body has been traced (= compiled) in this process."""
    return _TRACES[name]


def run_key(seed: int, init_time) -> jax.Array:
    """The key of one forecast: fold_in(PRNGKey(seed), hours of `init_time` since 1970)."""
    hours = int(np.datetime64(init_time, "h").astype(np.int64))
    return jax.random.fold_in(jax.random.PRNGKey(seed), hours % (2**31))


def member_keys(key: jax.Array, member_ids: Sequence[int]) -> jax.Array:
    """[B, 2] keys fold_in(key, i) for each member id i."""
    ids = jnp.asarray(np.asarray(member_ids, dtype=np.uint32))
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


class Rollout:
    """A compiled ensemble rollout of one model on one grid.

    Args:
      model: the `ForecastModel`.
      lat, lon: the grid ([n_lat] ascending, [n_lon]).
      block_size: members per compiled call (rounded up to a multiple of the device count).
      devices: devices to spread members over (default: all local devices).
    """

    def __init__(
        self,
        model: ForecastModel,
        lat: np.ndarray,
        lon: np.ndarray,
        block_size: int = 8,
        devices: Sequence[jax.Device] | None = None,
    ):
        self.model = model
        self.devices = list(devices or jax.local_devices())
        n_dev = len(self.devices)
        self.block_size = max(n_dev, -(-int(block_size) // n_dev) * n_dev)
        self.mesh = Mesh(np.array(self.devices), ("members",))
        self._member_sharding = NamedSharding(self.mesh, PartitionSpec("members"))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        step_fn, params = model.build(lat, lon)
        self.params = jax.device_put(params, self._replicated)
        norm, layout = model.norm, model.task.layout

        def member(params, key, inputs_phys, forcings_phys):
            # inputs_phys [lat, lon, C_in]; forcings_phys [N, lat, lon, C_f] at the target times.
            def body(inputs, xs):
                k, f_phys = xs
                rng = jax.random.fold_in(key, k)
                res = step_fn(
                    params,
                    rng,
                    nz.normalize_inputs(norm, inputs),
                    nz.normalize_forcings(norm, f_phys),
                )
                state = nz.targets_from_residuals(norm, res, inputs)
                return nz.next_inputs(layout, inputs, state, f_phys), state

            steps = jnp.arange(forcings_phys.shape[0], dtype=jnp.uint32)
            _, states = jax.lax.scan(body, inputs_phys, (steps, forcings_phys))
            return states  # [N, lat, lon, C_out]

        def run(params, keys, inputs_phys, forcings_phys):
            _TRACES["rollout"] += 1  # runs only while tracing: counts compilations
            return jax.vmap(member, in_axes=(None, 0, None, None))(
                params, keys, inputs_phys, forcings_phys
            )

        self._run = jax.jit(run, out_shardings=self._member_sharding)

    def __call__(
        self,
        key: jax.Array,
        member_ids: Sequence[int],
        inputs_phys: np.ndarray,
        forcings_phys: np.ndarray,
    ) -> np.ndarray:
        """Roll out members `member_ids` from one initial condition.

        Args:
          key: the forecast's run key (`run_key(seed, init_time)`).
          member_ids: member indices (their keys are fold_in(key, id)).
          inputs_phys: [lat, lon, C_in] physical inputs at the init time (input frames ending there).
          forcings_phys: [N, lat, lon, C_f] physical forcings at init + k step, k = 1..N.
        Returns:
          [len(member_ids), N, lat, lon, C_out] float32 physical states at the N lead times.
        """
        ids = list(member_ids)
        inputs = jax.device_put(jnp.asarray(inputs_phys, jnp.float32), self._replicated)
        forcings = jax.device_put(jnp.asarray(forcings_phys, jnp.float32), self._replicated)
        out = []
        for start in range(0, len(ids), self.block_size):
            block = ids[start : start + self.block_size]
            padded = block + [block[-1]] * (self.block_size - len(block))
            keys = jax.device_put(member_keys(key, padded), self._member_sharding)
            res = self._run(self.params, keys, inputs, forcings)
            out.append(np.asarray(res)[: len(block)])
        return np.concatenate(out, axis=0)
