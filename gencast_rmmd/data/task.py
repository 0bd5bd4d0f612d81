"""The forecasting task (GenCast's `TaskConfig`) and the channel layout it implies.

This is the one place that decides GenCast's channel order (reference notes §3.4):

- grid-node inputs: input variable names in Python `sorted()` order; each variable's channels are
  (time, level) flattened time-major; statics have one frame;
- the noisy-target block: target and forcing names merged and sorted, one frame each;
- outputs: sorted target names, each atmospheric variable unstacked over its levels.

Everything that stacks or unstacks channels (examples, the denoiser input, the rollout, checkpoints)
uses `ChannelLayout` instead of re-deriving the order.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

# ERA5 long names this project knows: name -> (has a level dim, units, kind).
# kind: "state" (time-varying model variable), "forcing" (computed from time/lon), "static".
VARIABLES: dict[str, tuple[bool, str, str]] = {
    "temperature": (True, "K", "state"),
    "geopotential": (True, "m**2 s**-2", "state"),
    "u_component_of_wind": (True, "m s**-1", "state"),
    "v_component_of_wind": (True, "m s**-1", "state"),
    "vertical_velocity": (True, "Pa s**-1", "state"),
    "specific_humidity": (True, "kg kg**-1", "state"),
    "2m_temperature": (False, "K", "state"),
    "mean_sea_level_pressure": (False, "Pa", "state"),
    "10m_u_component_of_wind": (False, "m s**-1", "state"),
    "10m_v_component_of_wind": (False, "m s**-1", "state"),
    "total_precipitation_12hr": (False, "m", "state"),
    "sea_surface_temperature": (False, "K", "state"),
    "year_progress_sin": (False, "1", "forcing"),
    "year_progress_cos": (False, "1", "forcing"),
    "day_progress_sin": (False, "1", "forcing"),
    "day_progress_cos": (False, "1", "forcing"),
    "geopotential_at_surface": (False, "m**2 s**-2", "static"),
    "land_sea_mask": (False, "1", "static"),
}

# WeatherBench's 13 pressure levels (hPa), GenCast's PRESSURE_LEVELS_WEATHERBENCH_13.
PRESSURE_LEVELS_13 = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)

GENCAST_TARGETS = (
    "2m_temperature",
    "mean_sea_level_pressure",
    "10m_v_component_of_wind",
    "10m_u_component_of_wind",
    "total_precipitation_12hr",
    "sea_surface_temperature",
    "temperature",
    "geopotential",
    "u_component_of_wind",
    "v_component_of_wind",
    "vertical_velocity",
    "specific_humidity",
)
GENCAST_FORCINGS = (
    "year_progress_sin",
    "year_progress_cos",
    "day_progress_sin",
    "day_progress_cos",
)
GENCAST_STATICS = ("geopotential_at_surface", "land_sea_mask")


def has_level(name: str) -> bool:
    """Whether ERA5 variable `name` is defined on pressure levels."""
    return VARIABLES[name][0]


def variable_kind(name: str) -> str:
    return VARIABLES[name][2]


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """What the model reads and predicts (GenCast's `TaskConfig`, plus explicit statics/frames).

    `input_variables` holds the time-varying state inputs, the forcings (as inputs at the input
    times) and the statics, as in GenCast. `forcing_variables` are given at the target time.
    """

    input_variables: tuple[str, ...]
    target_variables: tuple[str, ...]
    forcing_variables: tuple[str, ...] = GENCAST_FORCINGS
    static_variables: tuple[str, ...] = GENCAST_STATICS
    pressure_levels: tuple[int, ...] = PRESSURE_LEVELS_13
    input_frames: int = 2
    step_hours: int = 12

    @property
    def variables(self) -> tuple[str, ...]:
        """Every variable the task reads or predicts (inputs, targets, forcings, statics), sorted."""
        return tuple(
            sorted(
                {
                    *self.input_variables,
                    *self.target_variables,
                    *self.forcing_variables,
                    *self.static_variables,
                }
            )
        )

    @property
    def input_duration(self) -> str:
        """GenCast's `input_duration` string ('24h' for 2 frames of 12 h)."""
        return f"{self.input_frames * self.step_hours}h"

    def validate(self) -> None:
        for group in (
            "input_variables",
            "target_variables",
            "forcing_variables",
            "static_variables",
        ):
            names = getattr(self, group)
            for n in names:
                if n not in VARIABLES:
                    raise ValueError(
                        f"{group}: unknown variable {n!r}; known ERA5 names: {', '.join(sorted(VARIABLES))}"
                    )
            if len(set(names)) != len(names):
                raise ValueError(f"{group}: duplicate names in {list(names)}")
        for n in self.forcing_variables:
            if variable_kind(n) != "forcing":
                raise ValueError(f"forcing_variables: {n!r} is not a derived forcing")
        for n in self.static_variables:
            if variable_kind(n) != "static":
                raise ValueError(f"static_variables: {n!r} is not a static field")
            if n not in self.input_variables:
                raise ValueError(f"static_variables: {n!r} must also be in input_variables")
        for n in self.target_variables:
            if variable_kind(n) != "state":
                raise ValueError(
                    f"target_variables: {n!r} is a {variable_kind(n)}, not a state variable"
                )
        for n in self.input_variables:
            if variable_kind(n) == "state" and n not in self.target_variables:
                raise ValueError(
                    f"input_variables: state variable {n!r} is not a target; the rollout could not "
                    "feed it forward"
                )
        if not self.target_variables:
            raise ValueError("target_variables: must not be empty")
        if any(has_level(n) for n in self.target_variables + self.input_variables):
            if not self.pressure_levels:
                raise ValueError(
                    "pressure_levels: must not be empty when atmospheric variables are used"
                )
        if list(self.pressure_levels) != sorted(set(self.pressure_levels)):
            raise ValueError(
                f"pressure_levels: must be strictly increasing hPa, found {list(self.pressure_levels)}"
            )
        if self.input_frames < 1:
            raise ValueError(f"input_frames: must be >= 1, found {self.input_frames}")
        if self.step_hours <= 0 or 24 % self.step_hours:
            raise ValueError(f"step_hours: must divide 24, found {self.step_hours}")

    @functools.cached_property
    def layout(self) -> ChannelLayout:
        return ChannelLayout.build(self)


Channel = tuple[str, int, int | None]  # (variable, frame index, level in hPa or None)


@dataclasses.dataclass(frozen=True)
class ChannelLayout:
    """Channel bookkeeping for a task. All index arrays are numpy int arrays.

    Attributes:
      inputs: (variable, frame, level) per grid-input channel, GenCast order (C_in entries).
        frame counts from the oldest input frame (0) to the newest (input_frames - 1); statics: 0.
      targets: (variable, 0, level) per output channel (C_out entries).
      forcings: (variable, 0, None) per target-time forcing channel (C_f entries), sorted by name.
      noisy_block_index: indices into concat([noisy_targets, forcings], -1) that give the merged,
        name-sorted block the denoiser sees after the inputs (C_out + C_f entries).
      last_input_of_target: for each target channel, the input channel holding that variable/level
        at the newest input frame, or -1 if the target is not an input (e.g. precipitation).
      next_input_source: for each input channel, where the next step's value comes from:
        kind 0 = previous inputs (index into inputs), 1 = new target state (index into targets),
        2 = forcing at the new time (index into forcings), 3 = static (index into inputs).
    """

    inputs: tuple[Channel, ...]
    targets: tuple[Channel, ...]
    forcings: tuple[Channel, ...]
    noisy_block_index: np.ndarray
    last_input_of_target: np.ndarray
    next_input_kind: np.ndarray
    next_input_index: np.ndarray

    @property
    def n_inputs(self) -> int:
        return len(self.inputs)

    @property
    def n_targets(self) -> int:
        return len(self.targets)

    @property
    def n_forcings(self) -> int:
        return len(self.forcings)

    @property
    def n_denoiser_grid_features(self) -> int:
        """Grid-node features fed to the encoder, without the 3 structural ones."""
        return self.n_inputs + self.n_targets + self.n_forcings

    def target_slices(self) -> dict[str, slice]:
        """Variable name -> slice of its channels in the target (output) block."""
        return _slices(self.targets)

    def input_slices(self) -> dict[str, slice]:
        """Variable name -> slice of its channels in the input block (all frames)."""
        return _slices(self.inputs)

    def forcing_slices(self) -> dict[str, slice]:
        return _slices(self.forcings)

    @staticmethod
    def build(task: TaskConfig) -> ChannelLayout:
        levels = tuple(task.pressure_levels)

        def var_channels(name: str, frames: int) -> list[Channel]:
            lv = levels if has_level(name) else (None,)
            return [(name, f, lev) for f in range(frames) for lev in lv]

        inputs: list[Channel] = []
        for name in sorted(task.input_variables):
            frames = 1 if variable_kind(name) == "static" else task.input_frames
            inputs.extend(var_channels(name, frames))
        targets: list[Channel] = []
        for name in sorted(task.target_variables):
            targets.extend(var_channels(name, 1))
        forcings: list[Channel] = []
        for name in sorted(task.forcing_variables):
            forcings.extend(var_channels(name, 1))

        # Merged block: sorted names over targets and forcings; index into concat(targets, forcings).
        tpos = {c: i for i, c in enumerate(targets)}
        fpos = {c: len(targets) + i for i, c in enumerate(forcings)}
        merged: list[int] = []
        for name in sorted(set(task.target_variables) | set(task.forcing_variables)):
            for c in var_channels(name, 1):
                merged.append(tpos[c] if c in tpos else fpos[c])

        ipos = {c: i for i, c in enumerate(inputs)}
        newest = task.input_frames - 1
        last_input = np.array(
            [ipos.get((v, newest, lev), -1) for (v, _, lev) in targets], dtype=np.int32
        )

        kinds, idx = [], []
        for v, f, lev in inputs:
            kind = variable_kind(v)
            if kind == "static":
                kinds.append(3)
                idx.append(ipos[(v, f, lev)])
            elif f < newest:
                kinds.append(0)
                idx.append(ipos[(v, f + 1, lev)])
            elif kind == "forcing":
                kinds.append(2)
                idx.append(forcings.index((v, 0, lev)) if (v, 0, lev) in forcings else -1)
            else:
                kinds.append(1)
                idx.append(tpos[(v, 0, lev)])
        if -1 in idx:
            missing = sorted({v for (v, _, _), i in zip(inputs, idx) if i == -1})
            raise ValueError(
                f"input forcings {missing} are not in forcing_variables, so the rollout cannot "
                "compute them at the next time"
            )
        return ChannelLayout(
            inputs=tuple(inputs),
            targets=tuple(targets),
            forcings=tuple(forcings),
            noisy_block_index=np.array(merged, dtype=np.int32),
            last_input_of_target=last_input,
            next_input_kind=np.array(kinds, dtype=np.int32),
            next_input_index=np.array(idx, dtype=np.int32),
        )


def _slices(channels: tuple[Channel, ...]) -> dict[str, slice]:
    out: dict[str, slice] = {}
    for i, (v, _, _) in enumerate(channels):
        s = out.get(v)
        out[v] = slice(i, i + 1) if s is None else slice(s.start, i + 1)
    return out


def gencast_task(levels: tuple[int, ...] = PRESSURE_LEVELS_13) -> TaskConfig:
    """GenCast's published task (`gencast.TASK`): 264 input channels at 13 levels."""
    state_inputs = tuple(v for v in GENCAST_TARGETS if v != "total_precipitation_12hr")
    return TaskConfig(
        input_variables=state_inputs + GENCAST_FORCINGS + GENCAST_STATICS,
        target_variables=GENCAST_TARGETS,
        forcing_variables=GENCAST_FORCINGS,
        static_variables=GENCAST_STATICS,
        pressure_levels=levels,
    )
