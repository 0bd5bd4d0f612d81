"""Forecast models: a per-member step sampler plus the metadata a forecast store records.

A `ForecastModel` draws one 12 h step for one ensemble member:
`step(params, rng, inputs_norm [lat, lon, C_in], forcings_norm [lat, lon, C_f]) -> residual
[lat, lon, C_out]` (a sample of the normalized residual target, GenCast's diffusion space, §4.2 of
the RMMD notes). The rollout (`gencast_rmmd.forecast.rollout`) vmaps it over members, adds the
residual back to the last state and feeds states forward.

`load_forecast_model(checkpoint, stats_dir)` returns the teacher (DPM-Solver++ 2S with the
checkpoint's `sampler_config`) or, when the checkpoint carries `extra:student_sampler_config`, the
distilled student (K-step DDIM-eta sampler). The denoiser's graphs depend on the grid, so the step
function is built per grid by `ForecastModel.build(lat, lon)` (cached).

`persistence_model` is a model-free baseline: the residual is noise_scale times spherical white
noise (0 = deterministic persistence; > 0 a stochastic random-walk ensemble). It is what tests and
demos use when no trained checkpoint is at hand, and a sanity baseline on scorecards.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from gencast_rmmd.data.normalization import NormalizationArrays
from gencast_rmmd.data.task import TaskConfig

StepFn = Callable[[Any, Any, Any, Any], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class ForecastModel:
    """A step sampler with its normalization and provenance.

    Attributes:
      name: short model name recorded in the store (e.g. "teacher", "student-8").
      checkpoint: path of the checkpoint ("" for built-in models).
      sampler: description of the sampler and its settings.
      nfe: network evaluations per 12 h step (0 for persistence).
      task: the task (channel layout, step length).
      norm: normalization arrays in the task's layout.
      builder: (lat, lon) -> (step_fn, params); see the module docstring.
      provenance: e.g. {"train_start": ISO, "train_end": ISO, "teacher": ...}.
      sst_fill: value replacing SST NaNs in the inputs (GenCast fills with min_by_level).
      description: the checkpoint's description ("" for built-in models).
    """

    name: str
    checkpoint: str
    sampler: str
    nfe: int
    task: TaskConfig
    norm: NormalizationArrays
    builder: Callable[[np.ndarray, np.ndarray], tuple[StepFn, Any]]
    provenance: dict = dataclasses.field(default_factory=dict)
    sst_fill: float | None = None
    description: str = ""
    _built: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def build(self, lat: np.ndarray, lon: np.ndarray) -> tuple[StepFn, Any]:
        """(step_fn, params) on a grid; cached per grid so repeated calls reuse one function."""
        key = (
            tuple(np.round(np.asarray(lat, np.float64), 6)),
            tuple(np.round(np.asarray(lon, np.float64), 6)),
        )
        if key not in self._built:
            self._built[key] = self.builder(np.asarray(key[0]), np.asarray(key[1]))
        return self._built[key]

    def grid_problem(self, lat: np.ndarray, lon: np.ndarray) -> str | None:
        """Why the checkpoint must not run on this grid (another than it was trained on), or
        None (`model.checkpoint.trained_grid_problem`)."""
        from gencast_rmmd.model.checkpoint import trained_grid_problem

        names = f"{self.description} {os.path.basename(self.checkpoint)}"
        return trained_grid_problem(self.provenance, names, lat, lon)

    def attrs(self) -> dict[str, Any]:
        """Attributes a forecast store records about this model (strings and numbers)."""
        out: dict[str, Any] = {
            "model": self.name,
            "checkpoint": self.checkpoint,
            "sampler": self.sampler,
            "nfe_per_step": int(self.nfe),
            "step_hours": int(self.task.step_hours),
        }
        if self.provenance.get("train_start") and self.provenance.get("train_end"):
            out["training_period_start"] = str(self.provenance["train_start"])
            out["training_period_end"] = str(self.provenance["train_end"])
        for k, v in self.provenance.items():
            if k not in ("train_start", "train_end") and isinstance(v, (str, int, float)):
                out[f"provenance_{k}"] = v
        return out


def norm_from_stats_dir(
    stats_dir: str, task: TaskConfig
) -> tuple[NormalizationArrays, float | None]:
    """Normalization arrays for `task` and the SST fill value from a stats directory."""
    from gencast_rmmd.data.normalization import for_task
    from gencast_rmmd.data.stats import load_stats

    return for_task(load_stats(stats_dir), task, f"stats dir {stats_dir!r}")


def persistence_model(
    task: TaskConfig,
    norm: NormalizationArrays,
    noise_scale: float = 0.0,
    sst_fill: float | None = None,
    spherical_noise: bool = True,
) -> ForecastModel:
    """Stochastic persistence: residual = noise_scale * unit noise (normalized residual units).

    With noise_scale = 0 every member repeats the initial state (the classic persistence
    baseline); with noise_scale > 0 each member is a random walk whose 12 h increments have
    noise_scale times the climatological 12 h change std. Spherical white noise is used when the
    grid supports it (as GenCast's sampler), else i.i.d. Gaussian noise.
    """
    import jax.numpy as jnp

    def builder(lat, lon):
        from gencast_rmmd.model import sh_noise

        try:
            noise_fn = (
                sh_noise.make_sh_noise_fn(lat, lon) if spherical_noise else sh_noise.gaussian_noise
            )
        except Exception:  # grids the SH transform does not support
            noise_fn = sh_noise.gaussian_noise
        n_out = task.layout.n_targets

        def step(params, rng, inputs_norm, forcings_norm):
            shape = inputs_norm.shape[:-1] + (n_out,)
            return params["noise_scale"] * noise_fn(rng, shape)

        return step, {"noise_scale": jnp.float32(noise_scale)}

    return ForecastModel(
        name="persistence" if noise_scale == 0 else f"persistence(noise={noise_scale:g})",
        checkpoint="",
        sampler=f"none (residual = {noise_scale:g} x spherical white noise)",
        nfe=0,
        task=task,
        norm=norm,
        builder=builder,
        sst_fill=sst_fill,
    )


def checkpoint_sampler(ckpt: Any) -> tuple[Callable[..., Any], Any, int, bool]:
    """(sample_fn, sampler config, NFE per step, is_student) of a loaded checkpoint: the K-step
    student sampler when it carries `extra:student_sampler_config`, else DPM-Solver++ 2S with its
    `sampler_config`."""
    from gencast_rmmd.model import checkpoint as ckpt_lib

    student_tree = (ckpt.extra or {}).get("student_sampler_config")
    if student_tree:
        from gencast_rmmd.distill import student_sampler

        cfg = ckpt_lib.config_from_tree(
            student_sampler.StudentSamplerConfig, student_tree, "extra:student_sampler_config"
        )
        return student_sampler.sample, cfg, int(student_sampler.num_evaluations(cfg)), True
    from gencast_rmmd.model import dpm_solver

    cfg = ckpt.sampler_config
    return dpm_solver.sample, cfg, int(dpm_solver.num_evaluations(cfg)), False


def checkpoint_step(
    ckpt: Any, den: Any, lat: np.ndarray, lon: np.ndarray, noise_fn: Any = None
) -> StepFn:
    """The per-member 12 h step of a loaded checkpoint with its denoiser `den` on a grid (the
    module docstring's contract). `noise_fn` replaces the spherical white noise (benchmarks time
    the step without draws); by default it is built for the grid."""
    from gencast_rmmd.model import sh_noise
    from gencast_rmmd.model.denoiser import Conditioning

    sample_fn, cfg, _, _ = checkpoint_sampler(ckpt)
    if noise_fn is None:
        noise_fn = sh_noise.make_sh_noise_fn(lat, lon)
    shape = (1, len(lat), len(lon), ckpt.task_config.layout.n_targets)

    def step(params, rng, inputs_norm, forcings_norm):
        cond = Conditioning(inputs_norm[None], forcings_norm[None])
        return sample_fn(den.apply, params, rng, cond, shape, noise_fn, cfg)[0]

    return step


def load_forecast_model(
    checkpoint_path: str, stats_dir: str, name: str | None = None
) -> ForecastModel:
    """Load a teacher or student checkpoint (official `.npz` layout) as a `ForecastModel`.

    Teacher: DPM-Solver++ 2S with the checkpoint's `sampler_config` (NFE = 2N - 1 for N noise
    levels). Student: when `extra:student_sampler_config` is present, the K-step sampler
    (`gencast_rmmd.distill.student_sampler`, NFE = K). Noise is spherical white noise on the grid.
    The training period (`extra:provenance:train_start/train_end`) is kept for the leakage guard.
    """
    from gencast_rmmd.data.stats import check_trained_stats
    from gencast_rmmd.model import checkpoint as ckpt_lib
    from gencast_rmmd.remote import is_url

    # A local path or a URL (e.g. the official weights on GCS, read from a local copy); a missing
    # one is a CheckpointError naming it.
    ckpt = ckpt_lib.load_checkpoint(checkpoint_path)
    task = ckpt.task_config
    norm, sst = norm_from_stats_dir(stats_dir, task)
    extra = ckpt.extra or {}
    provenance = {k: _plain(v) for k, v in (extra.get("provenance") or {}).items()}
    check_trained_stats(provenance, stats_dir, checkpoint_path)
    _, cfg, nfe, student = checkpoint_sampler(ckpt)
    if student:
        sampler = f"student K={cfg.num_steps} (DDIM eta={cfg.eta}, {cfg.describe()})"
        default_name = f"student-{cfg.num_steps}"
    else:
        sampler = f"DPM-Solver++ 2S ({cfg.num_noise_levels} noise levels, churn {cfg.stochastic_churn_rate})"
        # The distillation's auxiliary denoiser (RUN/<phase>/aux.npz) samples as a teacher does
        # but is a model of the student's distribution: named for what it is.
        default_name = "aux" if provenance.get("role") == "aux" else "teacher"

    def builder(lat, lon):
        den, params = ckpt_lib.denoiser_from_checkpoint(ckpt, lat, lon, source=checkpoint_path)
        return checkpoint_step(ckpt, den, lat, lon), params

    return ForecastModel(
        name=name or default_name,
        checkpoint=checkpoint_path if is_url(checkpoint_path) else os.path.abspath(checkpoint_path),
        sampler=sampler,
        nfe=int(nfe),
        task=task,
        norm=norm,
        builder=builder,
        provenance=provenance,
        sst_fill=sst,
        description=ckpt.description,
    )


def _plain(v: Any) -> Any:
    a = np.asarray(v)
    if a.ndim == 0:
        return a.item() if a.dtype.kind != "U" else str(a)
    return a.tolist()
