"""The quickstart chain: nature run -> stats -> teacher -> MMD -> RMMD -> forecasts -> scorecard.

`gencast-rmmd quickstart --out DIR` runs the whole product on the embedded default (or on any
ERA5-schema store with `--data STORE --data-config CFG`) and writes `DIR/report.html` and
`DIR/summary.json`. Each stage calls the same library functions as its own CLI command, skips
itself when its output is already complete (so an interrupted quickstart resumes where it
stopped), and shows its own progress bar.

Profiles (`configs/quickstart/`): `default` (what `make demo` runs), `fast` (toy sizes, used by a
test) and `result` (`make result`, the headline measurement).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gencast_rmmd.config import dump_yaml, from_dict, load_config, load_yaml_file, to_dict
from gencast_rmmd.errors import AlreadyReported, ConfigError, OutputError
from gencast_rmmd.remote import check_out_dir, write_text

PROFILES = ("default", "fast", "result")
TUNE_BY = ("mean_crps", "win_rate")


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """Sizes of one quickstart profile (see `configs/quickstart/*.yaml`).

    data_config: data config name/path (task, source; `embedded` = the nature run).
    nature_run_days / nature_run_spinup_days: length of the embedded run (ignored for --data);
      it must be longer than eval_days + validation_days (checked when the chain runs on it).
    eval_days: the last `eval_days` of the store are held out (the teacher and student never train
      on them); forecasts start inside this window.
    validation_days: the `validation_days` before the held-out window are held out too (0: none);
      the student's sampling `eta` is tuned there, never on the held-out window (`tune_eta`).
    tune_eta / tune_by: with a validation window, the final student is forecast on it at each
      `eta` in `tune_eta` and scored against the teacher's forecast of the same init times; the
      `eta` with the best `tune_by` (`mean_crps`: largest mean CRPS gain over the teacher, or
      `win_rate`) is the one every student is sampled with on the held-out window. Empty: the
      trained `eta` (`student_sampler.eta` of the distill config).
    model_config / model_overrides: the teacher architecture (configs/model) and `--set` overrides.
    teacher_sampler_levels: noise levels of the teacher's DPM-Solver++ 2S (30 -> 59 evaluations,
      the RMMD paper's teacher; GenCast's default 20 -> 39).
    distill_config / distill_overrides: configs/distill and `--set` overrides.
    eval_init_times / eval_members / eval_lead_steps: the scorecard's size.
    speed_repeats: timed repetitions of one 12 h step for the wall-clock ratio.
    speed_one_member: also time the step with one member per call (`speedup_one_member`; off in
      the demo profile, whose 15-minute budget has little room left).
    ablation_offline: also train phase 2 in the offline ablation (re-noised truth instead of
      on-policy states, from the same phase-1 student) and score it against the teacher.
    """

    data_config: str = "embedded"
    nature_run_days: int = 730
    nature_run_spinup_days: int = 200
    eval_days: int = 90
    validation_days: int = 0
    tune_eta: tuple[float, ...] = ()
    tune_by: str = "mean_crps"
    model_config: str = "tiny"
    model_overrides: tuple[str, ...] = ()
    teacher_steps: int = 600
    teacher_batch_size: int = 4
    teacher_learning_rate: float = 1e-3
    teacher_sampler_levels: int = 30
    distill_config: str = "tiny"
    mmd_steps: int = 200
    rmmd_steps: int = 200
    distill_overrides: tuple[str, ...] = ()
    eval_init_times: int = 8
    eval_members: int = 4
    eval_lead_steps: int = 6
    speed_repeats: int = 3
    speed_one_member: bool = False
    ablation_offline: bool = False
    seed: int = 0

    def validate(self) -> None:
        for name in (
            "nature_run_days",
            "eval_days",
            "teacher_steps",
            "teacher_batch_size",
            "teacher_sampler_levels",
            "eval_init_times",
            "eval_members",
            "eval_lead_steps",
            "speed_repeats",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, found {getattr(self, name)}")
        if self.mmd_steps < 1 or self.rmmd_steps < 0:
            raise ValueError("mmd_steps must be >= 1 and rmmd_steps >= 0")
        if self.eval_members < 2:
            raise ValueError(f"eval_members: CRPS needs >= 2 members, found {self.eval_members}")
        for name in ("validation_days", "nature_run_spinup_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, found {getattr(self, name)}")
        if not self.teacher_learning_rate > 0:
            raise ValueError(
                f"teacher_learning_rate: must be > 0, found {self.teacher_learning_rate}"
            )
        if self.tune_eta and self.validation_days == 0:
            raise ValueError(
                "tune_eta: needs a validation window (validation_days > 0); tuning on the "
                "held-out window would score the choice on the data it was chosen on"
            )
        bad = [e for e in self.tune_eta if not 0 <= e <= 1]
        if bad:
            raise ValueError(f"tune_eta: every eta must be in [0, 1], found {bad}")
        if len(set(self.tune_eta)) != len(self.tune_eta):
            raise ValueError(f"tune_eta: repeated values in {list(self.tune_eta)}")
        if self.tune_by not in TUNE_BY:
            raise ValueError(
                f"tune_by: expected one of {', '.join(TUNE_BY)}, found {self.tune_by!r}"
            )


@dataclasses.dataclass
class Context:
    """Paths and settings shared by the stages."""

    out: pathlib.Path
    cfg: QuickstartConfig
    data_store: str | None = None  # --data
    data_config_path: str | None = None  # --data-config
    progress: bool = True
    store: str = ""
    times: dict[str, Any] = dataclasses.field(default_factory=dict)
    log: list[dict] = dataclasses.field(default_factory=list)

    def path(self, *parts: str) -> pathlib.Path:
        return self.out.joinpath(*parts)

    @classmethod
    def from_run(cls, out: str | pathlib.Path) -> Context:
        """The context of a finished (or started) quickstart run directory: its settings from
        `quickstart.yaml` and its store from `store.json` (for tools that reuse a run)."""
        out = pathlib.Path(out)
        marker = out / "quickstart.yaml"
        if not marker.exists():
            raise OutputError(f"{out} is not a quickstart run directory (no {marker.name})")
        raw = load_yaml_file(marker)
        if isinstance(raw, dict):  # the data keys are the run's, not the profile's
            raw = {k: v for k, v in raw.items() if k not in _DATA_KEYS}
        ctx = cls(out=out, cfg=from_dict(QuickstartConfig, raw, str(marker)))
        if (out / "store.json").exists():
            ctx.store = json.loads((out / "store.json").read_text())["store"]
        return ctx

    # Files the stages produce.
    @property
    def data_yaml(self) -> pathlib.Path:
        return self.path("data.yaml")

    @property
    def stats_dir(self) -> pathlib.Path:
        return self.path("stats")

    @property
    def teacher_run(self) -> pathlib.Path:
        return self.path("teacher")

    @property
    def teacher_npz(self) -> pathlib.Path:
        return self.path("teacher", "teacher.npz")

    @property
    def teacher_eval_npz(self) -> pathlib.Path:
        return self.path("teacher", f"teacher_{self.cfg.teacher_sampler_levels}levels.npz")

    @property
    def distill_run(self) -> pathlib.Path:
        return self.path("distill")

    @property
    def student_npz(self) -> pathlib.Path:
        """The final student: phase 2 (RMMD), or phase 1 when rmmd_steps is 0."""
        phase = "rmmd" if self.cfg.rmmd_steps > 0 else "mmd"
        return self.path("distill", phase, "student.npz")

    @property
    def mmd_student_npz(self) -> pathlib.Path:
        return self.path("distill", "mmd", "student.npz")

    def forecast_store(self, who: str) -> pathlib.Path:
        return self.path("forecasts", f"{who}.zarr")

    @property
    def eval_dir(self) -> pathlib.Path:
        return self.path("evaluation")

    @property
    def speed_json(self) -> pathlib.Path:
        return self.path("speed.json")


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------


def _open_zarr(path: str):
    from gencast_rmmd.data.era5 import open_store

    return open_store(path, chunks=None, trim_to_valid_range=False)


def _data_config(ctx: Context):
    from gencast_rmmd.data.config import load_data_config

    return load_data_config(ctx.data_config_path or ctx.cfg.data_config)


def _stage_data(ctx: Context) -> None:
    """The store (cached nature run or --data) and data.yaml with train/eval splits."""

    base = _data_config(ctx)
    if ctx.data_store:  # checked (`_check_data_store`) before the first stage
        from gencast_rmmd.remote import source_path

        ctx.store = source_path(ctx.data_store)
    else:
        from gencast_rmmd.data import nature_run

        nr = dataclasses.replace(
            base.nature_run,
            days=ctx.cfg.nature_run_days,
            spinup_days=ctx.cfg.nature_run_spinup_days,
            seed=ctx.cfg.seed,
        )
        ctx.store = str(
            nature_run.embedded_store(
                config=nr,
                levels_hpa=tuple(base.task.pressure_levels),
                progress=ctx.progress,
                fewer="set a smaller nature_run_days (--set nature_run_days=N)",
            )
        )
    with _open_zarr(ctx.store) as ds:
        times = ds["time"].values
    eval_steps = int(ctx.cfg.eval_days * 24 // base.task.step_hours)
    val_steps = int(ctx.cfg.validation_days * 24 // base.task.step_hours)
    if len(times) < eval_steps + val_steps + 20:
        raise ConfigError(
            f"the store has {len(times)} time steps; eval_days={ctx.cfg.eval_days} and "
            f"validation_days={ctx.cfg.validation_days} leave fewer than 20 for training"
        )
    if ctx.cfg.validation_days and val_steps == 0:
        raise ConfigError(
            f"validation_days={ctx.cfg.validation_days} is shorter than one "
            f"{base.task.step_hours} h step"
        )
    # [train][validation][eval]: every window ends before the next one starts.
    train_end = times[-eval_steps - val_steps - 1]
    fmt = lambda t: str(np.datetime_as_string(t, unit="m"))  # noqa: E731
    splits = {
        "train": (fmt(times[0]), fmt(train_end)),
        "eval": (fmt(times[-eval_steps]), fmt(times[-1])),
    }
    if val_steps:
        splits["validation"] = (fmt(times[-eval_steps - val_steps]), fmt(times[-eval_steps - 1]))
    derived = dataclasses.replace(base, splits=splits)
    if not ctx.data_store:
        derived = dataclasses.replace(derived, nature_run=nr)
    write_text(ctx.data_yaml, dump_yaml(derived))
    write_text(ctx.path("store.json"), json.dumps({"store": ctx.store}))
    ctx.times = {**splits, "all": times}


# Beside the statistics: the data store they were computed from, by path and store id.
STATS_SOURCE = "source.json"


def _stage_stats(ctx: Context) -> None:
    from gencast_rmmd.data.era5 import store_id
    from pipelines.stats import compute_stats_beam

    compute_stats_beam(ctx.store, str(ctx.stats_dir), step_hours=_task(ctx).step_hours)
    source = {"store": ctx.store, "data_store_id": store_id(ctx.store)}
    write_text(ctx.stats_dir / STATS_SOURCE, json.dumps(source))


def _stats_done(ctx: Context) -> bool:
    """The four files exist and were computed from the data store as it is now (a store re-made
    at the same path has another store id; statistics from before the record count as
    current). Recomputed statistics have other bytes, and the stages after say so."""
    from gencast_rmmd.data.era5 import store_id
    from gencast_rmmd.data.stats import STATS_FILES

    if not all((ctx.stats_dir / f).exists() for f in STATS_FILES.values()):
        return False
    record = ctx.stats_dir / STATS_SOURCE
    if not record.exists():
        return True
    return json.loads(record.read_text()).get("data_store_id") == store_id(ctx.store)


def _task(ctx: Context):
    from gencast_rmmd.data.config import load_data_config

    return load_data_config(str(ctx.data_yaml)).task


def _teacher_current(ctx: Context) -> bool:
    """True when the teacher exists and was trained with the run's current statistics and data
    store (a teacher exported before these were recorded counts as current)."""
    from gencast_rmmd.model.checkpoint import read_provenance
    from gencast_rmmd.safety import changed_digests
    from gencast_rmmd.training.teacher import input_digests

    if not ctx.teacher_npz.exists():
        return False
    current = input_digests(ctx.stats_dir, ctx.store)
    return not changed_digests(read_provenance(ctx.teacher_npz), current)


def _teacher_done(ctx: Context) -> bool:
    """The teacher is current and its forecast copy (`teacher_eval_npz`) was made from it."""
    from gencast_rmmd.model.checkpoint import read_provenance
    from gencast_rmmd.safety import changed_digests, file_sha256

    if not (_teacher_current(ctx) and ctx.teacher_eval_npz.exists()):
        return False
    current = {"source_sha256": file_sha256(ctx.teacher_npz)}
    return not changed_digests(read_provenance(ctx.teacher_eval_npz), current)


def _stage_teacher(ctx: Context) -> None:
    """Train the teacher unless it is current (re-exporting it would give other bytes, and the
    distillation keys on them), then write its forecast copy."""
    if not _teacher_current(ctx):
        _train_teacher(ctx)
    _write_eval_teacher(ctx)


def _train_teacher(ctx: Context) -> None:
    from gencast_rmmd.cli import main as cli_main

    args = [
        "teacher",
        "train",
        "--config",
        ctx.cfg.model_config,
        "--data",
        ctx.store,
        "--stats",
        str(ctx.stats_dir),
        "--out",
        str(ctx.teacher_run),
        "--task",
        str(ctx.data_yaml),
        "--split",
        "train",
        "--steps",
        str(ctx.cfg.teacher_steps),
        "--batch-size",
        str(ctx.cfg.teacher_batch_size),
        "--lr",
        str(ctx.cfg.teacher_learning_rate),
        "--seed",
        str(ctx.cfg.seed),
    ]
    for o in ctx.cfg.model_overrides:
        args += ["--set", o]
    if not ctx.progress:
        args.append("--no-progress")
    _run_cli(cli_main, args, "teacher train")
    if not ctx.teacher_npz.exists():
        raise OutputError(f"teacher training finished without writing {ctx.teacher_npz}")


def _write_eval_teacher(ctx: Context) -> None:
    """The teacher used for forecasts: same weights, `teacher_sampler_levels` noise levels; its
    provenance's `source_sha256` names the bytes it was copied from (`_teacher_done`)."""
    from gencast_rmmd.model.checkpoint import load_checkpoint, save_checkpoint
    from gencast_rmmd.safety import file_sha256

    ckpt = load_checkpoint(ctx.teacher_npz)
    sampler = dataclasses.replace(
        ckpt.sampler_config, num_noise_levels=ctx.cfg.teacher_sampler_levels
    )
    extra = dict(ckpt.extra or {})
    extra["provenance"] = {
        **(extra.get("provenance") or {}),
        "source_sha256": file_sha256(ctx.teacher_npz),
    }
    save_checkpoint(
        ctx.teacher_eval_npz, dataclasses.replace(ckpt, sampler_config=sampler, extra=extra)
    )


def _distill_sets(ctx: Context, extra: list[str]) -> list[str]:
    """The `--set` overrides of the quickstart's `distill` calls: step counts and seed, `extra`
    (a stage's own), then the profile's `distill_overrides`."""
    sets = [f"mmd.loop.num_steps={ctx.cfg.mmd_steps}", f"mmd.loop.seed={ctx.cfg.seed}"]
    if ctx.cfg.rmmd_steps > 0:
        sets += [f"rmmd.loop.num_steps={ctx.cfg.rmmd_steps}", f"rmmd.loop.seed={ctx.cfg.seed}"]
    return [*sets, *extra, *ctx.cfg.distill_overrides]


def _distill_args(ctx: Context, run: pathlib.Path, phase: str, extra: list[str]) -> list[str]:
    """`gencast-rmmd distill` arguments for the quickstart's teacher, store and step counts."""
    args = [
        "distill",
        "--config",
        ctx.cfg.distill_config,
        "--teacher",
        str(ctx.teacher_npz),
        "--data",
        ctx.store,
        "--stats",
        str(ctx.stats_dir),
        "--out",
        str(run),
        "--phase",
        phase,
    ]
    for o in _distill_sets(ctx, extra):
        args += ["--set", o]
    if not ctx.progress:
        args.append("--no-progress")
    return args


def _stage_distill(ctx: Context) -> None:
    """Phase 1 (MMD) then phase 2 (RMMD); the data window defaults to the teacher's own."""
    from gencast_rmmd.cli import main as cli_main

    phase = "both" if ctx.cfg.rmmd_steps > 0 else "mmd"
    _run_cli(cli_main, _distill_args(ctx, ctx.distill_run, phase, []), "distill")
    for path in (ctx.student_npz, ctx.mmd_student_npz):
        if not path.exists():
            raise OutputError(f"distillation finished without writing {path}")


def _distilled(ctx: Context, *students: pathlib.Path) -> bool:
    """True when every student exists and was distilled from the run's current teacher,
    statistics and data store (a student that predates recording them counts as such). Otherwise the distill
    stage runs again, and refuses a run directory begun from other inputs, naming it."""
    from gencast_rmmd.distill.gencast import input_digests
    from gencast_rmmd.model.checkpoint import read_provenance
    from gencast_rmmd.safety import changed_digests

    if not all(p.exists() for p in students):
        return False
    current = input_digests(ctx.teacher_npz, ctx.stats_dir, ctx.store)
    return not any(changed_digests(read_provenance(p), current) for p in students)


def _stage_distill_offline(ctx: Context) -> None:
    """The offline RMMD ablation: phase 2 from the same phase-1 student on re-noised truth."""
    from gencast_rmmd.cli import main as cli_main

    run = ctx.path("distill_offline")
    if not (run / "mmd").exists():
        tmp = run.with_name(run.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ctx.distill_run / "mmd", tmp / "mmd")
        os.replace(tmp, run)
    args = _distill_args(ctx, run, "rmmd", ["rmmd.objective.start=data"])
    _run_cli(cli_main, args, "distill (offline ablation)")


def eval_init_times(ctx: Context, split: str = "eval") -> list[str]:
    """Evenly spaced init times inside window `split` (the held-out `eval`, or `validation`),
    leaving room for the lead times: every target lies in the same window."""
    times = ctx.times.get("all")
    if times is None:
        with _open_zarr(ctx.store) as ds:
            times = ds["time"].values
    task = _task(ctx)
    from gencast_rmmd.data.config import load_data_config

    start, stop = load_data_config(str(ctx.data_yaml)).split(split)
    step = np.timedelta64(task.step_hours, "h")
    first = start  # targets (init + 12 h ...) are all after the training window
    last = min(times[-1], stop) - ctx.cfg.eval_lead_steps * step
    candidates = times[(times >= first) & (times <= last)]
    if len(candidates) < ctx.cfg.eval_init_times:
        setting = "eval_days" if split == "eval" else f"{split}_days"
        raise ConfigError(
            f"the {split} window has {len(candidates)} possible init times for "
            f"{ctx.cfg.eval_lead_steps} lead steps; eval_init_times={ctx.cfg.eval_init_times} "
            f"needs a longer {setting}"
        )
    idx = np.linspace(0, len(candidates) - 1, ctx.cfg.eval_init_times).round().astype(int)
    return [str(np.datetime_as_string(t, unit="s")) for t in candidates[idx]]


STUDENTS = ("student", "mmd_student", "offline_student")


def _trained_npz(ctx: Context, who: str) -> pathlib.Path:
    """The checkpoint of `who` as trained (students with their trained `eta`)."""
    return {
        "teacher": ctx.teacher_eval_npz,
        "student": ctx.student_npz,
        "mmd_student": ctx.mmd_student_npz,
        "offline_student": ctx.path("distill_offline", "rmmd", "student.npz"),
    }[who]


def with_student_eta(src: pathlib.Path, eta: float, dst: pathlib.Path) -> pathlib.Path:
    """`dst`: the student checkpoint `src` with its sampler's `eta` set (same weights); written
    once and re-used while `src` is unchanged (`dst` records `src`'s SHA-256; it must name both
    the student and the eta: `_eta_npz`)."""
    from gencast_rmmd.model.checkpoint import load_checkpoint, save_checkpoint
    from gencast_rmmd.safety import file_sha256

    source = file_sha256(src)
    if dst.exists():
        found = (load_checkpoint(dst, validate_params=False).extra or {}).get("eta_source_sha256")
        if found == source:
            return dst
    ckpt = load_checkpoint(src)
    extra = dict(ckpt.extra or {})
    if not extra.get("student_sampler_config"):
        raise OutputError(f"{src} is not a distilled student (no extra:student_sampler_config)")
    extra["student_sampler_config"] = dict(extra["student_sampler_config"], eta=float(eta))
    extra["eta_source_sha256"] = source
    return save_checkpoint(dst, dataclasses.replace(ckpt, extra=extra))


def tuned_eta(ctx: Context) -> float | None:
    """The `eta` chosen on the validation window (None: no tuning, students keep their own)."""
    if not ctx.cfg.tune_eta:
        return None
    path = ctx.path("tuning", "tuning.json")
    if not path.exists():
        raise OutputError(f"{path} is missing: the tuning stage has not run")
    return float(json.loads(path.read_text())["eta"])


def forecast_npz(ctx: Context, who: str) -> pathlib.Path:
    """The checkpoint forecast (and timed) as `who`: students at the tuned `eta`, if tuned."""
    eta = tuned_eta(ctx) if who in STUDENTS else None
    if eta is None:
        return _trained_npz(ctx, who)
    return with_student_eta(_trained_npz(ctx, who), eta, _eta_npz(ctx, who, eta))


def _run_forecast(ctx: Context, model: pathlib.Path, out: pathlib.Path, split: str) -> None:
    """Forecast `model` on window `split` into `out`, a store the chain owns: one made from other
    inputs is removed first (`_remove_stale_store`); an interrupted one of these inputs resumes."""
    from pipelines.forecast import run_forecast

    _remove_stale_store(ctx, out, model)
    run_forecast(
        model=str(model),
        stats_dir=str(ctx.stats_dir),
        data=ctx.store,
        out=str(out),
        init_times=eval_init_times(ctx, split),
        members=ctx.cfg.eval_members,
        lead_steps=ctx.cfg.eval_lead_steps,
        seed=ctx.cfg.seed + 1000,
        member_block=ctx.cfg.eval_members,
        progress=ctx.progress,
    )


def _stage_forecast(ctx: Context, who: str) -> None:
    _run_forecast(ctx, forecast_npz(ctx, who), ctx.forecast_store(who), "eval")


def _eta_dir(ctx: Context, eta: float) -> pathlib.Path:
    return ctx.path("tuning", f"eta_{eta:g}")


def _eta_npz(ctx: Context, who: str, eta: float) -> pathlib.Path:
    """Where student `who` sampled at `eta` is written (the final student's file at the chosen
    eta is the one the tuning stage forecast with)."""
    return _eta_dir(ctx, eta) / f"{who}.npz"


def _stage_tune(ctx: Context) -> None:
    """tuning/tuning.json: the final student forecast on the validation window at each `eta` of
    `tune_eta`, scored against the teacher's forecast of the same inits; the best by `tune_by`.
    Each eta's forecast and scorecard are kept (tuning/eta_*/), so an interrupted stage resumes."""
    from gencast_rmmd.data.config import load_data_config
    from pipelines.evaluate import evaluate, is_current

    inputs = _model_inputs(ctx, ctx.teacher_eval_npz, ctx.student_npz)
    teacher = ctx.path("tuning", "teacher.zarr")
    if not _store_complete(ctx, teacher, ctx.teacher_eval_npz):
        _run_forecast(ctx, ctx.teacher_eval_npz, teacher, "validation")
    rows = []
    for eta in ctx.cfg.tune_eta:
        d = _eta_dir(ctx, eta)
        store = d / "student.zarr"
        model = with_student_eta(ctx.student_npz, eta, _eta_npz(ctx, "student", eta))
        if not _store_complete(ctx, store, model):
            _run_forecast(ctx, model, store, "validation")
        if not is_current(str(d / "evaluation"), str(store), str(teacher)):
            evaluate(
                forecast_path=str(store),
                truth_path=ctx.store,
                out_dir=str(d / "evaluation"),
                baseline_path=str(teacher),
                engine="beam",
                seed=ctx.cfg.seed,
                plots=False,
            )
        rows.append({"eta": float(eta), **scorecard_headline(d / "evaluation")})
        print(
            f"  eta {eta:g} on the validation window: win rate {100 * rows[-1]['win_rate']:.1f}%, "
            f"mean CRPS change {rows[-1]['mean_crps_change_percent']:+.2f}%",
            flush=True,
        )
    key = {"mean_crps": "mean_crps_change_percent", "win_rate": "win_rate"}[ctx.cfg.tune_by]
    best = max(rows, key=lambda r: (r[key], r["win_rate"], r["mean_crps_change_percent"]))
    window = list(load_data_config(str(ctx.data_yaml)).splits["validation"])
    result = {
        "eta": best["eta"],
        "by": ctx.cfg.tune_by,
        "window": window,
        "results": rows,
        "inputs": inputs,  # what it was chosen with (`_tuned`)
    }
    write_text(ctx.path("tuning", "tuning.json"), json.dumps(result, indent=2))


def _tuned(ctx: Context) -> bool:
    """tuning.json exists and chose from the current teacher, final student, statistics and
    data store (`_recorded_inputs`)."""
    return _recorded_inputs(
        ctx.path("tuning", "tuning.json"), _model_inputs(ctx, ctx.teacher_eval_npz, ctx.student_npz)
    )


def _timed(ctx: Context) -> bool:
    """speed.json exists and timed the teacher and student that are forecast now (the student
    at the tuned eta), with the current statistics and data store (`_recorded_inputs`)."""
    timed = _model_inputs(ctx, ctx.teacher_eval_npz, forecast_npz(ctx, "student"))
    return _recorded_inputs(ctx.speed_json, timed)


def _model_inputs(ctx: Context, teacher: pathlib.Path, student: pathlib.Path) -> dict[str, str]:
    """What a stage that runs a teacher and a student records of them (its JSON's `inputs`): the
    SHA-256 of both checkpoints as used, of the statistics, and the data store's id."""
    from gencast_rmmd.distill.gencast import input_digests
    from gencast_rmmd.safety import file_sha256

    return {
        **input_digests(teacher, ctx.stats_dir, ctx.store),
        "student_sha256": file_sha256(student),
    }


def _recorded_inputs(path: pathlib.Path, current: dict[str, str]) -> bool:
    """True when the JSON file `path` exists and its `inputs` record `current`
    (`safety.current_record`). A file without the record, written before it was kept, is not
    done: the stage runs again (tuning re-uses its forecasts and scorecards that are current;
    speed measures again)."""
    from gencast_rmmd.safety import current_record

    return current_record(path, current, require_record=True) is not None


def _forecast_done(ctx: Context, who: str) -> bool:
    return _store_complete(ctx, ctx.forecast_store(who), forecast_npz(ctx, who))


def _store_complete(ctx: Context, p: pathlib.Path, model: pathlib.Path | None = None) -> bool:
    """True when `p` is a forecast store marked complete and made with `model`'s current bytes,
    if given, the run's current statistics and its data store as it is (a store of a checkpoint
    or statistics since rewritten, or of a data store re-made, is not done; its stage removes it
    and forecasts again: `_remove_stale_store`)."""
    from gencast_rmmd.forecast import store as store_lib

    if not p.exists():
        return False
    return store_lib.is_complete(str(p), **_store_digests(ctx, model))


def _store_digests(ctx: Context, model: pathlib.Path | None) -> dict[str, str]:
    """The digests a forecast store of `model` (if given) records of its inputs, as they are now
    (`forecast.store.DIGEST_KEYS`; no `data_store_id` for a data store without an id)."""
    from gencast_rmmd.data.era5 import store_id
    from gencast_rmmd.data.stats import stats_sha256
    from gencast_rmmd.safety import file_sha256

    found = {
        "model_sha256": None if model is None else file_sha256(model),
        "stats_sha256": stats_sha256(ctx.stats_dir),
        "data_store_id": store_id(ctx.store),
    }
    return {k: v for k, v in found.items() if v is not None}


def _remove_stale_store(ctx: Context, p: pathlib.Path, model: pathlib.Path) -> None:
    """Remove the forecast store `p` when it records inputs other than `model`, the statistics
    and the data store as they are now: `run_forecast` refuses to mix its members with new ones,
    and the path is the chain's, so the stage makes it again. Only a forecast store (its spec
    attribute) inside the run directory is removed; an interrupted store of these inputs is kept
    (`run_forecast` resumes it), and anything else is left for `run_forecast` to report."""
    import zarr

    from gencast_rmmd.forecast import store as store_lib
    from gencast_rmmd.safety import changed_digests, changed_inputs_phrase
    from pipelines.forecast import METRICS_SUFFIX

    if p.is_symlink() or not p.is_dir() or not p.resolve().is_relative_to(ctx.out.resolve()):
        return
    try:
        spec = json.loads(zarr.open_group(str(p), mode="r").attrs[store_lib.SPEC_ATTR])
    except Exception:  # not a forecast store: not ours to remove
        return
    current = _store_digests(ctx, model)
    if not isinstance(spec, dict) or not changed_digests(spec, current):
        return
    what = changed_inputs_phrase(spec, current, store_lib.DIGEST_KEYS)
    print(f"  {p} holds a forecast made with {what}: removed, made again", flush=True)
    # Renamed first, so that a crash while deleting leaves no half store at the path.
    trash = p.with_name(p.name + ".stale.tmp")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(p, trash)
    shutil.rmtree(trash)
    p.with_name(p.name + METRICS_SUFFIX).unlink(missing_ok=True)  # its regions' timings


def _eval_dir(ctx: Context, who: str) -> pathlib.Path:
    return ctx.eval_dir if who == "student" else ctx.path(f"evaluation_{who}")


def _evaluate_done(ctx: Context, who: str = "student") -> bool:
    """True when `who`'s evaluation is finished and scored the forecast stores there are now."""
    from pipelines.evaluate import is_current

    return is_current(
        str(_eval_dir(ctx, who)), str(ctx.forecast_store(who)), str(ctx.forecast_store("teacher"))
    )


def _stage_evaluate(ctx: Context, who: str = "student") -> None:
    from pipelines.evaluate import evaluate

    evaluate(
        forecast_path=str(ctx.forecast_store(who)),
        truth_path=ctx.store,
        out_dir=str(_eval_dir(ctx, who)),
        baseline_path=str(ctx.forecast_store("teacher")),
        engine="beam",
        seed=ctx.cfg.seed,
        plots=who == "student",
    )


def build_step_calls(
    checkpoints: dict[str, str], stats_dir: str, store: str, counts: dict[str, int]
) -> dict[tuple[str, str], tuple[Callable[[int], Any], int, int]]:
    """Compiled, warmed-up 12 h ensemble steps: `{(group, name): (call, nfe, members)}` for every
    model in `checkpoints` and every `group -> members` in `counts`; `call(r)` runs one step
    (round r's member keys) and returns its output (not blocked). Each model is loaded once."""
    import jax

    from gencast_rmmd.forecast.model import load_forecast_model

    with _open_zarr(store) as ds:
        lat = ds["lat"].values
        lon = ds["lon"].values
    runs = {}
    for name, path in checkpoints.items():
        model = load_forecast_model(path, stats_dir, name=name)
        step_fn, params = model.build(lat, lon)
        fn = jax.jit(jax.vmap(step_fn, in_axes=(None, 0, 0, 0)))
        lay = model.task.layout
        for group, m in counts.items():
            rng = np.random.default_rng(0)
            x = rng.standard_normal((m, len(lat), len(lon), lay.n_inputs)).astype(np.float32)
            f = rng.standard_normal((m, len(lat), len(lon), lay.n_forcings)).astype(np.float32)

            def call(r: int, fn=fn, params=params, x=x, f=f, m=m):
                return fn(params, jax.random.split(jax.random.PRNGKey(r + 1), m), x, f)

            jax.block_until_ready(call(-1))  # compile and warm up
            runs[group, name] = (call, int(model.nfe), m)
    return runs


def measure_step_seconds(
    checkpoints: dict[str, str],
    stats_dir: str,
    store: str,
    members: int,
    repeats: int,
    one_member: bool = False,
) -> dict[str, Any]:
    """Wall-clock seconds of one 12 h ensemble step per model, measured in this one process.

    Each model's vmapped step over `members` is compiled and run once (warm-up). Then the models
    are timed in turn, `repeats` rounds, with `block_until_ready`, so that every model sees the
    same background load; `seconds` is the minimum (least disturbed), `median_seconds` the median.
    Same inputs, same device, same process for every model, so the ratio is fair. With
    `one_member`, the same models (loaded once) are also timed with one member per call, in the
    same rounds, under the key "one_member".
    """
    counts = {"": members, "one_member": 1} if one_member else {"": members}
    runs = build_step_calls(checkpoints, stats_dir, store, counts)
    calls = {key: call for key, (call, _, _) in runs.items()}
    timed = time_in_rounds(calls, repeats)
    out: dict[str, Any] = {group: {} for group in counts if group}
    for (group, name), run in runs.items():
        t = timed[group, name]
        (out[group] if group else out)[name] = {
            "seconds": t["seconds"],
            "median_seconds": t["median_seconds"],
            "median_cpu_seconds": t["median_cpu_seconds"],
            "round_seconds": t["round_seconds"],
            "nfe": run[1],
            "members": run[2],
            "checkpoint": checkpoints[name],
        }
    return out


def time_in_rounds(calls: dict[str, Callable[[int], Any]], repeats: int) -> dict[str, dict]:
    """Time each ``calls[name](round)`` (blocked until ready) in alternating rounds.

    The calls run in turn, `repeats` rounds, so every one sees the same background load. Per name:
    `seconds` (minimum wall, the least disturbed), `median_seconds`, `round_seconds` (the wall
    time of every round, in order, for ratios paired by round), and process CPU seconds
    (`cpu_seconds` minimum, `median_cpu_seconds`): CPU seconds sum over threads, so they are not
    the wall-clock figure a headline asks for, but they are not inflated by time the host gives
    to other work either.
    """
    import jax

    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(repeats):
        for name, fn in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(r))
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {
        name: {
            "seconds": float(min(wall[name])),
            "median_seconds": float(np.median(wall[name])),
            "cpu_seconds": float(min(cpu[name])),
            "median_cpu_seconds": float(np.median(cpu[name])),
            "round_seconds": [float(w) for w in wall[name]],
        }
        for name in calls
    }


def _stage_speed(ctx: Context) -> None:
    """speed.json: the ensemble step (eval_members per call, the headline) and, with
    `speed_one_member`, the one-member step too (`one_member`: GenCast's production layout, one
    member per device). The two ratios differ because the network call and the noise draw (one per
    evaluation in the student, 22 per 59 evaluations in the teacher) scale differently with the
    batch; which ratio is the higher depends on the model size (docs/distill.md, "Speed")."""
    student = forecast_npz(ctx, "student")
    inputs = _model_inputs(ctx, ctx.teacher_eval_npz, student)
    res = measure_step_seconds(
        {"teacher": str(ctx.teacher_eval_npz), "student": str(student)},
        str(ctx.stats_dir),
        ctx.store,
        ctx.cfg.eval_members,
        ctx.cfg.speed_repeats,
        one_member=ctx.cfg.speed_one_member,
    )
    res["inputs"] = inputs  # what was timed (`_timed`)
    write_text(ctx.speed_json, json.dumps(res, indent=2))


def build_summary(ctx: Context) -> dict:
    """summary.json: the headline numbers (see the README for the keys)."""
    from gencast_rmmd.evaluation.scorecard import load_summary

    speed = json.loads(ctx.speed_json.read_text())
    ev = load_summary(str(ctx.eval_dir))
    t, s = speed["teacher"], speed["student"]
    head = scorecard_headline(ctx.eval_dir, ev)
    out = {
        "teacher_nfe": t["nfe"],
        "student_nfe": s["nfe"],
        "teacher_step_seconds": t["seconds"],
        "student_step_seconds": s["seconds"],
        "speedup": speed_ratio(speed, "seconds") or float("nan"),
        # The same ratio from the medians of the interleaved rounds (a load-robustness check).
        "speedup_median": speed_ratio(speed, "median_seconds"),
        # The ratio of process CPU seconds (medians): not stretched by time the host gives to
        # others (three runs on runs/result: 7.01-7.21, where the minima gave 6.79-7.55).
        "speedup_cpu": speed_ratio(speed, "median_cpu_seconds"),
        # The median over rounds of the ratio within each round (teacher and student timed one
        # after the other): robust to load that drifts between rounds.
        "speedup_paired": paired_ratio(speed),
        # The same ratio with one member per call (None unless `speed_one_member`).
        "speedup_one_member": speed_ratio(speed.get("one_member"), "seconds"),
        "win_rate": head["win_rate"],
        "mean_crps_change_percent": head["mean_crps_change_percent"],
        "spread_skill_teacher": ev.get("spread_skill", {}).get("baseline"),
        "spread_skill_student": ev.get("spread_skill", {}).get("forecast"),
        "entries": ev.get("n_entries"),
        "win_rate_rmse": ev.get("win_rate_rmse"),
        "significant_wins_crps": ev.get("significant_wins_crps"),
        "significant_losses_crps": ev.get("significant_losses_crps"),
        "ensemble_size": ev.get("ensemble_size"),
        "profile_config": dataclasses.asdict(ctx.cfg),
    }
    if ctx.cfg.tune_eta:
        # The students' sampling eta, chosen on the validation window (tuning/tuning.json).
        out["tuning"] = json.loads(ctx.path("tuning", "tuning.json").read_text())
        out["student_eta"] = float(out["tuning"]["eta"])
    for key, who in (
        ("ablation_mmd_only", "mmd_student"),
        ("ablation_offline_rmmd", "offline_student"),
    ):
        d = ctx.path(f"evaluation_{who}")
        if ctx.cfg.rmmd_steps > 0 and (d / "scorecard.csv").exists():
            out[key] = scorecard_headline(d)
    return out


def scorecard_headline(eval_dir: pathlib.Path, ev: dict | None = None) -> dict:
    """Win rate, mean CRPS change (positive = the forecast better than the baseline) and the
    forecast's spread/skill of a finished evaluation directory (`ev`: its summary, if loaded)."""
    from gencast_rmmd.evaluation.scorecard import load_summary

    ev = load_summary(str(eval_dir)) if ev is None else ev
    change = ev.get("mean_crps_change_percent")
    return {
        "win_rate": ev.get("win_rate_crps"),
        # The scorecard's relative change is (forecast - baseline) / baseline; positive here means
        # the forecast's CRPS is lower (better).
        "mean_crps_change_percent": None if change is None else -change,
        "spread_skill": ev.get("spread_skill", {}).get("forecast"),
    }


def _stage_summary(ctx: Context) -> None:
    summary = build_summary(ctx)
    write_text(ctx.path("summary.json"), json.dumps(summary, indent=2, default=_jsonable))
    _write_report(ctx, summary)


def speed_ratio(speed: dict | None, key: str) -> float | None:
    """Teacher / student `key` of one speed measurement (None where it or the figure is missing,
    or the student's is not positive)."""
    t, s = ((speed or {}).get(who, {}).get(key) for who in ("teacher", "student"))
    return t / s if t is not None and s else None


def paired_ratio(speed: dict | None) -> float | None:
    """Median over rounds of teacher / student wall time within the round (None if the speed
    measurement predates per-round times)."""
    t, s = ((speed or {}).get(who, {}).get("round_seconds") for who in ("teacher", "student"))
    if not t or not s or len(t) != len(s):
        return None
    return float(np.median(np.asarray(t) / np.asarray(s)))


def _write_report(ctx: Context, summary: dict) -> None:
    """DIR/report.html: the evaluation report with the speed headline on top."""
    src = ctx.eval_dir / "report.html"
    html = src.read_text() if src.exists() else "<html><body></body></html>"
    explain = {
        "teacher_nfe": "network evaluations per 12 h step, teacher",
        "student_nfe": "network evaluations per 12 h step, student",
        "teacher_step_seconds": "wall-clock seconds per 12 h ensemble step, teacher",
        "student_step_seconds": "wall-clock seconds per 12 h ensemble step, student",
        "speedup": "teacher / student wall-clock (minima over the timed rounds)",
        "speedup_median": "the same from the medians over the rounds",
        "speedup_paired": "the median over rounds of the ratio within each round",
        "speedup_one_member": "the same with one member per call (GenCast's production layout: "
        "one member per device)",
        "win_rate": "fraction of scorecard entries where the student's CRPS is lower",
        "mean_crps_change_percent": "mean CRPS change, positive = student better (the scorecard "
        "below uses (student - teacher) / teacher, so there it has the opposite sign)",
        "spread_skill_teacher": "spread/skill of the teacher (1 = calibrated)",
        "spread_skill_student": "spread/skill of the student (1 = calibrated)",
        "entries": "scorecard entries compared (variable-level x lead time)",
        "student_eta": "the students' sampling eta, chosen on the validation window "
        "(tuning/tuning.json); absent: the trained eta",
    }
    rows = "".join(
        f"<tr><td>{k}</td><td>{_fmt(summary.get(k))}</td><td>{text}</td></tr>"
        for k, text in explain.items()
        if k in summary or k != "student_eta"
    )
    head = (
        "<h1>gencast-rmmd quickstart</h1><p>8-step RMMD student against its DPM-Solver++ 2S "
        "teacher on held-out init times. Wall-clock per 12 h step measured in one process.</p>"
        f"<table border=1 cellpadding=4>{rows}</table><hr>"
    )
    # Plots are referenced relative to the evaluation directory.
    html = html.replace('src="', 'src="evaluation/')
    html = html.replace("<body>", "<body>" + head, 1) if "<body>" in html else head + html
    write_text(ctx.path("report.html"), html)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return str(v)


def _run_cli(cli_main: Callable[[list[str]], int], args: list[str], what: str) -> None:
    """Run the command `args` as quickstart stage `what`. Its one line on an error or a clean
    stop (a trainer's checkpoint saved on SIGTERM) names the stage (`nested_stage`); the
    quickstart then exits with the same status and prints nothing more (`AlreadyReported`)."""
    from gencast_rmmd.cli import nested_stage

    with nested_stage(what):
        rc = cli_main(args)
    if rc:
        raise AlreadyReported(rc)


def _no_phase2(c: Context) -> str | None:
    return "rmmd_steps: 0, so the student is phase 1's" if c.cfg.rmmd_steps == 0 else None


def _no_offline(c: Context) -> str | None:
    if not c.cfg.ablation_offline:
        return "ablation_offline: false"
    return _no_phase2(c)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the chain: `run` it unless `done` (its output is complete) or `off` gives the
    profile setting that leaves it out."""

    name: str
    run: Callable[[Context], None]
    done: Callable[[Context], bool]
    off: Callable[[Context], str | None] = lambda c: None


STAGES: tuple[Stage, ...] = (
    Stage("data", _stage_data, lambda c: False),  # cheap: resolves the cached store and splits
    Stage("stats", _stage_stats, _stats_done),
    Stage("teacher", _stage_teacher, _teacher_done),
    Stage("distill", _stage_distill, lambda c: _distilled(c, c.student_npz, c.mmd_student_npz)),
    Stage(
        "tune eta on the validation window",
        _stage_tune,
        _tuned,
        lambda c: None if c.cfg.tune_eta else "tune_eta: []",
    ),
    Stage(
        "forecast teacher",
        lambda c: _stage_forecast(c, "teacher"),
        lambda c: _forecast_done(c, "teacher"),
    ),
    Stage(
        "forecast student",
        lambda c: _stage_forecast(c, "student"),
        lambda c: _forecast_done(c, "student"),
    ),
    Stage("evaluate", _stage_evaluate, _evaluate_done),
    Stage(
        "forecast mmd-only student",
        lambda c: _stage_forecast(c, "mmd_student"),
        lambda c: _forecast_done(c, "mmd_student"),
        _no_phase2,
    ),
    Stage(
        "evaluate mmd-only student",
        lambda c: _stage_evaluate(c, "mmd_student"),
        lambda c: _evaluate_done(c, "mmd_student"),
        _no_phase2,
    ),
    Stage(
        "distill offline ablation",
        _stage_distill_offline,
        lambda c: _distilled(c, c.path("distill_offline", "rmmd", "student.npz")),
        _no_offline,
    ),
    Stage(
        "forecast offline-RMMD student",
        lambda c: _stage_forecast(c, "offline_student"),
        lambda c: _forecast_done(c, "offline_student"),
        _no_offline,
    ),
    Stage(
        "evaluate offline-RMMD student",
        lambda c: _stage_evaluate(c, "offline_student"),
        lambda c: _evaluate_done(c, "offline_student"),
        _no_offline,
    ),
    Stage("speed", _stage_speed, _timed),
    Stage("summary", _stage_summary, lambda c: False),
)


def load_profile(profile: str, overrides: list[str] | tuple[str, ...] = ()) -> QuickstartConfig:
    if profile not in PROFILES and not pathlib.Path(profile).exists():
        found = (
            "no such file"
            if profile.endswith((".yaml", ".yml")) or "/" in profile
            else "not a profile name"
        )
        raise ConfigError(
            f"--profile {profile!r}: expected one of {', '.join(PROFILES)} or a YAML path, "
            f"found {found}"
        )
    return load_config(QuickstartConfig, profile, overrides, kind="quickstart")


# Settings that change no stage's output except the speed measurement.
_TIMING_ONLY_KEYS = ("speed_repeats", "speed_one_member")
# Keys of the marker (quickstart.yaml) beside the profile's settings: the run's data (`_run_data`).
_DATA_KEYS = ("data", "task_sha256")


def _changed_settings(marker_text: str, text: str) -> set[str] | None:
    """The profile settings in which two marker dumps differ (None: one is not a YAML mapping).
    The data keys (`_DATA_KEYS`) are not settings: `_refuse_other_data` compares them."""
    import yaml

    from gencast_rmmd.config import load_yaml

    try:
        a, b = load_yaml(marker_text), load_yaml(text)
    except yaml.YAMLError:
        return None
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None
    # A setting added after a run was made is absent from its marker: its default (which keeps the
    # behaviour from before the setting existed) is what that run used.
    defaults = to_dict(QuickstartConfig())
    a, b = {**defaults, **a}, {**defaults, **b}
    return {k for k in a.keys() | b.keys() if k not in _DATA_KEYS and a.get(k) != b.get(k)}


def _timing_only(changed: set[str] | None) -> bool:
    """True when the changed settings (`_changed_settings`) are timing-only keys, if any."""
    return changed is not None and changed <= set(_TIMING_ONLY_KEYS)


def _check_nature_run_length(ctx: Context) -> None:
    """The embedded nature run must be longer than the windows held out of it (a --data store's
    own length is checked by the data stage; `nature_run_days` does not apply to it)."""
    c = ctx.cfg
    if not ctx.data_store and c.eval_days + c.validation_days >= c.nature_run_days:
        raise ConfigError(
            f"eval_days + validation_days ({c.eval_days} + {c.validation_days}) must be "
            f"shorter than nature_run_days ({c.nature_run_days})"
        )


# What `_check_data_store` refuses of --data's schema before the first stage: each fails a later
# stage for certain (after the statistics, hours on an ERA5 store). A time axis with gaps does not.
_FATAL_SCHEMA = ("dims", "missing-variable", "missing-level", "grid")


def _check_data_store(ctx: Context) -> None:
    """--data opens as a store (`DataError` naming it otherwise) and has the dims, variables,
    levels and grid of the data config's task (`data.validate.schema_problems`, metadata only);
    its length is the data stage's to check."""
    from gencast_rmmd.data.era5 import is_pattern
    from gencast_rmmd.data.validate import problems_error, schema_problems
    from gencast_rmmd.errors import DataError
    from gencast_rmmd.remote import is_url, source_path

    if is_pattern(ctx.data_store):  # the teacher trains on a canonical Zarr store
        raise DataError(
            f"--data {ctx.data_store!r} is a pattern of files; the quickstart trains on a "
            f"canonical Zarr store: `gencast-rmmd data prepare --source '{ctx.data_store}' "
            "--config CFG --out STORE.zarr` makes one"
        )
    if not is_url(ctx.data_store) and not os.path.exists(source_path(ctx.data_store)):
        raise DataError(f"--data {ctx.data_store!r} does not exist")
    with _open_zarr(ctx.data_store) as ds:
        problems = schema_problems(ds, _data_config(ctx).task)
    problems = [p for p in problems if p.code in _FATAL_SCHEMA]
    if problems:
        raise problems_error(ctx.data_store, problems)


def _check_embedded_task(ctx: Context) -> None:
    """Without --data the chain runs on the embedded nature run: the data config must be one whose
    source is `embedded` and whose task the nature run can feed (before the nature run is built,
    not when the teacher finds the variables missing)."""
    from gencast_rmmd.data import nature_run

    base = _data_config(ctx)
    name = ctx.cfg.data_config
    prepare = (
        f"prepare its store with `gencast-rmmd data prepare --config {name} --out STORE.zarr` and "
        f"pass `--data STORE.zarr --data-config {name}`"
    )
    if not base.is_embedded:
        raise ConfigError(
            f"data_config {name!r} reads {base.source!r}, and without --data the quickstart runs "
            f"on the embedded nature run only: {prepare}"
        )
    nature_run.check_task(
        base.task,
        f"drop them from data_config {name!r}'s task, or run on a store that has them "
        "(`--data STORE.zarr --data-config CONFIG`)",
    )


def _check_stage_settings(ctx: Context) -> None:
    """The profile's settings as the teacher and distill stages will read them (model config and
    `model_overrides`, training flags, distill config and `distill_overrides`): a bad key or
    value is refused before the first stage, not when its stage comes (after the nature run,
    or after the teacher's training)."""
    from gencast_rmmd.cli import teacher as teacher_cli
    from gencast_rmmd.distill.gencast import DistillConfig

    c = ctx.cfg
    teacher_cli.model_config(c.model_config, list(c.model_overrides))
    teacher_cli.training_config(
        list(c.model_overrides),
        steps=c.teacher_steps,
        batch_size=c.teacher_batch_size,
        lr=c.teacher_learning_rate,
        seed=c.seed,
    )
    load_config(DistillConfig, c.distill_config, _distill_sets(ctx, []), kind="distill")


def _run_data(ctx: Context) -> dict[str, str]:
    """What the run directory's marker records of its data beside the profile (`_DATA_KEYS`):
    `data`, the resolved --data (`embedded`: the nature run), and `task_sha256`, the SHA-256 of
    the data config's task (variables, levels, step), which every stage is made for."""
    import hashlib

    from gencast_rmmd.remote import source_path

    task = dump_yaml(_data_config(ctx).task)
    return {
        "data": source_path(ctx.data_store) if ctx.data_store else "embedded",
        "task_sha256": hashlib.sha256(task.encode()).hexdigest(),
    }


def _refuse_other_data(ctx: Context, marker_text: str, data: dict[str, str]) -> None:
    """Refuse a run directory whose marker records another --data or task than `data` (a marker
    from before they were recorded takes the current ones)."""
    import yaml

    from gencast_rmmd.config import load_yaml
    from gencast_rmmd.safety import changed_digests

    try:
        recorded = load_yaml(marker_text)
    except yaml.YAMLError:
        return  # not a marker: refused as other settings
    if not isinstance(recorded, dict):
        return
    changed = changed_digests(recorded, data)
    if not changed:
        return

    def show(v: Any) -> str:
        return "the embedded nature run" if v == "embedded" else repr(v)

    what = []
    if "data" in changed:
        what.append(f"another --data ({show(recorded['data'])}, now {show(data['data'])})")
    if "task_sha256" in changed:
        old, new = str(recorded["task_sha256"])[:12], data["task_sha256"][:12]
        what.append(
            f"another task in its data config (variables, levels or step; SHA-256 {old}..., "
            f"now {new}...)"
        )
    raise OutputError(
        f"{ctx.out} holds a quickstart run made from {' and '.join(what)}; use a new --out for "
        f"this data, or delete {ctx.out}"
    )


def _make_out_dir(out: pathlib.Path) -> None:
    """Create the run directory `out` (--out); `OutputError` naming it where that cannot be."""
    check_out_dir(out, "a directory for the run")
    out.mkdir(parents=True, exist_ok=True)


def run_chain(ctx: Context) -> dict:
    """Run every stage not yet complete; return the summary."""
    _check_nature_run_length(ctx)
    if ctx.data_store:
        _check_data_store(ctx)
    else:
        _check_embedded_task(ctx)
    _check_stage_settings(ctx)
    data = _run_data(ctx)
    _make_out_dir(ctx.out)
    marker = ctx.path("quickstart.yaml")
    text = dump_yaml({**to_dict(ctx.cfg), **data})
    if marker.exists() and marker.read_text() != text:
        found = marker.read_text()
        _refuse_other_data(ctx, found, data)
        changed = _changed_settings(found, text)
        if not _timing_only(changed):
            raise OutputError(
                f"{ctx.out} holds a quickstart run with other settings ({marker}); use a new "
                "--out or delete the directory"
            )
        if changed:
            # Only timing settings changed: keep every result, re-time the speed stage.
            ctx.speed_json.unlink(missing_ok=True)
    if not marker.exists() and any(ctx.out.iterdir()):
        raise OutputError(f"--out {ctx.out} exists and holds other files; choose a new directory")
    write_text(marker, text)
    n = len(STAGES)
    t_all = time.perf_counter()
    for i, stage in enumerate(STAGES, 1):
        off = stage.off(ctx)
        if off is not None:
            print(f"[{i}/{n}] {stage.name}: not in this profile ({off}), skipped", flush=True)
            continue
        if stage.done(ctx):
            print(f"[{i}/{n}] {stage.name}: already complete, skipped", flush=True)
            continue
        print(f"[{i}/{n}] {stage.name} ...", flush=True)
        t0 = time.perf_counter()
        stage.run(ctx)
        dt = time.perf_counter() - t0
        ctx.log.append({"stage": stage.name, "seconds": round(dt, 1)})
        print(f"[{i}/{n}] {stage.name}: done in {dt:.1f} s", flush=True)
    summary = json.loads(ctx.path("summary.json").read_text())
    write_text(
        ctx.path("stages.json"),
        json.dumps(
            {"stages": ctx.log, "total_seconds": round(time.perf_counter() - t_all, 1)}, indent=2
        ),
    )
    return summary


def print_summary(summary: dict, out: pathlib.Path) -> None:
    def f(v, spec=".3g"):
        return "n/a" if v is None else format(v, spec)

    print()
    print("=" * 72)
    print("gencast-rmmd quickstart: student (RMMD) vs teacher (DPM-Solver++ 2S)")
    print(
        f"  network evaluations per 12 h step: teacher {summary['teacher_nfe']}, "
        f"student {summary['student_nfe']}"
    )
    print(
        f"  wall-clock per 12 h step: teacher {f(summary['teacher_step_seconds'])} s, "
        f"student {f(summary['student_step_seconds'])} s -> {f(summary['speedup'], '.2f')}x "
        f"faster (medians {f(summary.get('speedup_median'), '.2f')}x"
        + (
            f"; paired by round {f(summary['speedup_paired'], '.2f')}x"
            if summary.get("speedup_paired") is not None
            else ""
        )
        + (
            f"; one member per call {f(summary['speedup_one_member'], '.2f')}x)"
            if summary.get("speedup_one_member") is not None
            else ")"
        )
    )
    wr = summary.get("win_rate")
    print(
        f"  CRPS win rate of the student: {f(None if wr is None else 100 * wr, '.1f')}% of "
        f"{summary.get('entries')} scorecard entries; mean CRPS change "
        f"{f(summary.get('mean_crps_change_percent'), '+.2f')}% (positive = student better)"
    )
    print(
        f"  spread/skill (1 = calibrated): teacher {f(summary.get('spread_skill_teacher'))}, "
        f"student {f(summary.get('spread_skill_student'))}"
    )
    tuning = summary.get("tuning")
    if tuning:
        tried = ", ".join(f"{r['eta']:g}" for r in tuning["results"])
        print(
            f"  student eta {tuning['eta']:g}: chosen by {tuning['by']} on the validation window "
            f"{tuning['window'][0]} .. {tuning['window'][1]} (tried {tried}; tuning/tuning.json)"
        )
    for key, label in (
        ("ablation_mmd_only", "phase 1 only (MMD student)"),
        ("ablation_offline_rmmd", "offline RMMD (re-noised truth)"),
    ):
        abl = summary.get(key)
        if abl:
            wr = abl.get("win_rate")
            print(
                f"  {label}: win rate {f(None if wr is None else 100 * wr, '.1f')}%, mean CRPS "
                f"change {f(abl.get('mean_crps_change_percent'), '+.2f')}%, spread/skill "
                f"{f(abl.get('spread_skill'))}"
            )
    print(f"  report: {out / 'report.html'}   numbers: {out / 'summary.json'}")
    print("=" * 72)


def clean_partial(out: pathlib.Path) -> None:
    """Remove temp files a crash may have left (the stages themselves resume)."""
    for tmp in out.rglob("*.tmp"):
        if tmp.is_file():
            tmp.unlink()
        else:
            shutil.rmtree(tmp, ignore_errors=True)
