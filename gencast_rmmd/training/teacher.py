"""Train a GenCast teacher with GenCast's denoising loss, and export it as an official `.npz`.

`train_teacher` wires the pieces together on top of the shared loop (`gencast_rmmd.training.loop`):

- data: `gencast_rmmd.data.examples.ExampleSource` (normalized inputs/forcings, normalized residual
  targets) in a deterministic, resumable order (`ShuffledBatches`: batch k is a pure function of
  the seed and k, so a resumed run sees exactly the batches an uninterrupted one would);
- model: `build_denoiser` (EDM-preconditioned GenCast denoiser) on the store's lat/lon grid;
- loss: `gencast_rmmd.model.losses.denoising_loss` with spherical-harmonic noise, the rho = 7
  training sigma distribution, the (sigma^2 + 1) / sigma^2 weight, latitude, pressure-level and
  per-variable weights (`gencast_rmmd.model.grid`);
- optimisation: Adam with linear warm-up + cosine decay (`OptimizerConfig`), gradient
  accumulation, data parallelism over all local devices (`jax.sharding`, batch split over the
  `data` axis), orbax checkpoints every `checkpoint_every` steps with exact resume, NaN/Inf guard,
  tqdm progress with loss and ETA, `metrics.jsonl`.

A run directory holds `run.json` (model config, task, training config, grid, data and stats paths:
what `export_teacher` needs to rebuild the model), `inputs.json` (SHA-256 of the statistics and
the data store's id: a run begun with other statistics or a store re-made at the same
paths is not resumed), `checkpoints/<step>/` and `metrics.jsonl`; at the end of training the
teacher is also exported to `teacher.npz` in the official GenCast layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.config import as_current, check_time_window, from_dict, to_dict
from gencast_rmmd.data.era5 import store_id
from gencast_rmmd.data.examples import MODEL_KEYS
from gencast_rmmd.data.stats import stats_sha256
from gencast_rmmd.data.task import TaskConfig
from gencast_rmmd.errors import CheckpointError, DataError, OutputError
from gencast_rmmd.model import grid as grid_lib
from gencast_rmmd.model.configs import ModelConfig
from gencast_rmmd.model.losses import denoising_loss
from gencast_rmmd.model.sh_noise import make_sh_noise_fn
from gencast_rmmd.remote import check_local_out_dir, source_path, write_text
from gencast_rmmd.safety import refuse_changed_inputs
from gencast_rmmd.training.checkpointing import latest_step
from gencast_rmmd.training.loop import (
    LoopConfig,
    OptimizerConfig,
    ShuffledBatches,
    Trainer,
    UpdateRule,
    config_changes,
    make_optimizer,
    make_schedule,
    optimizer_resume_key,
    say_warmup,
)
from gencast_rmmd.training.periods import (
    refuse_resume_on_other_examples,
    select_init_times,
    training_period,
)

RUN_FILE = "run.json"
EXPORT_NAME = "teacher.npz"
# SHA-256 of the normalisation statistics the run trains with (`data.stats.stats_sha256`) and the
# data store's id (`data.era5.store_id`): other statistics or a store re-made at
# the same paths must not resume into the run (`train_teacher`). With what to call each, and the
# run field that names its path.
INPUTS_FILE = "inputs.json"
INPUT_DIGESTS = {
    "stats_sha256": ("other normalisation statistics", "stats"),
    "data_store_id": ("another data store", "data"),
}


GROUP = "denoiser"
DEFAULT_LICENSE = (
    "Weights trained with gencast-rmmd (Apache-2.0 code) on the data named in "
    "extra:provenance; the data's own terms apply."
)


@dataclasses.dataclass(frozen=True)
class TeacherTrainingConfig:
    """Hyper-parameters of a teacher training run (CLI: `--set training.<field>=...`).

    num_steps, batch_size (global, all devices and accumulation micro-steps), grad_accum_steps,
    optimizer (Adam + warm-up/cosine by default), checkpoint_every, keep_checkpoints, log_every,
    seed (data order, init and noise). train_start/train_end: the training window (inclusive
    ISO): an example is used only when its whole window, first input frame to target, lies
    inside it (`periods.select_init_times`, the distillation's rule too); None: unbounded on that
    side. variable_weights: per-variable loss weights (None: GenCast's,
    `grid.GENCAST_VARIABLE_WEIGHTS`); per_level_weights: pressure-proportional level weights.
    local_cache: "auto" (memory-mapped local copy of small local stores, see
    `data.examples.resolve_local_cache`), "off", or a directory for that copy.
    """

    num_steps: int = 2000
    batch_size: int = 4
    grad_accum_steps: int = 1
    optimizer: OptimizerConfig = OptimizerConfig(
        learning_rate=1e-3, schedule="cosine", warmup_steps=100, end_learning_rate=1e-5
    )
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    train_start: str | None = None
    train_end: str | None = None
    variable_weights: dict[str, float] | None = None
    per_level_weights: bool = True
    local_cache: str | None = "auto"

    def validate(self) -> None:
        self.loop_config().validate()
        self.optimizer.validate()
        check_time_window(self, "train_start", "train_end")

    def loop_config(self, progress: bool = True) -> LoopConfig:
        return LoopConfig(
            num_steps=self.num_steps,
            batch_size=self.batch_size,
            grad_accum_steps=self.grad_accum_steps,
            checkpoint_every=self.checkpoint_every,
            keep_checkpoints=self.keep_checkpoints,
            log_every=self.log_every,
            seed=self.seed,
            progress=progress,
        )


@dataclasses.dataclass(frozen=True)
class TeacherRun:
    """Everything that defines a run (stored as `run.json`)."""

    model: ModelConfig
    task: TaskConfig
    training: TeacherTrainingConfig
    data: str
    stats: str
    lat: tuple[float, ...]
    lon: tuple[float, ...]
    model_source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "model": to_dict(self.model),
            "task": to_dict(self.task),
            "training": to_dict(self.training),
            "data": self.data,
            "stats": self.stats,
            "lat": list(self.lat),
            "lon": list(self.lon),
            "model_source": self.model_source,
        }

    @staticmethod
    def from_json(d: dict[str, Any], source: str) -> TeacherRun:
        return TeacherRun(
            model=from_dict(ModelConfig, d["model"], f"{source}:model"),
            task=from_dict(TaskConfig, d["task"], f"{source}:task"),
            training=from_dict(TeacherTrainingConfig, d["training"], f"{source}:training"),
            data=d["data"],
            stats=d["stats"],
            lat=tuple(d["lat"]),
            lon=tuple(d["lon"]),
            model_source=d.get("model_source", ""),
        )


def read_run(run_dir: str | os.PathLike) -> TeacherRun:
    """Read `run.json` of a teacher run directory (CheckpointError if absent or malformed)."""
    p = pathlib.Path(run_dir) / RUN_FILE
    if not p.is_file():
        raise CheckpointError(
            f"{run_dir}: not a teacher run directory (expected {RUN_FILE} written by "
            "`gencast-rmmd teacher train`)"
        )
    try:
        return TeacherRun.from_json(json.loads(p.read_text()), str(p))
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: malformed run record ({e})") from None


def make_teacher_loss(denoiser, noise_fn, noise_cfg, lat_weights, chan_weights):
    """`loss_fn(params, batch, rng) -> (loss, metrics)` for the shared `Trainer`.

    `params[GROUP]` are the denoiser params; `batch` holds inputs [b, lat, lon, C_in], forcings
    [b, lat, lon, C_f] and targets [b, lat, lon, C_out] (normalized residuals).
    """
    from gencast_rmmd.model.denoiser import Conditioning

    lat_w = jnp.asarray(lat_weights, jnp.float32)
    chan_w = jnp.asarray(chan_weights, jnp.float32)

    def loss_fn(params, batch, rng):
        cond = Conditioning(batch["inputs"], batch["forcings"])
        loss, aux = denoising_loss(
            denoiser.apply,
            params[GROUP],
            rng,
            batch["targets"],
            cond,
            noise_fn,
            noise_cfg,
            lat_w,
            chan_w,
        )
        return loss, {"weighted_mse": jnp.mean(aux["mse"])}

    return loss_fn


def _build(run: TeacherRun):
    from gencast_rmmd.model.denoiser import build_denoiser

    lat, lon = np.asarray(run.lat), np.asarray(run.lon)
    den = build_denoiser(
        run.model.denoiser_architecture_config,
        run.task,
        lat,
        lon,
        run.model.noise_encoder_config,
    )
    return den


def _trainer(run: TeacherRun, den, run_dir: pathlib.Path, progress: bool, meta: dict) -> Trainer:
    noise_fn = make_sh_noise_fn(np.asarray(run.lat), np.asarray(run.lon))
    lat_w = grid_lib.latitude_weights(np.asarray(run.lat))
    chan_w = grid_lib.channel_weights(
        run.task.layout, run.training.variable_weights, run.training.per_level_weights
    )
    loss_fn = make_teacher_loss(den, noise_fn, run.model.noise_config, lat_w, chan_w)
    n = run.training.num_steps
    opt = make_optimizer(run.training.optimizer, n)
    return Trainer(
        {"train": UpdateRule(loss_fn, (GROUP,))},
        {GROUP: opt},
        run.training.loop_config(progress),
        run_dir,
        meta=meta,
        schedules={GROUP: make_schedule(run.training.optimizer, n)},
        desc="teacher",
    )


def _comparable(d: dict) -> dict:
    """The parts of `run.json` a resumed run must keep: all but the length and bookkeeping, and
    of the optimizer only whether gradients are clipped (`optimizer_resume_key`: a lower learning
    rate after a divergence is a resume)."""
    d = json.loads(json.dumps(d))
    d["training"]["optimizer"] = optimizer_resume_key(d["training"].get("optimizer"))
    d["training"].pop("num_steps", None)
    d["training"].pop("log_every", None)
    d["model"].pop("description", None)  # free text, not a setting
    d["training"].pop("checkpoint_every", None)
    d["training"].pop("keep_checkpoints", None)
    d["training"].pop("local_cache", None)  # where examples are read from, not what
    return d


def input_digests(stats: str | os.PathLike, data: str | os.PathLike) -> dict[str, str]:
    """The `INPUT_DIGESTS` of a stats dir and a data store (no `data_store_id` for a store
    without a store id, such as ARCO-ERA5: it is not checked)."""
    found = store_id(data)
    return {"stats_sha256": stats_sha256(stats), **({"data_store_id": found} if found else {})}


def _started(out: pathlib.Path) -> bool:
    """Whether the run in `out` has trained anything: a complete checkpoint or an export (an empty
    `checkpoints/`, left by a run that diverged before its first save, is not a start)."""
    return latest_step(out / "checkpoints") is not None or (out / EXPORT_NAME).exists()


def _check_inputs(out: pathlib.Path, inputs: dict[str, str], run: TeacherRun) -> None:
    """Refuse to resume a run begun with other statistics or another data store at the same
    paths (its targets would change under a trained state). A run with no checkpoint or export
    yet takes the current inputs."""
    if not _started(out):
        return
    known = {k: (name, getattr(run, field)) for k, (name, field) in INPUT_DIGESTS.items()}
    refuse_changed_inputs(
        out, out / INPUTS_FILE, inputs, known, "a teacher training", "train again"
    )


def train_teacher(
    model: ModelConfig,
    task: TaskConfig,
    store: str | os.PathLike,
    stats: str | os.PathLike,
    out_dir: str | os.PathLike,
    training: TeacherTrainingConfig,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    model_source: str = "",
    export: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a teacher in `out_dir`; return a summary dict.

    Args:
      model: `ModelConfig` (architecture, noise encoder, sampler, training noise).
      task: the task; its variables/levels must be in `store`.
      store: canonical Zarr store; stats: stats directory (`gencast-rmmd data stats`).
      out_dir: run directory. If it holds a started run with the same model, task, data and
        training settings, training resumes from its latest checkpoint (`num_steps`, the
        bookkeeping and the optimizer's settings but whether it clips may change); a different
        started run there is an `OutputError`. A run with no checkpoint yet takes the settings.
      training: `TeacherTrainingConfig`.
      stop_after: stop after this many steps of this call without a final checkpoint (tests).
      export: write `teacher.npz` (official layout) when the run completes.
    Returns {"steps", "loss", "weighted_mse", "num_params", "num_tensors", "train_seconds",
    "steps_per_sec", "run_dir", "export", "train_start", "train_end", "examples"}.
    """
    from gencast_rmmd.data.examples import ExampleSource, resolve_local_cache
    from gencast_rmmd.model.denoiser import count_params

    training.validate()
    model.validate()
    # Variable weights that name no target, or are negative, are refused before anything is
    # written (`_trainer` builds the same vector once the data is open).
    grid_lib.channel_weights(task.layout, training.variable_weights, training.per_level_weights)
    out = check_local_out_dir(out_dir, "a run directory", "teacher train")
    store = source_path(store)  # a URL (gs://...) as given
    stats = source_path(stats)
    probe = ExampleSource(store, task, stats)
    probe.check_units()
    times = select_init_times(probe.init_times, training.train_start, training.train_end, task)
    if times.size < training.batch_size:
        raise DataError(
            f"training window {training.train_start}..{training.train_end} holds {times.size} "
            f"init times in {store}, fewer than one batch ({training.batch_size})"
        )
    source = ExampleSource(
        store,
        task,
        stats,
        times=times,
        local_cache=resolve_local_cache(training.local_cache, probe),
    )
    run = TeacherRun(
        model=model,
        task=task,
        training=training,
        data=store,
        stats=stats,
        lat=tuple(float(x) for x in source.lat),
        lon=tuple(float(x) for x in source.lon),
        model_source=model_source,
    )
    training.loop_config().check_devices(jax.device_count(), "training.")
    run_file = out / RUN_FILE
    if run_file.exists() and _started(out):
        old = as_current(
            json.loads(run_file.read_text()),
            lambda d: TeacherRun.from_json(d, str(run_file)).to_json(),
        )
        changes = config_changes(_comparable(old), _comparable(run.to_json()))
        if changes:
            raise OutputError(
                f"{out} holds a different teacher run ({'; '.join(changes)}); use another --out, "
                "or the same settings to resume (num_steps, checkpoint_every, log_every and the "
                "optimizer's settings may change, except turning grad_clip_norm on or off)"
            )
    inputs = input_digests(stats, store)
    _check_inputs(out, inputs, run)
    train_start, train_end = training_period(times, task)
    window = {"train_start": train_start, "train_end": train_end, "examples": int(times.size)}
    refuse_resume_on_other_examples(out, out / "checkpoints", window)
    out.mkdir(parents=True, exist_ok=True)
    write_text(run_file, json.dumps(run.to_json(), indent=1))
    write_text(out / INPUTS_FILE, json.dumps(inputs, indent=1))

    meta = {
        "kind": "teacher",
        "data": store,
        "stats": stats,
        **window,
        **inputs,
    }
    den = _build(run)
    # One compiled init instead of Haiku's op-by-op eager init (hundreds of tiny compilations).
    params = jax.jit(den.init)(jax.random.key(training.seed), *den.example_inputs(batch=1))
    n_params, n_tensors = count_params(params)
    trainer = _trainer(run, den, out, progress, meta)
    state = trainer.restore_or_init({GROUP: params})
    start = trainer.step_of(state)
    say_warmup(
        training.optimizer, training.num_steps, "training.optimizer", start, training.num_steps
    )
    batches = ShuffledBatches(
        source,
        training.batch_size,
        seed=training.seed,
        keys=MODEL_KEYS,
        grad_accum_steps=training.grad_accum_steps,
    )
    t0 = time.perf_counter()
    state = trainer.fit(state, {}, batches, stop_after=stop_after)
    seconds = time.perf_counter() - t0
    steps = trainer.step_of(state)
    summary = {
        "steps": steps,
        "loss": trainer.last_metrics.get("loss"),
        "weighted_mse": trainer.last_metrics.get("weighted_mse"),
        "num_params": n_params,
        "num_tensors": n_tensors,
        "train_seconds": seconds,
        "steps_per_sec": (steps - start) / seconds if seconds > 0 and steps > start else None,
        "run_dir": str(out),
        "export": None,
        "train_start": train_start,
        "train_end": train_end,
        "examples": int(times.size),
    }
    if export and steps >= training.num_steps:
        path = out / EXPORT_NAME
        # A run found complete keeps its export: re-written, its bytes could change (a field
        # added to the provenance since), and what was distilled from it would no longer match.
        if steps > start or not path.is_file():
            _export_params(run, trainer.params(state)[GROUP], path, meta)
        summary["export"] = str(path)
    trainer.ckpt.close()
    return summary


def _export_params(
    run: TeacherRun,
    params: Any,
    out: pathlib.Path,
    meta: dict,
    license: str = DEFAULT_LICENSE,
    description: str | None = None,
    step: int | None = None,
) -> pathlib.Path:
    from gencast_rmmd.model.checkpoint import grid_record, make_checkpoint, save_checkpoint

    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
    provenance = {
        "teacher": "",
        "config": run.model_source,
        "data_store": run.data,
        "stats": run.stats,
        "train_start": meta.get("train_start", ""),
        "train_end": meta.get("train_end", ""),
        "grid": grid_record(run.lat, run.lon),  # what forecasts and students must run on
    }
    # Runs begun before the statistics were keyed by content have no digest to record.
    provenance.update({k: meta[k] for k in INPUT_DIGESTS if k in meta})
    if step is not None:
        provenance["step"] = int(step)
    desc = description
    if desc is None:
        desc = run.model.description or "GenCast teacher trained with gencast-rmmd"
    ckpt = make_checkpoint(
        host,
        run.task,
        run.model,
        license=license,
        description=desc,
        extra={"provenance": provenance},
    )
    return save_checkpoint(out, ckpt)


def export_teacher(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    step: int | None = None,
    license: str = DEFAULT_LICENSE,
    description: str | None = None,
) -> pathlib.Path:
    """Write the teacher of run `run_dir` (latest checkpoint, or `step`) as an official `.npz`.

    The file has GenCast's layout (`params:*`, `task_config:*`, `denoiser_architecture_config:*`,
    `sampler_config:*`, `noise_config:*`, `noise_encoder_config:*`, `description`, `license`) plus
    `extra:provenance:*` (config, data store and its `data_store_id`, stats and their
    `stats_sha256`, train_start, train_end, step).
    """
    _check_export_target(out)
    run_dir = pathlib.Path(run_dir)
    run = read_run(run_dir)
    den = _build(run)
    abstract = den.param_shapes()
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    trainer = _trainer(run, den, run_dir, progress=False, meta={})
    if trainer.ckpt.latest_step() is None:
        raise CheckpointError(f"{run_dir}: no training checkpoint to export yet")
    state = trainer.init_state({GROUP: template})
    state, meta = trainer.ckpt.restore(state, step)
    trainer.ckpt.close()
    return _export_params(
        run,
        trainer.params(state)[GROUP],
        pathlib.Path(out),
        meta,
        license=license,
        description=description,
        step=int(meta.get("step", -1)),
    )


def _check_export_target(out: str | os.PathLike) -> None:
    """Refuse, before any work, a URL (the export is written on local disk), a path ending in '/'
    and an existing file
    that is not an .npz archive (a previous export is replaced; run.json or a note given as
    `--out` by mistake is not)."""
    from gencast_rmmd.remote import refuse_directory_path, refuse_url_out

    # pathlib would read gs://b/t.npz as the local path gs:/b/t.npz, and drop a final '/'
    refuse_url_out(out, "a path for the .npz", "teacher export")
    refuse_directory_path(out)
    if not os.path.isfile(out):
        return  # a directory or an unwritable path is refused by the atomic write, with its reason
    with open(out, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        raise OutputError(
            f"--out {os.fspath(out)!r} exists and is not an .npz archive (it starts {head!r}); "
            "give a new path, or the path of a previous export to replace"
        )


def describe_checkpoint(path: str | os.PathLike) -> str:
    """Human-readable summary of a GenCast `.npz` (official or ours): description, license, task,
    architecture, sampler (with network evaluations per step) and parameter count."""
    from gencast_rmmd.forecast.model import checkpoint_sampler
    from gencast_rmmd.model.checkpoint import load_checkpoint
    from gencast_rmmd.model.dpm_solver import num_evaluations

    ck = load_checkpoint(path, attention_type=None)
    _, used, nfe, is_student = checkpoint_sampler(ck)
    arch = ck.denoiser_architecture_config
    st = arch.sparse_transformer_config
    task = ck.task_config
    lay = task.layout
    s = ck.sampler_config
    n, t = ck.num_params()
    lines = [
        f"file:          {path}",
        f"description:   {ck.description}",
        f"license:       {ck.license}",
        "task:",
        f"  targets ({lay.n_targets} channels): {', '.join(task.target_variables)}",
        f"  inputs ({lay.n_inputs} channels): {', '.join(task.input_variables)}",
        f"  forcings: {', '.join(task.forcing_variables)}",
        f"  pressure levels: {', '.join(str(x) for x in task.pressure_levels)} hPa",
        f"  input duration: {task.input_duration} ({task.input_frames} frames, "
        f"{task.step_hours} h step)",
        "architecture:",
        f"  mesh refinement {arch.mesh_size} ({10 * 4**arch.mesh_size + 2} nodes), latent "
        f"{arch.latent_size}, GNN hidden layers {arch.hidden_layers}, radius fraction "
        f"{arch.radius_query_fraction_edge_length}",
        f"  transformer: {st.num_layers} layers, d_model {st.d_model}, {st.num_heads} heads, "
        f"k-hop {st.attention_k_hop}, ffw {st.ffw_hidden}, attention {st.attention_type} "
        f"(mask {st.mask_type})",
        "sampler (what `forecast` runs):",
    ]
    teacher_sampler = (
        f"DPM-Solver++ 2S: {s.num_noise_levels} noise levels {s.max_noise_level:g} -> "
        f"{s.min_noise_level:g} (rho {s.rho:g}), churn {s.stochastic_churn_rate:g} for sigma in "
        f"[{s.churn_min_noise_level:g}, {s.churn_max_noise_level:g}], S_noise "
        f"{s.noise_level_inflation_factor:g}; {num_evaluations(s)} network evaluations per step"
    )
    if is_student:
        grid = (
            f"cosine grid (shift {used.cosine_shift:g}, log-SNR {used.cosine_logsnr_min:g} .. "
            f"{used.cosine_logsnr_max:g})"
            if used.grid == "cosine"
            else f"{used.grid} grid (rho {used.rho:g})"
        )
        lines += [
            f"  student, {used.num_steps} steps: noise levels {used.max_noise_level:g} -> "
            f"{used.min_noise_level:g} on the {grid}, eta {used.eta:g}; {nfe} network "
            "evaluations per step",
            f"  (the teacher's, kept in the file and not used: {teacher_sampler})",
        ]
    else:
        lines.append(f"  {teacher_sampler}")
    lines += [
        f"training noise: rho {ck.noise_config.training_noise_level_rho:g} on "
        f"[{ck.noise_config.training_min_noise_level:g}, "
        f"{ck.noise_config.training_max_noise_level:g}]",
        f"parameters:    {n:,} in {t} tensors",
    ]
    prov = ck.extra.get("provenance") if isinstance(ck.extra, dict) else None
    if prov:
        lines.append("provenance:")
        for k, v in sorted(prov.items()):
            text = str(v).rstrip("\n")
            if "\n" in text:  # e.g. the distillation's config (YAML): a block below its key
                lines.append(f"  {k}:")
                lines += [f"    {line}" for line in text.splitlines()]
            else:
                lines.append(f"  {k}: {text}")
    return "\n".join(lines)
