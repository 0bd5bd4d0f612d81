"""Normalization as plain per-channel arrays, usable inside `jax.jit` (numpy or jax.numpy inputs).

GenCast normalizes inputs and forcings with `mean_by_level`/`stddev_by_level`, and predicts the
*residual* of each target that is also an input (target minus the newest input frame) divided by
`diffs_stddev_by_level`; targets that are not inputs (precipitation) are normalized with mean/std
(reference notes §3.3). `NormalizationArrays` holds those statistics expanded to the channel layout
of a task (`ChannelLayout`), so the same few formulas serve training, sampling and the rollout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gencast_rmmd.data.task import ChannelLayout, TaskConfig


@dataclasses.dataclass(frozen=True)
class NormalizationArrays:
    """Per-channel statistics in layout order (float32 numpy arrays).

    input_mean, input_std: [C_in]; forcing_mean, forcing_std: [C_f];
    target_scale: [C_out] (diffs stddev for residual targets, stddev otherwise);
    target_mean: [C_out] (0 for residual targets, the mean otherwise);
    last_input_of_target: [C_out] int (index into the inputs, -1 for non-residual targets).
    """

    input_mean: np.ndarray
    input_std: np.ndarray
    forcing_mean: np.ndarray
    forcing_std: np.ndarray
    target_scale: np.ndarray
    target_mean: np.ndarray
    last_input_of_target: np.ndarray

    @staticmethod
    def from_stats(stats: dict[str, Any], layout: ChannelLayout) -> NormalizationArrays:
        """Build from GenCast-style statistics.

        Args:
          stats: mapping with keys "mean", "stddev", "diffs_stddev", each an xarray Dataset (or a
            mapping var -> array) keyed by variable name; atmospheric variables have a `level` dim.
          layout: the task's channel layout.
        Raises:
          KeyError: the statistics lack a variable or level of the layout (the message names
            it); ValueError: they give a non-finite scale.
        """

        def lookup(kind: str, var: str, level: int | None) -> float:
            ds = stats[kind]
            if var not in ds:
                raise KeyError(f"statistics {kind!r} have no entry for variable {var!r}")
            arr = ds[var]
            if level is not None:
                if not hasattr(arr, "sel"):
                    raise KeyError(f"statistics {kind!r}: {var!r} needs a level coordinate")
                found = arr["level"].values.tolist() if "level" in arr.coords else []
                if level not in found:
                    raise KeyError(
                        f"statistics {kind!r} have no level {level} hPa for {var!r} "
                        f"(levels found: {found})"
                    )
                arr = arr.sel(level=level)
            value = float(np.asarray(arr))
            return value

        def vec(channels, kind):
            return np.array([lookup(kind, v, lev) for (v, _, lev) in channels], dtype=np.float32)

        last = layout.last_input_of_target
        residual = last >= 0
        diffs = vec(layout.targets, "diffs_stddev")
        std_t = vec(layout.targets, "stddev")
        mean_t = vec(layout.targets, "mean")
        arrays = NormalizationArrays(
            input_mean=vec(layout.inputs, "mean"),
            input_std=vec(layout.inputs, "stddev"),
            forcing_mean=vec(layout.forcings, "mean"),
            forcing_std=vec(layout.forcings, "stddev"),
            target_scale=np.where(residual, diffs, std_t).astype(np.float32),
            target_mean=np.where(residual, 0.0, mean_t).astype(np.float32),
            last_input_of_target=last.astype(np.int32),
        )
        for name in ("input_std", "forcing_std", "target_scale"):
            a = getattr(arrays, name)
            if not np.all(np.isfinite(a)) or np.any(a <= 0):
                # Constant fields (e.g. a land-sea mask that is all sea) get unit scale, as a
                # zero stddev would divide by zero; anything else non-finite is an error.
                if np.any(~np.isfinite(a)):
                    raise ValueError(f"statistics give non-finite {name}: {a}")
                object.__setattr__(arrays, name, np.where(a > 0, a, 1.0).astype(np.float32))
        return arrays


def for_task(
    stats: dict[str, Any], task: TaskConfig, where: str = "the statistics dict"
) -> tuple[NormalizationArrays, float | None]:
    """The normalization of `task` from `stats` (`data.stats.load_stats`), and the SST fill value
    (`min_by_level` of sea_surface_temperature; None without it), for training and forecasting
    alike. DataError (naming `where`, e.g. the stats dir) when the statistics' differences were
    taken over another step than the task's (`data.stats.check_difference_step`) or they lack a
    variable or level of the task."""
    from gencast_rmmd.data.stats import check_difference_step
    from gencast_rmmd.errors import DataError

    check_difference_step(stats, task.step_hours, where)
    try:
        norm = NormalizationArrays.from_stats(stats, task.layout)
    except (KeyError, ValueError) as e:
        raise DataError(f"{where} does not cover the task: {e.args[0]}") from None
    sst = "sea_surface_temperature"
    fill = float(np.asarray(stats["min"][sst]).min()) if sst in stats.get("min", {}) else None
    return norm, fill


def _xp(x):
    return np if isinstance(x, np.ndarray) else __import__("jax.numpy", fromlist=["numpy"])


def normalize_inputs(norm: NormalizationArrays, inputs_phys):
    """Physical inputs [..., C_in] -> normalized inputs."""
    return (inputs_phys - norm.input_mean) / norm.input_std


def normalize_forcings(norm: NormalizationArrays, forcings_phys):
    """Physical target-time forcings [..., C_f] -> normalized forcings."""
    return (forcings_phys - norm.forcing_mean) / norm.forcing_std


def residual_targets(norm: NormalizationArrays, targets_phys, inputs_phys):
    """Physical targets [..., C_out] and physical inputs [..., C_in] -> normalized residual targets."""
    xp = _xp(targets_phys)
    base = _base(norm, inputs_phys, xp)
    return (targets_phys - base) / norm.target_scale


def targets_from_residuals(norm: NormalizationArrays, residuals_norm, inputs_phys):
    """Inverse of `residual_targets`: normalized residuals [..., C_out] -> physical targets."""
    xp = _xp(residuals_norm)
    base = _base(norm, inputs_phys, xp)
    return residuals_norm * norm.target_scale + base


def _base(norm: NormalizationArrays, inputs_phys, xp):
    idx = np.maximum(norm.last_input_of_target, 0)
    last = xp.take(inputs_phys, idx, axis=-1)
    return xp.where(norm.last_input_of_target >= 0, last, norm.target_mean)


def next_inputs(layout: ChannelLayout, inputs_phys, targets_phys, forcings_phys):
    """The next step's physical inputs: shift frames, append the new state and forcings.

    Args:
      inputs_phys: [..., C_in] current inputs; targets_phys: [..., C_out] the predicted state at
      the new time; forcings_phys: [..., C_f] the forcings at the new time (the newest input frame).
    Returns [..., C_in] in the same layout. Statics are carried over unchanged.
    """
    xp = _xp(inputs_phys)
    kind = layout.next_input_kind
    idx = layout.next_input_index
    from_inputs = xp.take(inputs_phys, np.where((kind == 0) | (kind == 3), idx, 0), axis=-1)
    from_targets = xp.take(targets_phys, np.where(kind == 1, idx, 0), axis=-1)
    from_forcings = xp.take(forcings_phys, np.where(kind == 2, idx, 0), axis=-1)
    out = xp.where(kind == 1, from_targets, from_inputs)
    return xp.where(kind == 2, from_forcings, out)


# How far (in the statistics' stddevs) an input field's global mean may lie from the statistics'
# mean. Data of the statistics' kind stay within about 2 (the nature run: 2.1 at most over its
# init times); other units lie 10 to 100 away: hPa for Pa ~125, deg C for K ~18 (t2m),
# geopotential height for geopotential ~26 (z at 100 hPa).
UNITS_Z = 8.0


def units_problem(
    inputs: np.ndarray, norm: NormalizationArrays, layout: ChannelLayout
) -> str | None:
    """Why physical inputs [..., C_in] do not look like the data the statistics `norm` describe
    (a field whose global mean lies more than `UNITS_Z` stddevs from the statistics' mean:
    other units, most likely), or None. Without it, such inputs were normalised as they were:
    a forecast, a teacher or a student far outside the statistics' distribution, silently."""
    mean, std = np.asarray(norm.input_mean), np.asarray(norm.input_std)
    found = np.asarray(inputs).reshape(-1, inputs.shape[-1]).mean(axis=0, dtype=np.float64)
    ok = np.isfinite(std) & (std > 0)
    z = np.where(ok, np.abs(found - mean) / np.where(ok, std, 1.0), 0.0)
    if not (z > UNITS_Z).any():
        return None
    i = int(np.argmax(z))
    var, _, level = layout.inputs[i]
    lev = f" at {level} hPa" if level is not None else ""
    return (
        f"{var!r}{lev} has a global mean of {found[i]:.6g}, {z[i]:.0f} stddevs from the "
        f"statistics' mean {mean[i]:.6g} (stddev {std[i]:.3g}): other units than the statistics' "
        "(Pa/hPa, K/deg C, geopotential/height)? Convert the data, or give the statistics of "
        "data like it"
    )
