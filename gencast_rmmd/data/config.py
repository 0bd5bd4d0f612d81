"""Data configuration: where the data come from, which time range, which grid, which task.

`DataConfig` is loaded from `configs/data/*.yaml` with the project's strict loader:

    from gencast_rmmd.config import load_config
    cfg = load_config(DataConfig, "gencast_1p0deg", kind="data")

The source is either a store path / fsspec URL (ARCO-ERA5 by default) or the word `embedded`, which
means the cached dinosaur Held-Suarez nature run (`gencast_rmmd.data.nature_run.embedded_store`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from gencast_rmmd.config import check_time_window, iso_time
from gencast_rmmd.data.task import TaskConfig

ARCO_ERA5 = "gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3"
EMBEDDED = "embedded"


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """Horizontal regridding applied on read.

    method:
      "none": keep the source grid (it must already be equiangular, lat ascending after reading).
      "subsample": every `subsample_factor`-th point in lat and lon, starting at the first point
        (0.25 deg with poles -> 1.0 deg with poles for factor 4: how GenCast's 1 deg data were made).
      "conservative": area-conservative averaging onto an equiangular grid of `lat_points` x
        `lon_points` cells (no poles when `with_poles` is false, e.g. 32 x 64 at 5.625 deg,
        WeatherBench 2's low-resolution grid; with poles, the first and last rows are polar caps).
    """

    method: Literal["none", "subsample", "conservative"] = "none"
    subsample_factor: int = 4
    lat_points: int = 32
    lon_points: int = 64
    with_poles: bool = False

    def validate(self) -> None:
        if self.subsample_factor < 1:
            raise ValueError(f"subsample_factor: must be >= 1, found {self.subsample_factor}")
        if self.lat_points < 2 or self.lon_points < 2:
            raise ValueError(
                f"lat_points/lon_points: must be >= 2, found {self.lat_points}x{self.lon_points}"
            )


@dataclasses.dataclass(frozen=True)
class NatureRunConfig:
    """The embedded dinosaur Held-Suarez nature run (see `gencast_rmmd.data.nature_run`).

    The model runs on a spectral grid (`truncation`: 21 -> T21 on a 32x64 Gaussian grid, 31 ->
    T31 on 48x96) with `sigma_layers` equally spaced sigma levels and an implicit-explicit RK3 step
    of `dt_minutes`; the output is evaluated from the spectral coefficients on the 5.625 deg
    equiangular 32x64 grid every `output_hours` (a divisor of 24: each day has the same output
    times).
    """

    spinup_days: int = 200
    days: int = 730
    seed: int = 0
    truncation: Literal[21, 31, 42] = 21
    sigma_layers: int = 8
    dt_minutes: float = 60.0
    output_hours: int = 12
    start_time: str = "2000-01-01T00:00"
    mountain_height_m: float = 2000.0
    perturbation_pa: float = 100.0

    def validate(self) -> None:
        if self.spinup_days < 0 or self.days < 1:
            raise ValueError(
                f"spinup_days must be >= 0 and days >= 1, found {self.spinup_days}, {self.days}"
            )
        if self.sigma_layers < 4:
            raise ValueError(f"sigma_layers: must be >= 4, found {self.sigma_layers}")
        if self.output_hours < 1 or 24 % self.output_hours:
            raise ValueError(
                "output_hours: must divide 24 (1, 2, 3, 4, 6, 8, 12 or 24), "
                f"found {self.output_hours}"
            )
        if self.dt_minutes <= 0 or (self.output_hours * 60) % self.dt_minutes:
            raise ValueError(
                f"dt_minutes: must divide output_hours*60 = {self.output_hours * 60}, "
                f"found {self.dt_minutes}"
            )
        np.datetime64(self.start_time)  # raises ValueError on a bad date


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """A data source turned into the canonical store for a task.

    task: the forecasting task (variables, levels, frames, step).
    source: Zarr/NetCDF path or fsspec URL (gs://, s3://, https://, memory://), or `embedded`.
    token: gcsfs token for gs:// URLs; null (default): the one fsspec's configuration names
      (`FSSPEC_GS_TOKEN`), else "anon", which reads public buckets without credentials. Use
      "google_default" (or a service-account file) only when the bucket needs credentials.
    time_start/time_stop: inclusive ISO times; null means the whole valid range of the source
      (ARCO-ERA5's `valid_time_start`/`valid_time_stop` attributes when present).
    grid: horizontal regridding applied on read.
    splits: named time ranges, e.g. {train: [1979-01-01, 2017-12-31], eval: [...]}.
    nature_run: settings of the embedded nature run (used when source is `embedded`).
    """

    task: TaskConfig
    source: str = ARCO_ERA5
    token: str | None = None
    time_start: str | None = None
    time_stop: str | None = None
    grid: GridConfig = GridConfig()
    splits: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    nature_run: NatureRunConfig = NatureRunConfig()

    def validate(self) -> None:
        self.task.validate()
        check_time_window(self, "time_start", "time_stop")
        for name, (a, b) in self.splits.items():
            ta, tb = iso_time(a, f"splits.{name}"), iso_time(b, f"splits.{name}")
            if ta > tb:
                raise ValueError(f"splits.{name}: start {a} is after stop {b}")

    def split(self, name: str) -> tuple[np.datetime64, np.datetime64]:
        """The inclusive (start, stop) of split `name` as datetime64[ns]."""
        if name not in self.splits:
            raise KeyError(f"no split {name!r}; configured splits: {sorted(self.splits)}")
        a, b = self.splits[name]
        return np.datetime64(a, "ns"), np.datetime64(b, "ns")

    @property
    def is_embedded(self) -> bool:
        return self.source == EMBEDDED


def load_data_config(path: str, overrides=()) -> DataConfig:
    """Load a data config by path or by name under `configs/data/` (strict, see `gencast_rmmd.config`)."""
    from gencast_rmmd.config import load_config

    return load_config(DataConfig, path, overrides, kind="data")
