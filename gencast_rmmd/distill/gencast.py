"""Distil a GenCast teacher (official `.npz` or ours) into a K-step student: phase 1 MMD, phase 2
RMMD, on a canonical data store; export the students as official-layout `.npz` files.

Run directory layout (`run_distill(..., out=RUN)`):

    RUN/config.yaml            the DistillConfig used (a different config refuses to resume a
                               started phase, see `_comparable`)
    RUN/inputs.json            SHA-256 of the teacher and of the stats, the data store's id
                               (other bytes or a re-made store at the same paths refuse to
                               resume a started run)
    RUN/mmd/checkpoints/...    phase 1 training state (orbax), RUN/mmd/metrics.jsonl
    RUN/mmd/student.npz        phase 1 student (official layout + extra:student_sampler_config,
                               extra:provenance); RUN/mmd/aux.npz the phase 1 auxiliary denoiser
    RUN/rmmd/...               the same for phase 2 (RUN/rmmd/student.npz is the product)
    RUN/summary.json           per phase: steps, last metrics, steps/s, exports

Data: `ExampleSource` items (normalized inputs/forcings, normalized residual targets). Training
examples: those whose whole window (first input frame .. target) lies in
`data.train_start..train_end` of the config (`training.periods.select_init_times`, the teacher's
rule too); if unset, in the teacher's own training period (`extra:provenance`), else every valid
init time of the store. The provenance of every
checkpoint and export records the teacher, the config, the data store, the stats and the training
period (`train_start` = first input time used, `train_end` = last target time used), so that
evaluation can refuse to score init times inside it.

Reward / loss weights: per-point latitude weights (cos, mean 1) x GenCast's per-channel
level/variable weights (`model.grid.channel_weights`, rescaled to mean 1), shape [lat, 1, C].
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from gencast_rmmd.config import as_current, check_time_window, from_dict, load_yaml, to_dict
from gencast_rmmd.data.examples import MODEL_KEYS
from gencast_rmmd.distill.objectives import ObjectiveConfig, check_s_floor
from gencast_rmmd.distill.student_sampler import StudentSamplerConfig
from gencast_rmmd.distill.trainer import PhaseConfig, run_phase
from gencast_rmmd.errors import CheckpointError, DataError, OutputError
from gencast_rmmd.remote import check_input_file, check_local_out_dir, write_text
from gencast_rmmd.safety import file_sha256, refuse_changed_inputs
from gencast_rmmd.training import LoopConfig, OptimizerConfig, ShuffledBatches
from gencast_rmmd.training.checkpointing import latest_step
from gencast_rmmd.training.loop import config_changes, optimizer_resume_key
from gencast_rmmd.training.periods import (
    refuse_resume_on_other_examples,
    select_init_times,
    training_period,
)

PHASES = ("mmd", "rmmd")


@dataclasses.dataclass(frozen=True)
class DistillDataConfig:
    """Training window (inclusive ISO strings): an example is used only when its whole window,
    first input frame to target, lies inside it (`training.periods.select_init_times`, as for
    the teacher); None: see module doc. local_cache:
    "auto" (local copy of small stores, see `data.examples.resolve_local_cache`), "off", or a
    directory for memory-mapped copies of the store's variables."""

    train_start: str | None = None
    train_end: str | None = None
    local_cache: str | None = "auto"

    def validate(self) -> None:
        check_time_window(self, "train_start", "train_end")


@dataclasses.dataclass(frozen=True)
class WeightsConfig:
    """Per-point weights of the CRPS reward (and of the MMD/L2/aux terms if
    `objective.weight_regularizers`). variable_weights None = GenCast's (`model.grid`)."""

    latitude: bool = True
    per_level: bool = True
    variable_weights: dict[str, float] | None = None


def _default_phase(kind: str) -> PhaseConfig:
    if kind == "mmd":
        obj = ObjectiveConfig()
    else:
        obj = ObjectiveConfig(
            start="on_policy_continuous",
            members=2,
            reward_weight=0.3,
            l2_weight=0.15,
            update_schedule="simultaneous",
        )
    return PhaseConfig(
        objective=obj,
        loop=LoopConfig(num_steps=300_000, batch_size=16, grad_accum_steps=8),
        optimizer=OptimizerConfig(learning_rate=1e-7),
    )


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """A distillation run (YAML: configs/distill/*.yaml). See docs/distill.md."""

    student_sampler: StudentSamplerConfig = StudentSamplerConfig()
    mmd: PhaseConfig = dataclasses.field(default_factory=lambda: _default_phase("mmd"))
    rmmd: PhaseConfig = dataclasses.field(default_factory=lambda: _default_phase("rmmd"))
    weights: WeightsConfig = WeightsConfig()
    data: DistillDataConfig = DistillDataConfig()
    noise: Literal["spherical", "gaussian"] = "spherical"
    description: str = ""

    def validate(self) -> None:
        self.student_sampler.validate()
        for p in (self.mmd, self.rmmd):
            p.objective.validate()
            p.loop.validate()
            p.optimizer.validate()
        if (
            self.mmd.objective.reference == "frozen_aux"
            or self.mmd.objective.aux_update == "frozen"
        ):
            raise ValueError("mmd.objective: phase 1 has no frozen phase-1 auxiliary to use")
        if self.mmd.objective.l2_weight > 0:
            raise ValueError("mmd.objective.l2_weight: phase 1 has no frozen phase-1 student")
        for ph in PHASES:
            check_s_floor(getattr(self, ph).objective, self.student_sampler, f"{ph}.objective.")
            obj = getattr(self, ph).objective
            if obj.reward_weight > 0 and obj.members < 2:
                # The reward here is the fair CRPS (the image path's custom rewards take M = 1).
                raise ValueError(
                    f"{ph}.objective.members: the CRPS reward needs >= 2 members per conditioning "
                    f"(the paper's M = 2), found {obj.members}; with one member the fair CRPS is "
                    "the absolute error, which rewards collapsing the ensemble onto its median"
                )
        self.data.validate()


# --------------------------------------------------------------------------------------------


def resolve_teacher(path: str | os.PathLike) -> str:
    """A teacher `.npz` (a local path, made absolute, or a URL as given, such as the official
    weights on GCS), or a teacher run directory holding `teacher.npz`."""
    from gencast_rmmd.remote import is_url, source_path

    if is_url(path):
        return source_path(path)  # load_checkpoint reads a local copy, or names what is missing
    p = pathlib.Path(source_path(path))
    if p.is_dir():
        cand = p / "teacher.npz"
        if cand.is_file():
            return str(cand)
        raise CheckpointError(
            f"teacher directory {p} holds no teacher.npz (finish `teacher train` or run "
            "`teacher export`)"
        )
    check_input_file(p, "teacher checkpoint", "an .npz file or a teacher run", CheckpointError)
    return str(p)


def gencast_weights(cfg: WeightsConfig, lat: np.ndarray, layout) -> np.ndarray:
    """[lat, 1, C] float32 weights (latitude x channel), each factor of mean 1."""
    from gencast_rmmd.model import grid as grid_lib

    lat_w = grid_lib.latitude_weights(lat) if cfg.latitude else np.ones(len(lat), np.float32)
    ch = grid_lib.channel_weights(layout, cfg.variable_weights, cfg.per_level)
    ch = ch / ch.mean()
    return (lat_w[:, None, None] * ch[None, None, :]).astype(np.float32)


@dataclasses.dataclass
class _Setup:
    ckpt: Any
    teacher_path: str
    denoiser: Any
    teacher_params: Any
    source: Any
    noise_fn: Any
    weights: np.ndarray
    provenance: dict


def _setup(cfg: DistillConfig, teacher: str, data: str, stats: str, config_text: str) -> _Setup:
    from gencast_rmmd.data.examples import ExampleSource, resolve_local_cache
    from gencast_rmmd.data.stats import check_trained_stats
    from gencast_rmmd.model import checkpoint as ckpt_lib
    from gencast_rmmd.model import sh_noise
    from gencast_rmmd.remote import source_path

    teacher_path = resolve_teacher(teacher)
    ckpt = ckpt_lib.load_checkpoint(teacher_path)
    if (ckpt.extra or {}).get("student_sampler_config"):
        raise CheckpointError(f"{teacher_path} is a distilled student, not a teacher")
    role = ((ckpt.extra or {}).get("provenance") or {}).get("role")
    if role is not None and str(np.asarray(role)) == "aux":
        raise CheckpointError(
            f"{teacher_path} is a distillation's auxiliary denoiser (a model of its student's "
            "samples), not a teacher; give the teacher's .npz or its `teacher train` run"
        )
    task = ckpt.task_config
    store = source_path(data)  # a URL (gs://...) as given
    stats = source_path(stats)
    probe = ExampleSource(store, task, stats)
    probe.check_units()
    start, end = cfg.data.train_start, cfg.data.train_end
    tprov = (ckpt.extra or {}).get("provenance") or {}
    check_trained_stats(tprov, stats, teacher_path)
    if start is None and end is None and tprov.get("train_start"):
        start, end = str(np.asarray(tprov["train_start"])), str(np.asarray(tprov["train_end"]))
    times = select_init_times(probe.init_times, start, end, task)
    batch = max(cfg.mmd.loop.batch_size, cfg.rmmd.loop.batch_size)
    if times.size < batch:
        raise DataError(
            f"training window {start}..{end} holds {times.size} init times in {store}, fewer "
            f"than one batch ({batch})"
        )
    source = ExampleSource(
        store,
        task,
        stats,
        times=times,
        local_cache=resolve_local_cache(cfg.data.local_cache, probe),
    )
    names = f"{ckpt.description} {os.path.basename(teacher_path)}"
    problem = ckpt_lib.trained_grid_problem(tprov, names, source.lat, source.lon)
    if problem:
        raise DataError(f"teacher {teacher_path} does not fit --data {store}: {problem}")
    den, params = ckpt_lib.denoiser_from_checkpoint(ckpt, source.lat, source.lon, teacher_path)
    if cfg.noise == "spherical":
        noise_fn = sh_noise.make_sh_noise_fn(source.lat, source.lon)
    else:
        noise_fn = sh_noise.gaussian_noise
    train_start, train_end = training_period(times, task)
    provenance = {
        "teacher": str(teacher_path),
        # What the run depends on by content: a teacher retrained, statistics recomputed or a data
        # store re-made at the same paths must not resume into this run (`run_distill`) nor pass
        # for its inputs.
        **input_digests(teacher_path, stats, store),
        "teacher_description": ckpt.description,
        "config": config_text,
        "data_store": store,
        "stats": stats,
        "train_start": train_start,
        "train_end": train_end,
        "examples": int(times.size),
        "grid": ckpt_lib.grid_record(source.lat, source.lon),
    }
    weights = gencast_weights(cfg.weights, np.asarray(source.lat), task.layout)
    return _Setup(ckpt, teacher_path, den, params, source, noise_fn, weights, provenance)


def export_student(
    path: pathlib.Path,
    setup: _Setup,
    params: Any,
    cfg: DistillConfig,
    phase: str,
    step: int,
    role: str = "student",
) -> pathlib.Path:
    """Write `params` as an official-layout `.npz` with the student sampler and provenance."""
    from gencast_rmmd.model import checkpoint as ckpt_lib

    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
    extra: dict[str, Any] = {
        "provenance": dict(setup.provenance, phase=phase, step=int(step), role=role),
    }
    if role == "student":
        extra["student_sampler_config"] = ckpt_lib.config_to_tree(cfg.student_sampler)
    k = cfg.student_sampler.num_steps
    desc = f"{role} distilled with gencast-rmmd ({phase}, {k} steps) from: {setup.ckpt.description}"
    ck = ckpt_lib.make_checkpoint(
        host,
        setup.ckpt.task_config,
        setup.ckpt.model_config,
        license=setup.ckpt.license,
        description=desc,
        extra=extra,
    )
    return ckpt_lib.save_checkpoint(path, ck)


def _load_params(path: pathlib.Path, setup: _Setup) -> Any:
    from gencast_rmmd.model import checkpoint as ckpt_lib

    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: run phase 1 first (`--phase mmd` or `--phase both`)"
        )
    ck = ckpt_lib.load_checkpoint(path)
    lat, lon = setup.source.lat, setup.source.lon
    return ckpt_lib.denoiser_from_checkpoint(ck, lat, lon, str(path))[1]


def _started(out: pathlib.Path, ph: str) -> bool:
    """Whether phase `ph` of the run in `out` has trained: it holds a complete checkpoint (an
    empty `checkpoints/`, left by a phase that diverged before its first save, is no start)."""
    return latest_step(out / ph / "checkpoints") is not None


def _comparable(cfg_dict: dict, out: pathlib.Path) -> dict:
    """The parts of a config that must not change when a run resumes: everything except the
    loop's length/bookkeeping, the optimizers' settings but whether they clip
    (`optimizer_resume_key`: a lower learning rate after a divergence is a resume) and the
    description; a phase's section only once that phase has started (so phase 2 settings may
    still change after phase 1). Once phase 2 has started, phase 1's length is fixed too: a
    longer phase 1 would retrain and re-export `mmd/student.npz` / `aux.npz`, the frozen anchor
    G0 and auxiliary phase 2's resumed state was trained against."""
    d = json.loads(json.dumps(cfg_dict))
    for ph in PHASES:
        if not _started(out, ph):
            d.pop(ph, None)
            continue
        keep = ("num_steps",) if ph == "mmd" and _started(out, "rmmd") else ()
        for k in ("num_steps", "checkpoint_every", "keep_checkpoints", "log_every", "progress"):
            if k not in keep:
                d[ph]["loop"].pop(k, None)
        opt = d[ph].get("optimizer")
        d[ph]["aux_optimizer"] = optimizer_resume_key(d[ph].get("aux_optimizer") or opt)
        d[ph]["optimizer"] = optimizer_resume_key(opt)
    d.pop("description", None)
    d.get("data", {}).pop("local_cache", None)  # where examples are read from, not what
    return d


# What a run's trained state depends on by content or store id (RUN/inputs.json), with what to
# call another such input and the provenance entry that names its path.
INPUT_DIGESTS = {
    "teacher_sha256": ("another teacher", "teacher"),
    "stats_sha256": ("other normalisation statistics", "stats"),
    "data_store_id": ("another data store", "data_store"),
}


def input_digests(
    teacher: str | os.PathLike, stats: str | os.PathLike, data: str | os.PathLike
) -> dict[str, str]:
    """The `INPUT_DIGESTS` of a teacher checkpoint file, a stats dir and a data store: the
    teacher's (`training.teacher.input_digests`) plus the teacher's own bytes."""
    from gencast_rmmd.training.teacher import input_digests as training_inputs

    return {"teacher_sha256": file_sha256(teacher), **training_inputs(stats, data)}


def _check_inputs(out: pathlib.Path, inputs: dict, provenance: dict) -> None:
    """Refuse to resume a run begun from another teacher, other statistics or another data
    store (same paths, other bytes or a re-made store): its trained state would be continued
    against inputs it never saw. A run that has not started a phase takes the current inputs."""
    if not any(_started(out, ph) or (out / ph / "student.npz").exists() for ph in PHASES):
        return
    known = {k: (name, provenance[entry]) for k, (name, entry) in INPUT_DIGESTS.items()}
    refuse_changed_inputs(out, out / "inputs.json", inputs, known, "a distillation", "distil again")


def run_distill(
    cfg: DistillConfig,
    teacher: str | os.PathLike,
    data: str | os.PathLike,
    stats: str | os.PathLike,
    out: str | os.PathLike,
    phase: Literal["mmd", "rmmd", "both"] = "both",
    *,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) phase 1, phase 2 or both in run directory `out`; return the summary.

    Phase 2 reads phase 1's exports (`out/mmd/student.npz`, `out/mmd/aux.npz`): the frozen
    anchor G0, the frozen auxiliary, and the starting point of the student and auxiliary.
    `stop_after` stops a phase after that many steps without its final checkpoint (tests).
    """
    cfg.validate()
    out = check_local_out_dir(out, "a run directory", "distill")
    cfg_dict = to_dict(cfg)
    config_text = yaml.safe_dump(cfg_dict, sort_keys=False)
    cfg_file = out / "config.yaml"
    if cfg_file.exists():
        old = as_current(
            load_yaml(cfg_file.read_text()), lambda d: to_dict(from_dict(DistillConfig, d))
        )
        changes = config_changes(_comparable(old, out), _comparable(cfg_dict, out))
        if changes:
            anchor = ""
            if any(c.startswith("mmd.") for c in changes) and _started(out, "rmmd"):
                anchor = (
                    "; phase 2 has started from phase 1's exports (its frozen anchor), so phase "
                    "1 can no longer change, not even its num_steps (to extend phase 1, copy "
                    "RUN/mmd to another --out and run there)"
                )
            raise OutputError(
                f"{out} holds a distillation run with a different config "
                f"({'; '.join(changes)}){anchor}; use another --out (to reuse phase 1, copy "
                "RUN/mmd there and run --phase rmmd), or the same settings to resume (num_steps, "
                "checkpoint_every, log_every and the optimizers' settings may change, except "
                "turning grad_clip_norm on or off)"
            )
    if phase == "rmmd":
        for name in ("student.npz", "aux.npz"):
            if not (out / "mmd" / name).is_file():
                raise CheckpointError(
                    f"{out / 'mmd' / name} is missing: run phase 1 first (`--phase mmd` or "
                    "`--phase both`)"
                )
    phases = PHASES if phase == "both" else (phase,)
    for ph in phases:
        getattr(cfg, ph).loop.check_devices(jax.device_count(), f"{ph}.loop.")
    # Everything a user can get wrong (teacher, store, stats, window) is checked before the run
    # directory is created, so a refused run leaves nothing behind.
    setup = _setup(cfg, str(teacher), str(data), str(stats), config_text)
    inputs = {k: setup.provenance[k] for k in INPUT_DIGESTS if k in setup.provenance}
    _check_inputs(out, inputs, setup.provenance)
    for ph in phases:  # the phases this call resumes (a copied RUN/mmd is only read by rmmd)
        refuse_resume_on_other_examples(out / ph, out / ph / "checkpoints", setup.provenance)
    out.mkdir(parents=True, exist_ok=True)
    write_text(cfg_file, config_text)
    write_text(out / "inputs.json", json.dumps(inputs, indent=1))
    from gencast_rmmd.model.denoiser import Conditioning

    def cond_fn(batch):
        return Conditioning(batch["inputs"], batch["forcings"])

    def target_fn(batch):
        return batch["targets"]

    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["teacher"] = str(setup.teacher_path)
    summary["provenance"] = {k: v for k, v in setup.provenance.items() if k != "config"}
    for ph in phases:
        pcfg: PhaseConfig = getattr(cfg, ph)
        if ph == "mmd":
            params = {
                "student": setup.teacher_params,
                "aux": setup.teacher_params,
                "teacher": setup.teacher_params,
            }
        else:
            stu = _load_params(out / "mmd" / "student.npz", setup)
            aux = _load_params(out / "mmd" / "aux.npz", setup)
            params = {
                "student": stu,
                "aux": aux,
                "teacher": setup.teacher_params,
                "student_frozen": stu,
                "aux_frozen": aux,
            }
            params = {g: params[g] for g in pcfg.objective.required_groups()}
        seed = pcfg.loop.seed + (0 if ph == "mmd" else 1)
        batches = ShuffledBatches(
            setup.source,
            pcfg.loop.batch_size,
            seed=seed,
            keys=MODEL_KEYS,
            grad_accum_steps=pcfg.loop.grad_accum_steps,
        )
        meta = {"kind": f"distill-{ph}", "provenance": dict(setup.provenance, phase=ph)}
        t0 = time.perf_counter()
        trained, trainer = run_phase(
            dataclasses.replace(
                pcfg, loop=dataclasses.replace(pcfg.loop, progress=progress and pcfg.loop.progress)
            ),
            cfg.student_sampler,
            params,
            batches,
            out / ph,
            stop_after=stop_after,
            denoise_fn=setup.denoiser.apply,
            noise_fn=setup.noise_fn,
            target_fn=target_fn,
            cond_fn=cond_fn,
            weights=jnp.asarray(setup.weights),
            meta=meta,
            desc=f"distill {ph}",
            config_key=ph,
        )
        seconds = time.perf_counter() - t0
        step = trainer.ckpt.latest_step() or 0
        done = step >= pcfg.loop.num_steps
        rec = {
            "steps": step,
            "complete": done,
            "seconds": seconds,
            "last_metrics": trainer.last_metrics,
            "run_dir": str(out / ph),
        }
        if not trainer.last_metrics and summary.get(ph):
            # No step ran (a finished phase run again): its last record still describes it.
            rec["last_metrics"] = summary[ph].get("last_metrics", {})
            rec["seconds"] = summary[ph].get("seconds", seconds)
        if done:
            rec["student"] = str(
                export_student(out / ph / "student.npz", setup, trained["student"], cfg, ph, step)
            )
            aux_params = trained.get("aux")
            if aux_params is not None:
                rec["aux"] = str(
                    export_student(
                        out / ph / "aux.npz", setup, aux_params, cfg, ph, step, role="aux"
                    )
                )
        trainer.ckpt.close()
        summary[ph] = rec
        write_text(summary_path, json.dumps(summary, indent=1, default=str))
        if not done:
            break
    return summary
