"""Orbax checkpoints of a training state, with a JSON side record (data position, provenance).

A checkpoint directory `RUN/checkpoints/<step>/` holds two items:
- `state`: the array pytree (trainable params, optimizer state, step, rng key data), saved with
  orbax `StandardSave` and restored onto the caller's shardings (`StandardRestore` with an
  abstract target), so a run can resume on a different number of devices;
- `meta`: plain JSON (`step`, the data loader position, provenance, config, wall time), which is
  what makes resume exact (same data order) and what evaluation reads to refuse scoring inside the
  training period.

Orbax writes to a temporary directory and renames it when complete, so a crash mid-save leaves the
previous checkpoint intact. A run has started when its directory holds a complete checkpoint
(`latest_step(directory) is not None`), not when the directory exists: `CheckpointManager`
creates it before the first save, and a run stopped before that save (a divergence at step 1)
has trained nothing.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from gencast_rmmd.errors import CheckpointError, OutputError
from gencast_rmmd.remote import mib


def latest_step(directory: str | pathlib.Path) -> int | None:
    """The newest complete (finalized) checkpoint's step under `directory`, or None (also when
    `directory` does not exist). It reads the directory listing only: nothing is created, and
    unlike opening a `CheckpointManager` (a collective across processes) the processes of a
    multi-process run may call it independently."""
    return max(ocp.utils.checkpoint_steps(pathlib.Path(directory).absolute()), default=None)


class CheckpointManager:
    """Save/restore `(state pytree, meta dict)` pairs by step under `directory`.

    Args:
      directory: where the numbered step directories live (created if missing).
      max_to_keep: number of most recent checkpoints to keep (older ones are deleted).
    """

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 3):
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def path(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, meta: dict) -> pathlib.Path:
        """Write checkpoint `step` (blocking; returns its directory). Refuses with `OutputError`
        before writing when the disk has clearly too little room (`check_room`)."""
        self.check_room(step, state)
        self._mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta, step=step))
            ),
            force=True,
        )
        self._mngr.wait_until_finished()
        return self.path(step)

    def check_room(self, step: int, state: Any) -> None:
        """`OutputError` when the free space where checkpoint `step` goes is below what it
        takes (`checkpoint_bytes`). Orbax, out of space part-way, failed in each of its writer
        threads, hundreds of lines of tracebacks; this says it in one, before anything is
        written, and the older checkpoints stay as they are."""
        need = checkpoint_bytes(state)
        free = shutil.disk_usage(self.directory).free
        if free >= need:
            return
        last = self.latest_step()
        again = f"it resumes from step {last}" if last is not None else "it starts from step 0"
        raise OutputError(
            f"not enough free space for checkpoint {step} in {self.directory}: it takes about "
            f"{mib(need)}, {mib(free)} free; free some space (or give the run another --out) "
            f"and run the same command again: {again}"
        )

    def _existing_step(self, step: int | None) -> int:
        """`step`, or the latest when None; CheckpointError naming the steps there are when the
        directory holds no checkpoint at that step (orbax's own error read as a state mismatch)."""
        if step is None:
            step = self.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        steps = self.all_steps()
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint at step {step} in {self.directory}; it holds steps "
                f"{', '.join(map(str, steps))}"
            )
        return step

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore `(state, meta)` at `step` (default: latest) into the structure of `target`.

        `target` is a pytree of arrays (or `jax.ShapeDtypeStruct`s with shardings) with the same
        structure as what was saved; arrays come back with the target's shardings.
        """
        step = self._existing_step(step)
        abstract = jax.tree.map(_abstract, target)
        try:
            out = self._mngr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(
                f"checkpoint {self.path(step)} does not match the expected training state "
                f"(different model/config?): {e}"
            ) from None
        return out.state, dict(out.meta)

    def read_meta(self, step: int | None = None) -> dict:
        """Only the JSON record of checkpoint `step` (default: latest)."""
        step = self._existing_step(step)
        out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out.meta)

    def close(self) -> None:
        self._mngr.close()


# What a checkpoint takes on disk beyond its arrays' bytes: orbax's metadata files and OCDBT
# manifest (measured: 412 KiB for a 47 KiB state of 249 arrays), with room to spare.
CHECKPOINT_OVERHEAD_BYTES = 1 << 18
CHECKPOINT_BYTES_PER_ARRAY = 2048


def checkpoint_bytes(state: Any) -> int:
    """An upper estimate of the disk space a checkpoint of `state` takes: its arrays' bytes
    (global arrays: the whole of each), 2 KiB more per array and 256 KiB."""
    leaves = [x for x in jax.tree_util.tree_leaves(state) if hasattr(x, "nbytes")]
    return (
        sum(int(x.nbytes) for x in leaves)
        + CHECKPOINT_BYTES_PER_ARRAY * len(leaves)
        + CHECKPOINT_OVERHEAD_BYTES
    )


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return ocp.utils.to_shape_dtype_struct(x)
