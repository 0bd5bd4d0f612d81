"""The image path end to end: classifiers, teacher, MMD distillation, the Pareto sweep.

Run directory layout (`--out DIR`), every stage resumable (a finished stage's file is reused):

    DIR/config.yaml                      the resolved ImageConfig
    DIR/classifier_reward.npz            reward classifier  (classifier reward)
    DIR/classifier_eval.npz              evaluation classifier (accuracy, Frechet features)
    DIR/teacher.npz                      teacher (EMA) parameters
    DIR/student_k{K}.npz, aux_k{K}.npz   phase-1 MMD student and auxiliary (K steps)
    DIR/metrics_*.jsonl                  JSON-lines training metrics per stage
    DIR/teacher_eval.json, distill_eval.json
    DIR/pareto_rows.jsonl                one row per evaluation of the sweep (resume log)
    DIR/fid_reference.npz                with `inception_weights` and no reference statistics:
                                         FID's mu and sigma of the real images (reused)
    DIR/pareto.csv, DIR/pareto.png, DIR/pareto_summary.json
    DIR/checkpoints_*/                   mid-stage resume points (`training.StageCheckpoints`),
                                         while a stage or sweep run is unfinished

Each output derived from other files of DIR records their SHA-256 (`inputs` in the JSON files
and in each row of `pareto_rows.jsonl`, `teacher_sha256` in the phase-1 parameter files' meta)
and is redone when one of them changed (e.g. a retrained `teacher.npz` makes the students,
evaluations, references and sweep runs built from the old one stale). A record without them (an
older run) is taken as current.

`pareto.csv` columns: `method, reward, lambda, step, distance, reward_value`; `distance` is the
Frechet classifier distance on the embedded digits (the column name is fixed by the interface;
`pareto_summary.json` names the distance as `frechet_classifier_distance`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gencast_rmmd.config import dump_yaml, to_dict
from gencast_rmmd.image.classifier import Classifier, accuracy, build_classifier, train_classifier
from gencast_rmmd.image.config import METHODS, ImageConfig
from gencast_rmmd.image.data import ImageDataset, load_dataset
from gencast_rmmd.image.evaluation import Evaluator, SetEvaluation, generate
from gencast_rmmd.image.finetune import StartPoint, finetune_run, start_metrics
from gencast_rmmd.image.model import ImageModel, build_model
from gencast_rmmd.image.rewards import make_reward
from gencast_rmmd.image.training import (
    TRAINING_STAGES,
    StageCheckpoints,
    check_devices,
    load_params,
    save_params,
    train_mmd,
    train_teacher,
)
from gencast_rmmd.remote import check_local_out_dir, write_text, written
from gencast_rmmd.safety import changed_digests, file_sha256
from gencast_rmmd.safety import current_record as safety_current_record

CSV_COLUMNS = ("method", "reward", "lambda", "step", "distance", "reward_value")
DISTANCE_NAME = "frechet_classifier_distance"


def _log(msg: str) -> None:
    print(f"[image {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_jobs(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int,
    desc: str | None = None,
    progress: bool = False,
    on_done: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """`[fn(x) for x in items]`, up to `workers` at a time in threads (XLA releases the GIL while
    it computes, and one small job leaves part of the cores idle). Results keep the order of
    `items`; `on_done(index, result)` runs in the calling thread as each job finishes. The first
    exception cancels the jobs not yet started and is raised once the running ones finish."""
    bar = tqdm(total=len(items), desc=desc, disable=not progress or desc is None, leave=False)
    results: list[Any] = [None] * len(items)

    def done(i: int, result: Any) -> None:
        results[i] = result
        bar.update()
        if on_done is not None:
            on_done(i, result)

    try:
        if workers <= 1 or len(items) <= 1:
            for i, x in enumerate(items):
                done(i, fn(x))
            return results
        with ThreadPoolExecutor(max_workers=workers) as ex:
            futures = {ex.submit(fn, x): i for i, x in enumerate(items)}
            try:
                for fut in as_completed(futures):
                    done(futures[fut], fut.result())
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return results
    finally:
        bar.close()


@dataclasses.dataclass
class Context:
    """Everything the stages share (data, model, classifiers, evaluator)."""

    cfg: ImageConfig
    out: pathlib.Path
    data: ImageDataset
    model: ImageModel
    reward_clf: Classifier
    eval_clf: Classifier
    evaluator: Evaluator
    progress: bool = True
    # Evaluations of the teacher's sample sets made ahead of their use, by noise seed
    # (`teacher_set_eval`).
    teacher_sets: dict[int, SetEvaluation] = dataclasses.field(default_factory=dict)
    # SHA-256 of the FID files outside DIR (`inception_weights_sha256`, ...): the evaluations'
    # records hold them, so a file replaced at the same path makes them stale.
    fid_digests: dict[str, str] = dataclasses.field(default_factory=dict)

    def reward(self, name: str):
        return make_reward(name, self.reward_clf)


def evaluate_samples(ctx: Context, params: Any, sampler: Any, seed: int) -> SetEvaluation:
    """The evaluation of one sample set (`params` with `sampler`, the evaluator's labels, noise
    `seed`): the images are scored and dropped here, so that a stage holding many sets holds
    their features only (ImageNet 64: 10,000 x 64 x 64 x 3 float32 is 0.5 GB a set)."""
    x = generate(ctx.model, params, sampler, ctx.evaluator.labels, seed)
    return ctx.evaluator.evaluate_set(x)


def teacher_set_eval(ctx: Context, teacher: Any, seed: int, keep: bool = False) -> SetEvaluation:
    """The evaluation of the teacher's sample set (its own sampler) for noise `seed`. A set
    evaluated with `keep` is held for the next call with the same seed, which takes it:
    `teacher_eval.json` and the teacher / student comparison share seed
    `DISTILL_EVAL_FIRST_SEED`."""
    e = ctx.teacher_sets.pop(seed, None)
    if e is None:
        e = evaluate_samples(ctx, teacher, ctx.cfg.teacher.sampler, seed)
    if keep:
        ctx.teacher_sets[seed] = e
    return e


# The classifiers every evaluation depends on (features, accuracy; the classifier reward).
EVAL_INPUTS = ("classifier_eval.npz", "classifier_reward.npz")


def input_digests(ctx: Context, *names: str) -> dict[str, str] | None:
    """`{"<file stem>_sha256": SHA-256}` of the files `names` of the run directory (e.g.
    `teacher_sha256`), the record of what an output was made from; None when one is missing."""
    paths = [ctx.out / n for n in names]
    if not all(p.is_file() for p in paths):
        return None
    return {f"{p.stem}_sha256": file_sha256(p) for p in paths}


def eval_digests(ctx: Context, *names: str) -> dict[str, str] | None:
    """`input_digests` of an evaluation's record: the files `names`, the classifiers and, with
    FID, the InceptionV3 weights and reference statistics (`Context.fid_digests`)."""
    got = input_digests(ctx, *names, *EVAL_INPUTS)
    return None if got is None else {**got, **ctx.fid_digests}


def current_record(path: pathlib.Path, inputs: dict[str, str] | None) -> dict | None:
    """The JSON output at `path` if it exists and was made from `inputs`
    (`safety.current_record`; one without a record, from an older run, is taken as current);
    None when it is missing, unreadable, stale, or `inputs` is None (an input is missing)."""
    return None if inputs is None else safety_current_record(path, inputs)


def params_current(path: pathlib.Path, inputs: dict[str, str] | None) -> bool:
    """Whether the parameter file `path` (`save_params`) exists and its meta records `inputs`."""
    if inputs is None or not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    return not changed_digests(meta, inputs)


def _classifier(
    ctx_cfg: ImageConfig,
    out: pathlib.Path,
    data: ImageDataset,
    which: str,
    seed: int,
    progress: bool,
) -> Classifier:
    path = out / f"classifier_{which}.npz"
    net = build_classifier(ctx_cfg.classifier, data.num_classes)
    if path.exists():
        import jax

        like = jax.eval_shape(net.init, jax.random.PRNGKey(0), data.train_images[:2])
        params, _ = load_params(path, like)
        return Classifier(params=params, apply=net.apply)
    ckpts = StageCheckpoints(
        out / f"checkpoints_classifier_{which}",
        {**_made_from(ctx_cfg, path.name), "seed": seed},
    )
    clf = train_classifier(
        ctx_cfg.classifier, data.train_images, data.train_labels, data.num_classes, seed,
        progress, checkpoints=ckpts,
    )  # fmt: skip
    acc = accuracy(clf, data.eval_images, data.eval_labels)
    save_params(path, clf.params, {"eval_accuracy": acc, "seed": seed, "role": which})
    ckpts.finish()
    _log(f"classifier ({which}) held-out accuracy {acc:.3f}")
    return clf


# The outputs each setting makes, by the longest matching dotted prefix: a re-run whose settings
# differ where an output already exists is refused (the stages reuse files as they are, and
# config.yaml would record settings the files were not made with).
_SETTING_OUTPUTS = {
    "data": (
        "classifier_*.npz",
        "teacher.npz",
        "student_k*.npz",
        "*_eval.json",
        "pareto_rows.jsonl",
    ),
    "classifier": ("classifier_*.npz",),
    "model": ("teacher.npz",),
    "schedule": ("teacher.npz",),
    "teacher": ("teacher.npz",),
    "teacher.sampler": ("*_eval.json", "pareto_rows.jsonl"),
    "mmd": ("student_k*.npz",),
    "finetune": ("pareto_rows.jsonl",),
    "pareto": ("pareto_rows.jsonl",),
    "pareto.eval_samples": ("*_eval.json", "pareto_rows.jsonl"),
    "pareto.dipp_mmd_steps": ("student_k1.npz",),
    "inception_weights": ("*_eval.json", "pareto_rows.jsonl"),
    "inception_reference_stats": ("*_eval.json", "pareto_rows.jsonl"),
}


def _made_from(cfg: ImageConfig, output: str) -> dict[str, Any]:
    """The settings `output` (a file name of DIR) is made from, by `_SETTING_OUTPUTS`: what a
    mid-stage checkpoint of the stage that writes it is tagged with."""
    import fnmatch

    flat = to_dict(cfg)
    made = {}
    for prefix, patterns in _SETTING_OUTPUTS.items():
        if any(fnmatch.fnmatch(output, p) for p in patterns):
            value = flat
            for part in prefix.split("."):
                value = value[part]
            made[prefix] = value
    return made


# Settings a re-run may change: they add sweep runs, or outputs record and redo them themselves.
_FREE_SETTINGS = (
    "pareto.methods",
    "pareto.rewards",
    "pareto.lambdas",
    "pareto.method_lambdas",
    "pareto.workers",
    "pareto.distill_eval_sets",
)


def _refuse_other_settings(out: pathlib.Path, old_text: str, cfg: ImageConfig) -> None:
    """OutputError naming the changed settings whose outputs `out` already holds."""
    import yaml

    from gencast_rmmd.config import as_current, from_dict, load_yaml
    from gencast_rmmd.errors import OutputError
    from gencast_rmmd.training.loop import config_changes

    try:
        old = load_yaml(old_text)
    except yaml.YAMLError:
        old = None
    old = as_current(old, lambda d: to_dict(from_dict(ImageConfig, d)))
    if not isinstance(old, dict):  # a damaged config.yaml: say so rather than guess what changed
        raise OutputError(
            f"{out / 'config.yaml'} is not a readable config; use a fresh --out, or delete it if "
            "the files beside it were made with this run's settings"
        )
    stale: dict[str, list[str]] = {}
    for change in config_changes(old, to_dict(cfg)):
        key = change.split(":", 1)[0]
        if key.startswith(_FREE_SETTINGS):
            continue
        parts = key.split(".")
        prefix = next(
            (".".join(parts[:i]) for i in range(len(parts), 0, -1)
             if ".".join(parts[:i]) in _SETTING_OUTPUTS),
            None,
        )  # fmt: skip
        found = sorted(p.name for pat in _SETTING_OUTPUTS.get(prefix, ()) for p in out.glob(pat))
        if found:
            stale[change] = found
    if stale:
        lines = "; ".join(f"{c} (made: {', '.join(f)})" for c, f in stale.items())
        raise OutputError(
            f"{out} holds outputs made with other settings: {lines}. Use a fresh --out, or delete "
            "those files to redo their stages"
        )


def load_fid_inputs(cfg: ImageConfig) -> tuple[dict | None, tuple | None]:
    """The InceptionV3 weights and FID reference statistics the config names (or None)."""
    if cfg.inception_weights is None:
        return None, None
    from gencast_rmmd.image.frechet import load_inception_reference_stats
    from gencast_rmmd.image.inception import load_inception_weights

    inception = load_inception_weights(cfg.inception_weights)
    if cfg.inception_reference_stats is None:
        return inception, None
    return inception, load_inception_reference_stats(cfg.inception_reference_stats)


def _fid_reference(
    out: pathlib.Path, inception: dict, images: np.ndarray, digests: dict[str, str],
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """FID's reference statistics of the run's real images, computed once into
    `DIR/fid_reference.npz` (ImageNet 64's reference set takes InceptionV3 minutes to hours on
    CPU) and reused while the weights and the images are the ones it records."""
    import hashlib

    from gencast_rmmd.image.frechet import gaussian_stats
    from gencast_rmmd.image.inception import inception_features

    path = out / "fid_reference.npz"
    images = np.ascontiguousarray(images)
    record = {**digests, "images_sha256": hashlib.sha256(images.data).hexdigest()}
    record["images_shape"] = list(images.shape)
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            if "meta" in f.files and json.loads(str(f["meta"])) == record:
                return f["mu"], f["sigma"]
    _log(f"FID reference: InceptionV3 features of the {images.shape[0]} real images")
    mu, sigma = gaussian_stats(inception_features(inception, images, progress=progress))
    with written(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, mu=mu, sigma=sigma, meta=np.array(json.dumps(record)))
    return mu, sigma


# The trainers (config sections) each command runs: `image teacher|distill|pareto`.
COMMAND_STAGES = {
    "teacher": TRAINING_STAGES[:1],
    "distill": TRAINING_STAGES[:2],
    "pareto": TRAINING_STAGES,
}


def make_context(
    cfg: ImageConfig, out: str | pathlib.Path, progress: bool = True, command: str = "pareto"
) -> Context:
    """Load data, train or reload both classifiers, build the model and the evaluator, for
    `command` (`COMMAND_STAGES`: whose micro-batches the devices must divide)."""
    out = check_local_out_dir(out, "a run directory", "image")
    # Read (and so validate) the data and the FID files before anything is created at --out.
    data = load_dataset(cfg.data)
    inception, ref_stats = load_fid_inputs(cfg)
    check_devices(cfg, stages=COMMAND_STAGES[command])
    cfg_text = dump_yaml(cfg)
    prev = out / "config.yaml"
    if prev.exists() and prev.read_text() != cfg_text:
        _refuse_other_settings(out, prev.read_text(), cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_text(prev, cfg_text)
    seed = cfg.classifier.seed
    reward_clf = _classifier(cfg, out, data, "reward", seed, progress)
    eval_clf = _classifier(cfg, out, data, "eval", seed + 1000, progress)
    model = build_model(cfg.model, cfg.schedule, data.shape, data.num_classes)
    ref_images = np.concatenate([data.train_images, data.eval_images])
    ref_labels = np.concatenate([data.train_labels, data.eval_labels])
    n = min(cfg.pareto.eval_samples, ref_labels.shape[0])
    rng = np.random.default_rng(0)
    labels = ref_labels[rng.permutation(ref_labels.shape[0])[:n]]
    fid_digests = {
        f"{key}_sha256": file_sha256(path)
        for key in ("inception_weights", "inception_reference_stats")
        if (path := getattr(cfg, key)) is not None
    }
    if inception is not None and ref_stats is None:
        ref_stats = _fid_reference(out, inception, ref_images, fid_digests, progress)
    evaluator = Evaluator(
        eval_classifier=eval_clf,
        reference_images=ref_images,
        labels=labels,
        rewards={r: make_reward(r, reward_clf) for r in ("bw", "laplacian", "classifier")},
        inception=inception,
        reference_stats=ref_stats,
        progress=progress,
    )
    return Context(
        cfg, out, data, model, reward_clf, eval_clf, evaluator, progress, fid_digests=fid_digests
    )


def _like(ctx: Context) -> Any:
    import jax

    # names and shapes are all that `load_params` needs
    return jax.eval_shape(ctx.model.init, jax.random.PRNGKey(0))


def stage_teacher(ctx: Context) -> Any:
    """Train (or reload) the teacher; writes `teacher.npz` and `teacher_eval.json`."""
    path = ctx.out / "teacher.npz"
    if path.exists():
        params, _ = load_params(path, _like(ctx))
    else:
        t0 = time.time()
        c = ctx.cfg
        ckpts = StageCheckpoints(
            ctx.out / "checkpoints_teacher",
            _made_from(c, path.name),
        )
        params = train_teacher(
            c.teacher, ctx.model, ctx.data, ctx.out / "metrics_teacher.jsonl", ctx.progress,
            checkpoints=ckpts,
        )  # fmt: skip
        save_params(path, params, {"train_seconds": time.time() - t0})
        ckpts.finish()
    ev_path = ctx.out / "teacher_eval.json"
    inputs = eval_digests(ctx, "teacher.npz")
    if current_record(ev_path, inputs) is None:
        e = teacher_set_eval(ctx, params, DISTILL_EVAL_FIRST_SEED, keep=True)
        m = {**e.metrics, "sampler_steps": ctx.cfg.teacher.sampler.num_steps, "inputs": inputs}
        write_text(ev_path, json.dumps(m, indent=2))
        _log(
            f"teacher ({m['sampler_steps']} steps): accuracy {m['accuracy']:.3f}, "
            f"{ctx.evaluator.distance_name} {m[ctx.evaluator.distance_name]:.4f}"
        )
    return params


def stage_mmd(
    ctx: Context, teacher: Any, num_steps: int | None = None, steps: int | None = None
) -> StartPoint:
    """Phase-1 MMD with a K-step student (K = config default unless given); reloads if done."""
    cfg = ctx.cfg.mmd
    if num_steps is not None and num_steps != cfg.sampler.num_steps:
        cfg = dataclasses.replace(
            cfg, sampler=dataclasses.replace(cfg.sampler, num_steps=num_steps)
        )
    k = cfg.sampler.num_steps
    sp, ap = ctx.out / f"student_k{k}.npz", ctx.out / f"aux_k{k}.npz"
    inputs = input_digests(ctx, "teacher.npz")
    if params_current(sp, inputs) and params_current(ap, inputs):
        like = _like(ctx)
        student, _ = load_params(sp, like)
        aux, _ = load_params(ap, like)
    else:
        if sp.exists() or ap.exists():
            _log(f"{sp.name}, {ap.name}: one missing or made from another teacher.npz; redoing")
        t0 = time.time()
        ckpts = StageCheckpoints(
            ctx.out / f"checkpoints_mmd_k{k}",
            {"mmd": to_dict(cfg), "steps": steps, "inputs": inputs},
        )
        student, aux = train_mmd(
            cfg, ctx.model, teacher, ctx.data, steps=steps,
            metrics_path=ctx.out / f"metrics_mmd_k{k}.jsonl", progress=ctx.progress,
            desc=f"mmd K={k}", checkpoints=ckpts,
        )  # fmt: skip
        meta = {"train_seconds": time.time() - t0, "num_steps": k, **(inputs or {})}
        save_params(ap, aux, meta)
        save_params(sp, student, meta)
        ckpts.finish()
    return StartPoint(student=student, aux=aux, sampler=cfg.sampler, s_floor=cfg.s_floor)


# Noise seed of the sweep's evaluations (every run, every step) and of `pareto_refs.json`.
EVAL_SEED = 1234

# First noise seed of the teacher / student comparison's sample sets (seeds 7, 8, ...,
# `pareto.distill_eval_sets` of them), the same for every model.
DISTILL_EVAL_FIRST_SEED = 7


# Sets pooled for the teacher sampled with the student's K steps (a diagnostic of what
# distillation buys, about 3x the teacher's distance: its precision matters less).
SAME_SAMPLER_EVAL_SETS = 8


def _distill_eval_seeds(ctx: Context) -> list[int]:
    n_sets = ctx.cfg.pareto.distill_eval_sets
    return list(range(DISTILL_EVAL_FIRST_SEED, DISTILL_EVAL_FIRST_SEED + n_sets))


def _phase1_and_teacher_sets(
    ctx: Context, teacher: Any, phase1: list[dict], teacher_sets: bool
) -> tuple[list[StartPoint], list[SetEvaluation] | None]:
    """The phase-1 students (one per `stage_mmd` keyword set in `phase1`) and, if `teacher_sets`,
    the evaluations of the teacher's sample sets of the teacher / student comparison,
    `pareto.workers` jobs at a time: the sets need only the teacher, so they use the cores that
    phase 1 leaves idle."""
    jobs: list[tuple[str, Any]] = [("mmd", kw) for kw in phase1]
    if teacher_sets:
        jobs += [("teacher", sd) for sd in _distill_eval_seeds(ctx)]

    def job(item):
        kind, arg = item
        if kind == "mmd":
            return stage_mmd(ctx, teacher, **arg)
        return teacher_set_eval(ctx, teacher, arg)

    desc = "phase 1 and the teacher's sample sets" if teacher_sets else None
    out = run_jobs(job, jobs, ctx.cfg.pareto.workers, desc, ctx.progress)
    return out[: len(phase1)], (out[len(phase1) :] if teacher_sets else None)


def _distill_eval_inputs(ctx: Context, k: int) -> dict[str, str] | None:
    """What `distill_eval.json` is made from: the teacher, the K-step student, the classifiers;
    None while the student is missing or was distilled from another teacher (it will be
    distilled again, so the comparison is to be made again)."""
    student = ctx.out / f"student_k{k}.npz"
    if not params_current(student, input_digests(ctx, "teacher.npz")):
        return None
    return eval_digests(ctx, "teacher.npz", student.name)


def current_distill_eval(ctx: Context, k: int) -> dict | None:
    """`distill_eval.json` if it is complete (the K-step student's entry and this config's sample
    sets) and made from the current files (`_distill_eval_inputs`), else None."""
    rec = current_record(ctx.out / "distill_eval.json", _distill_eval_inputs(ctx, k))
    if (
        rec is None
        or f"student_mmd_k{k}" not in rec
        or rec.get("seeds") != _distill_eval_seeds(ctx)
    ):
        return None
    return rec


def stage_distill(
    ctx: Context,
    start: StartPoint | None = None,
    teacher_sets: list[SetEvaluation] | None = None,
) -> dict:
    """Teacher + phase-1 MMD student; evaluates both; writes `distill_eval.json`, or, called
    without `start`, reuses it when `current_distill_eval`. `teacher_sets`: the evaluations of
    the teacher's sample sets for the seeds of the comparison, if made already."""
    teacher = stage_teacher(ctx)
    if start is None:
        done = current_distill_eval(ctx, ctx.cfg.mmd.sampler.num_steps)
        if done is not None:
            _log(f"reusing {ctx.out / 'distill_eval.json'} (made from the current files)")
            return done
        (start,), drawn = _phase1_and_teacher_sets(ctx, teacher, [{}], teacher_sets is None)
        teacher_sets = drawn if teacher_sets is None else teacher_sets
    k = start.sampler.num_steps
    seeds = _distill_eval_seeds(ctx)
    seeds_tk = seeds[:SAME_SAMPLER_EVAL_SETS]
    # One distance of all sets pooled (n_sets x eval_samples samples): a single set of 500
    # varies by a factor 4 between sets of real images (Evaluator.evaluate_pooled), and the
    # 8-step student's distance still varies by 0.36 between blocks of 8 sets of 500.
    models = {
        "teacher": (teacher, ctx.cfg.teacher.sampler, seeds if teacher_sets is None else []),
        "student": (start.student, start.sampler, seeds),
        # the teacher's own chain with the student's K steps: what distillation buys
        "teacher_k": (teacher, start.sampler, seeds_tk),
    }
    jobs = [(name, sd) for name, (_, _, sds) in models.items() for sd in sds]

    def job(item):  # each set is scored as it is drawn: only features are kept (72 sets)
        name, sd = item
        params, sampler, _ = models[name]
        if name == "teacher":
            return teacher_set_eval(ctx, params, sd)
        return evaluate_samples(ctx, params, sampler, sd)

    sets = run_jobs(job, jobs, ctx.cfg.pareto.workers, "evaluate teacher and student", ctx.progress)
    by_model = {name: [x for (n, _), x in zip(jobs, sets) if n == name] for name in models}
    if teacher_sets is not None:
        by_model["teacher"] = list(teacher_sets)
    pooled = {name: ctx.evaluator.pool(xs) for name, xs in by_model.items()}
    t_eval, s_eval, tk_eval = pooled["teacher"], pooled["student"], pooled["teacher_k"]
    tk_eval["seeds"] = seeds_tk
    dn = ctx.evaluator.distance_name
    summary = {
        "distance_name": dn,
        "seeds": seeds,
        "teacher": t_eval,
        f"student_mmd_k{k}": s_eval,
        f"teacher_k{k}_same_sampler": tk_eval,
        "student_over_teacher_distance": s_eval[dn] / t_eval[dn],
        "inputs": _distill_eval_inputs(ctx, k),
    }
    write_text(ctx.out / "distill_eval.json", json.dumps(summary, indent=2))
    _log(
        f"MMD student K={k}: accuracy {s_eval['accuracy']:.3f}, {dn} "
        f"({s_eval['samples']} samples pooled, teacher {t_eval[dn]:.4f}) "
        f"{s_eval[dn]:.4f} ({summary['student_over_teacher_distance']:.2f}x teacher); "
        f"teacher sampled with the same {k} steps: {tk_eval[dn]:.4f}"
    )
    return summary


def _read_rows(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated (distance, reward) points (lower distance, higher reward), by distance."""
    front = []
    for d, r in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or r > front[-1][1]:
            front.append((d, r))
    return front


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether (distance, reward) point `a` Pareto-dominates `b`: as good in both (distance no
    higher, reward no lower) and strictly better in one. An exact tie dominates nothing: every
    front holds the start point all methods share, and a baseline that never moves from it is
    not beaten by the start point RMMD also holds."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def dominance(front_a: list[tuple[float, float]], front_b: list[tuple[float, float]]) -> float:
    """Share of `front_b`'s points dominated (`dominates`) by some point of `front_a`."""
    if not front_b:
        return float("nan")
    hit = sum(any(dominates(a, b) for a in front_a) for b in front_b)
    return hit / len(front_b)


def summarize(
    rows: list[dict], methods: tuple[str, ...], rewards: tuple[str, ...],
    distance_name: str = DISTANCE_NAME,
) -> dict:  # fmt: skip
    """Per reward: each method's Pareto front and the share of DRaFT/ReFL/DI++/HyperNoise front
    points that the RMMD front dominates; `rmmd_dominates` is true when that share is 1.
    `distance_name` names the rows' `distance` (`Evaluator.distance_name`)."""
    out: dict[str, Any] = {"distance_name": distance_name, "rewards": {}}
    wins = 0
    for r in rewards:
        fronts = {}
        for m in methods:
            pts = [
                (x["distance"], x["reward_value"])
                for x in rows
                if x["reward"] == r and x["method"] == m
            ]
            if pts:  # a method may sweep no lambda for this reward (pareto.method_lambdas)
                fronts[m] = pareto_front(pts)
        entry: dict[str, Any] = {"fronts": fronts}
        if "rmmd" in fronts:
            for b in ("draft", "refl", "dipp", "hypernoise"):
                if b in fronts:
                    entry[f"rmmd_dominates_{b}_share"] = dominance(fronts["rmmd"], fronts[b])
            both = [entry.get(f"rmmd_dominates_{b}_share") for b in ("draft", "refl")]
            both = [s for s in both if s is not None]
            # no DRaFT or ReFL front on this reward: nothing is dominated (not a vacuous win)
            entry["rmmd_dominates_draft_and_refl"] = bool(both) and all(s == 1.0 for s in both)
            wins += int(entry["rmmd_dominates_draft_and_refl"])
        out["rewards"][r] = entry
    out["rewards_where_rmmd_dominates_draft_and_refl"] = wins
    return out


def write_outputs(out: pathlib.Path, rows: list[dict], summary: dict, refs: dict) -> None:
    """Write `pareto.csv` (exact columns), `pareto_summary.json` and `pareto.png`, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for x in rows:
        w.writerow(
            [
                x["method"],
                x["reward"],
                x["lambda"],
                x["step"],
                f"{x['distance']:.6g}",
                f"{x['reward_value']:.6g}",
            ]
        )
    write_text(out / "pareto.csv", buf.getvalue())
    write_text(out / "pareto_summary.json", json.dumps({**summary, "references": refs}, indent=2))
    plot_pareto(out / "pareto.png", rows, summary, refs)


def plot_pareto(path: pathlib.Path, rows: list[dict], summary: dict, refs: dict) -> None:
    """One panel per reward: every evaluated point (faint) and each method's front (line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = list(summary["rewards"])
    fig, axes = plt.subplots(1, len(rewards), figsize=(5 * len(rewards), 4), squeeze=False)
    colors = {
        "rmmd": "C3",
        "mmd": "C7",
        "draft": "C0",
        "refl": "C2",
        "dipp": "C1",
        "hypernoise": "C4",
    }
    for ax, r in zip(axes[0], rewards):
        for m, front in summary["rewards"][r]["fronts"].items():
            if m in refs:  # the phase-1 student's single point: drawn once, as its star below
                continue
            pts = [
                (x["reward_value"], x["distance"])
                for x in rows
                if x["reward"] == r and x["method"] == m
            ]
            c = colors.get(m, None)
            if pts:
                ax.scatter(*zip(*pts), s=8, alpha=0.3, color=c)
            if front:
                ds, rs = zip(*front)
                ax.plot(rs, ds, "-o", ms=3, color=c, label=m)
        for name, ref in refs.items():
            if r in ref:
                ax.scatter([ref[r]], [ref["distance"]], marker="*", s=120, label=name, zorder=5)
        # Distances span 1 to 100s (DI++), so a log axis; the reward axis covers the fronts and
        # the references (dominated outliers, e.g. DI++'s untuned start, fall outside).
        xs = [p[1] for f in summary["rewards"][r]["fronts"].values() for p in f]
        xs += [ref[r] for ref in refs.values() if r in ref]
        if xs:
            lo, hi = min(xs), max(xs)
            pad = 0.08 * (hi - lo) if hi > lo else 0.05 * abs(hi) + 1e-3
            ax.set_xlim(lo - pad, hi + pad)
        ax.set_yscale("log")
        ax.set_xlabel(f"reward: {r} (higher is better)")
        name = summary.get("distance_name", DISTANCE_NAME)
        ax.set_ylabel(("FID" if name == "fid" else name.replace("_", " ")) + " (log)")
        ax.set_title(f"{r}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with written(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def stage_pareto(ctx: Context) -> dict:
    """The lambda sweep (methods x rewards x lambdas), resumable through `pareto_rows.jsonl`."""
    cfg = ctx.cfg
    teacher = stage_teacher(ctx)
    # The phase-1 students: K steps, and K = 1 for DI++ (independent: trained side by side,
    # with the teacher's sample sets of the comparison when it is still to be made).
    phase1 = [{}]
    if "dipp" in cfg.pareto.methods:
        phase1.append({"num_steps": 1, "steps": cfg.pareto.dipp_mmd_steps})
    k_steps = cfg.mmd.sampler.num_steps
    need_eval = current_distill_eval(ctx, k_steps) is None
    (start, *dipp_start), teacher_sets = _phase1_and_teacher_sets(ctx, teacher, phase1, need_eval)
    if need_eval:
        stage_distill(ctx, start, teacher_sets)
    ctx.teacher_sets.clear()  # the teacher's sets are used only up to here
    starts = {"rmmd": start, "draft": start, "refl": start, "hypernoise": start}
    if dipp_start:
        starts["dipp"] = dipp_start[0]

    def run_inputs(method: str) -> dict[str, str] | None:
        # what a run is made from: the teacher, its start point's files, the classifiers
        k = 1 if method == "dipp" else k_steps
        return eval_digests(ctx, "teacher.npz", f"student_k{k}.npz", f"aux_k{k}.npz")

    inputs_of = {m: run_inputs(m) for m in METHODS}
    log_path = ctx.out / "pareto_rows.jsonl"
    rows = _read_rows(log_path)
    done = {
        (x["method"], x["reward"], x["lambda"])
        for x in rows
        if x["step"] == cfg.finetune.steps
        and inputs_of.get(x["method"]) is not None
        and not changed_digests(x.get("inputs") or {}, inputs_of[x["method"]])
    }
    rows = [x for x in rows if (x["method"], x["reward"], x["lambda"]) in done]
    # Rewrite the log with only complete runs from the current files (an interrupted run
    # restarts from its step 0, a stale one is run again).
    write_text(log_path, "".join(json.dumps(x) + "\n" for x in rows))
    cache: dict = {}  # compiled fine-tuning steps
    eval_cache: dict = {}  # step-0 evaluations of each start point
    refs_path = ctx.out / "pareto_refs.json"
    refs = json.loads(refs_path.read_text()) if refs_path.exists() else {}
    ref_inputs = {
        "mmd": eval_digests(ctx, f"student_k{k_steps}.npz"),
        "teacher": eval_digests(ctx, "teacher.npz"),
    }
    for name in ("mmd", "teacher"):
        if name in refs and not changed_digests(refs[name].get("inputs") or {}, ref_inputs[name]):
            continue
        if name == "mmd":  # the phase-1 student: the step-0 evaluation every run shares
            m = start_metrics(ctx.model, start, ctx.evaluator, EVAL_SEED, eval_cache)
        else:
            x = generate(ctx.model, teacher, cfg.teacher.sampler, ctx.evaluator.labels, EVAL_SEED)
            m = ctx.evaluator.evaluate(x)
        refs[name] = {
            "distance": m[ctx.evaluator.distance_name],
            **{k[len("reward_") :]: v for k, v in m.items() if k.startswith("reward_")},
            "inputs": ref_inputs[name],
        }
        write_text(refs_path, json.dumps(refs, indent=2))

    # lambda-major order: at any point the finished runs cover the methods evenly, and the
    # outputs are rewritten after each run, so an interrupted sweep leaves a usable front.
    plan = []
    for r in cfg.pareto.rewards:
        per_method = {m: cfg.pareto.lambdas_for(m, r) for m in cfg.pareto.methods}
        for i in range(max((len(v) for v in per_method.values()), default=0)):
            for method in cfg.pareto.methods:
                if i < len(per_method[method]):
                    plan.append((method, r, float(per_method[method][i])))
    order = {run: i for i, run in enumerate(plan)}

    def finish() -> dict:
        # rows in plan order whatever order the runs finished in: the outputs are deterministic
        ordered = sorted(
            rows, key=lambda x: (order.get((x["method"], x["reward"], x["lambda"]), -1), x["step"])
        )
        all_rows = [
            {"method": "mmd", "reward": r, "lambda": 0.0, "step": cfg.mmd.steps,
             "distance": refs["mmd"]["distance"], "reward_value": refs["mmd"][r]}
            for r in cfg.pareto.rewards
        ] + ordered  # fmt: skip
        summary = summarize(
            all_rows, ("mmd",) + tuple(cfg.pareto.methods), cfg.pareto.rewards,
            ctx.evaluator.distance_name,
        )  # fmt: skip
        write_outputs(ctx.out, all_rows, summary, refs)
        return summary

    # Every reward of the sweep, so that each method compiles one step for all of them.
    sweep_rewards = {r: ctx.reward(r) for r in cfg.pareto.rewards}
    todo = [run for run in plan if run not in done]
    # The step-0 evaluation of each start point, once, before the runs that share it start.
    for sp in {id(starts[m]): starts[m] for m, _, _ in todo if m != "hypernoise"}.values():
        start_metrics(ctx.model, sp, ctx.evaluator, EVAL_SEED, eval_cache)

    def run_checkpoints(run: tuple[str, str, float]) -> StageCheckpoints:
        # a run's mid-run resume point, kept until its rows are in the log
        method, r, lam = run
        settings = {
            "run": [method, r, lam], "finetune": to_dict(cfg.finetune),
            "eval_every": cfg.pareto.eval_every, "eval_samples": cfg.pareto.eval_samples,
            "inputs": inputs_of[method],
        }  # fmt: skip
        return StageCheckpoints(ctx.out / f"checkpoints_run_{method}_{r}_{lam:g}", settings)

    def run_one(run: tuple[str, str, float]) -> list[dict]:
        method, r, lam = run
        return finetune_run(
            method, r, lam, model=ctx.model, teacher_params=teacher, start=starts[method],
            reward=sweep_rewards[r], data=ctx.data, cfg=cfg.finetune, evaluator=ctx.evaluator,
            eval_every=cfg.pareto.eval_every, eval_seed=EVAL_SEED, step_cache=cache,
            progress=ctx.progress and cfg.pareto.workers == 1, sweep_rewards=sweep_rewards,
            eval_cache=eval_cache, checkpoints=run_checkpoints(run),
        )  # fmt: skip

    def on_done(i: int, new: list[dict]) -> None:
        method, r, lam = todo[i]
        new = [{**row, "inputs": inputs_of[method]} for row in new]
        with log_path.open("a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in new))
        run_checkpoints(todo[i]).finish()
        rows.extend(new)
        last = new[-1]
        _log(
            f"{method:5s} {r:10s} lambda={lam:<6g} step {last['step']}: distance "
            f"{last['distance']:.4f} reward {last['reward_value']:.4f}"
        )
        finish()

    run_jobs(
        run_one, todo, cfg.pareto.workers, f"sweep ({cfg.pareto.workers} runs at a time)",
        ctx.progress and cfg.pareto.workers > 1, on_done,
    )  # fmt: skip
    summary = finish()
    _log(
        f"pareto: RMMD front dominates DRaFT and ReFL on "
        f"{summary['rewards_where_rmmd_dominates_draft_and_refl']} of {len(cfg.pareto.rewards)} "
        f"rewards; wrote {ctx.out / 'pareto.csv'} and {ctx.out / 'pareto.png'}"
    )
    return summary
