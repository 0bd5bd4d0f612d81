"""Training loops of the image path: the VP teacher and phase-1 moment matching (MMD).

Both are single-process loops of their own (the sharded orbax trainer of `gencast_rmmd.training`
is built for the GenCast data pipeline), data-parallel over the local devices (`DataParallel`)
with gradient accumulation (`micro_batches`, `training.loop.accumulated_value_and_grad`). Each loop
shows a tqdm bar, appends JSON-lines metrics (`gencast_rmmd.training.metrics.MetricsWriter`) and
raises `TrainingDivergedError` on a non-finite loss. A finished stage writes its parameters
atomically (`save_params`) and is skipped when its file exists; within a stage, `StageCheckpoints`
saves the loop's whole state (parameters, EMA, optimizer state, PRNG key, step) every
`CHECKPOINT_EVERY_S` seconds, so a crashed stage resumes from its last checkpoint, on the same
batches and keys as an uninterrupted run, and ends with the same parameters.

Phase 1 uses the distill area's objective (`gencast_rmmd.distill.objectives.make_objective`,
start = "data") on the VE view of the U-ViT; student and auxiliary are initialised from the teacher.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from gencast_rmmd import stopping
from gencast_rmmd.distill import objectives as obj
from gencast_rmmd.distill.trainer import phase_rules
from gencast_rmmd.errors import CheckpointError, TrainingDivergedError
from gencast_rmmd.image.config import MMDConfig, OptimConfig, TeacherConfig
from gencast_rmmd.image.data import ImageDataset, batch_iterator
from gencast_rmmd.image.diffusion import WithoutDropout
from gencast_rmmd.image.model import ImageModel
from gencast_rmmd.model.sh_noise import gaussian_noise
from gencast_rmmd.remote import written
from gencast_rmmd.training import sharding
from gencast_rmmd.training.checkpointing import CheckpointManager, latest_step
from gencast_rmmd.training.loop import (
    LoopConfig,
    accumulated_value_and_grad,
    micro_keys,
    say_warmup,
)
from gencast_rmmd.training.metrics import MetricsWriter


def save_params(path: str | pathlib.Path, params: Any, meta: dict | None = None) -> None:
    """Write a params pytree as a flat `.npz` (keys `params/<module>/<name>`, plus `meta` as a
    JSON string array), atomically, loadable with `allow_pickle=False`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)
        flat[f"params/{key}"] = np.asarray(leaf)
    flat["meta"] = np.array(json.dumps(meta or {}))
    with written(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **flat)


def load_params(path: str | pathlib.Path, like: Any) -> tuple[Any, dict]:
    """Read `save_params` output into the structure of `like`; checks names and shapes."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    leaves = []
    for kp, leaf in jax.tree_util.tree_flatten_with_path(like)[0]:
        key = "params/" + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)
        if key not in data:
            raise CheckpointError(f"{path}: missing array {key!r} (model config mismatch?)")
        if data[key].shape != np.shape(leaf):
            raise CheckpointError(
                f"{path}: {key!r} has shape {data[key].shape}, the model expects {np.shape(leaf)}"
            )
        leaves.append(jnp.asarray(data[key]))
    meta = json.loads(str(data["meta"])) if "meta" in data else {}
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves), meta


def make_optimizer(cfg: OptimConfig, steps: int) -> optax.GradientTransformation:
    """Adam(b1, b2, eps) with linear warm-up, then constant or linear decay to 0; grad clip."""
    warm = max(cfg.warmup_steps, 0)
    if cfg.decay_to_zero:
        after = optax.linear_schedule(cfg.learning_rate, 0.0, max(steps - warm, 1))
    else:
        after = optax.constant_schedule(cfg.learning_rate)
    if warm > 0:
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.learning_rate, warm), after], [warm]
        )
    else:
        sched = after
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adam(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    return optax.chain(*parts)


def metrics_writer(path: str | pathlib.Path | None, start: int = 0) -> MetricsWriter:
    """A JSON-lines writer for `path` (a loop starting at step `start` keeps the records of the
    steps before it), or a disabled one for None."""
    return MetricsWriter(
        path if path is not None else "unused.jsonl",
        resume_step=start - 1 if start else None,
        enabled=path is not None,
    )


# Wall-clock seconds between two mid-stage checkpoints of an image training loop: what a crash
# can cost at most. Saving takes well under a second on the embedded digits.
CHECKPOINT_EVERY_S = 300.0


class StageCheckpoints:
    """The resume point of one image training stage, kept in `directory` (orbax, through
    `training.checkpointing.CheckpointManager`) until the stage's output is written.

    A checkpoint is saved every `every_s` seconds (default `CHECKPOINT_EVERY_S`) and holds the
    loop's state pytree and the step to continue from, with `settings`
    (what the stage is made from: its config, its inputs' digests); one made with other settings
    is set aside (a fresh start, said on stderr), never resumed. `directory=None` disables it.
    """

    def __init__(
        self,
        directory: str | pathlib.Path | None,
        settings: dict,
        every_s: float | None = None,
    ):
        self.directory = None if directory is None else pathlib.Path(directory)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON
        self.every_s = CHECKPOINT_EVERY_S if every_s is None else every_s
        self.record: Any = None  # the JSON record saved beside the restored state, if any
        self._mngr: CheckpointManager | None = None
        self._last = time.monotonic()

    def restore(self, state: Any) -> tuple[int, Any]:
        """`(step to start from, state)`: the last checkpoint's, or `(0, state)` when there is
        none or it was made with other settings."""
        if self.directory is None or latest_step(self.directory) is None:
            return 0, state
        mngr = self._manager()
        if mngr.read_meta().get("settings") != self.settings:
            print(
                f"{self.directory}: checkpoint made with other settings; starting the stage afresh",
                file=sys.stderr,
            )
            self.finish()
            return 0, state
        restored, meta = mngr.restore(state)
        self.record = meta.get("record")
        return int(meta["next_step"]), restored

    def maybe_save(
        self, next_step: int, state: Any, last: bool = False, record: Any = None
    ) -> None:
        """Save when `every_s` seconds have passed since the last save (not after the last step:
        the stage's own output follows), with `record` (JSON: e.g. a run's evaluations so far),
        which `restore` puts back in `self.record`. When SIGTERM or Ctrl-C asked the loop to
        stop (`stopping.requested`), save now and raise `StoppedBySignal`."""
        signum = stopping.requested() if self.directory is not None else None
        if signum is None and (
            self.directory is None or last or time.monotonic() - self._last < self.every_s
        ):
            return
        meta = {"next_step": next_step, "settings": self.settings, "record": record}
        self._manager().save(next_step, state, meta)
        self._last = time.monotonic()
        if signum is not None:  # SIGTERM / Ctrl-C inside the loop's `stopping.graceful_stop`
            raise stopping.stopped(
                signum,
                self.directory.name,
                f"with checkpoint {self.directory} saved (it resumes at step {next_step})",
            )

    def finish(self) -> None:
        """Delete the checkpoints (the stage's output is written, or they are stale)."""
        if self._mngr is not None:
            self._mngr.close()
            self._mngr = None
        if self.directory is not None and self.directory.exists():
            shutil.rmtree(self.directory)

    def _manager(self) -> CheckpointManager:
        if self._mngr is None:
            self._mngr = CheckpointManager(self.directory, max_to_keep=1)
        return self._mngr


def _check_finite(loss: float, step: int, what: str) -> None:
    if not np.isfinite(loss):
        raise TrainingDivergedError(
            f"{what}: loss became {loss} at step {step}; no checkpoint of this stage was written "
            "(lower the learning rate and rerun)"
        )


def teacher_step(cfg: TeacherConfig, model: ImageModel, opt: optax.GradientTransformation):
    """The teacher's jitted update, `step(params, ema, opt_state, batch, key) -> (params, ema,
    opt_state, loss)` on a batch of micro-batches (`DataParallel.batch`), their gradients
    averaged."""

    def grad_fn(params, batch, key):
        return jax.value_and_grad(model.vp_loss)(params, key, batch["images"], batch["labels"])

    @jax.jit
    def step(params, ema, opt_state, batch, key):
        micro, keys = micro_batches(batch, key)
        loss, g = accumulated_value_and_grad(grad_fn, params, micro, keys)
        upd, opt_state = opt.update(g, opt_state, params)
        params = optax.apply_updates(params, upd)
        ema = jax.tree.map(lambda e, p: cfg.ema_decay * e + (1 - cfg.ema_decay) * p, ema, params)
        return params, ema, opt_state, loss

    return step


def train_teacher(
    cfg: TeacherConfig,
    model: ImageModel,
    data: ImageDataset,
    metrics_path: str | pathlib.Path | None = None,
    progress: bool = True,
    checkpoints: StageCheckpoints | None = None,
) -> Any:
    """Train the VP teacher (v-prediction loss, `ImageModel.vp_loss`); returns EMA params.
    With `checkpoints` it resumes from, and saves to, that stage's checkpoints."""
    ckpts = checkpoints or StageCheckpoints(None, {})
    rng = jax.random.PRNGKey(cfg.seed)
    rng, r_init = jax.random.split(rng)
    params = model.init(r_init)
    opt = make_optimizer(cfg.optim, cfg.steps)
    opt_state = opt.init(params)
    ema = params
    start, (params, ema, opt_state, rng) = ckpts.restore((params, ema, opt_state, rng))
    say_warmup(cfg.optim, cfg.steps, "teacher.optim", start, cfg.steps)
    dp = DataParallel(cfg.batch_size, cfg.grad_accum_steps, "teacher.")
    params, ema, opt_state, rng = dp.put((params, ema, opt_state, rng))
    step = teacher_step(cfg, model, opt)
    writer = metrics_writer(metrics_path, start)
    it = batch_iterator(data.train_images, data.train_labels, cfg.batch_size, cfg.seed, start)
    bar = tqdm(
        range(start, cfg.steps), desc="teacher", disable=not progress, initial=start,
        total=cfg.steps,
    )  # fmt: skip
    run = None
    with stopping.graceful_stop(enabled=ckpts.directory is not None):
        for i in bar:
            batch = dp.batch(*next(it))
            rng, key = jax.random.split(rng)
            params, ema, opt_state, loss = step(params, ema, opt_state, batch, key)
            if i % 50 == 0 or i == cfg.steps - 1:
                lv = float(loss)
                _check_finite(lv, i, "teacher")
                run = lv if run is None else 0.9 * run + 0.1 * lv
                bar.set_postfix(loss=f"{run:.4f}")
                writer.write(i, {"loss": lv})
            ckpts.maybe_save(i + 1, (params, ema, opt_state, rng), last=i == cfg.steps - 1)
    return ema


class DataParallel:
    """The devices an image loop runs on: all local devices on a one-axis `data` mesh
    (`training.sharding`), parameters, optimizer state and keys replicated (`put`), each batch
    split on the host into its `grad_accum_steps` micro-batches `[A, B / A, ...]` and every
    micro-batch over the devices (`batch`). The jitted steps then run each micro-batch
    data-parallel, XLA averaging the gradients across devices: the update of one device with
    the whole batch, up to float summation order. On one device (CPU) it is that device.
    `where` ("teacher.", "mmd.", "finetune.") names the config keys in the refusal of a
    micro-batch the devices do not divide. The image path runs in one process."""

    def __init__(self, batch_size: int, grad_accum_steps: int, where: str, devices=None):
        devices = jax.local_devices() if devices is None else list(devices)
        _check_micro_batches(batch_size, grad_accum_steps, len(devices), where)
        self.mesh = sharding.make_mesh(devices)
        self.accum = grad_accum_steps

    def put(self, tree: Any) -> Any:
        """`tree` replicated on every device."""
        return sharding.replicate(tree, self.mesh)

    def batch(self, images: np.ndarray, labels: np.ndarray, dropout: Any = None) -> dict:
        """`{"images": [A, B / A, H, W, C], "labels": [A, B / A], "dropout": key or None}`, each
        micro-batch split over the devices (the key replicated)."""

        def split(x):
            x = np.asarray(x)
            return x.reshape(self.accum, x.shape[0] // self.accum, *x.shape[1:])

        arrays = {"images": split(images), "labels": split(labels)}
        return {**sharding.shard_batch(arrays, self.mesh, batch_axis=1), "dropout": dropout}


TRAINING_STAGES = ("teacher", "mmd", "finetune")  # the config sections of the image trainers


def check_devices(
    cfg: Any, devices: int | None = None, stages: tuple[str, ...] = TRAINING_STAGES
) -> None:
    """`ConfigError` unless the local devices (`devices` of them) divide every micro-batch of
    the training `stages` (of the teacher, phase 1 and phase 2; `DataParallel`), said before a
    run writes anything."""
    n = jax.local_device_count() if devices is None else devices
    for where in stages:
        c = getattr(cfg, where)
        _check_micro_batches(c.batch_size, c.grad_accum_steps, n, f"{where}.")


def _check_micro_batches(batch_size: int, grad_accum_steps: int, devices: int, where: str) -> None:
    """The weather trainers' refusal (`LoopConfig.check_devices`) of micro-batches the devices
    do not divide, naming `where`'s keys."""
    loop = LoopConfig(num_steps=0, batch_size=batch_size, grad_accum_steps=grad_accum_steps)
    loop.check_devices(devices, where)


def next_batch(
    it: Iterator, rng: jax.Array, dropout: bool, dp: DataParallel
) -> tuple[jax.Array, jax.Array, dict]:
    """The next training batch of a distillation / fine-tuning loop from `it` (as `dp.batch`
    lays it out), with the step's keys split off `rng`: `(rng, step key, batch)`; the batch's
    `dropout` key is None unless `dropout`."""
    x, y = next(it)
    rng, key, kd = jax.random.split(rng, 3)
    return rng, key, dp.batch(x, y, kd if dropout else None)


def micro_batches(batch: dict, key: jax.Array) -> tuple[dict, jax.Array]:
    """A batch of A micro-batches (`DataParallel.batch`: images and labels `[A, B / A, ...]`, a
    dropout key or None) as `training.loop.accumulated_value_and_grad` takes it, with one key
    per micro-batch. With A = 1 the one micro-batch has the step's own key (the random numbers
    of a step without accumulation); else micro-batch i gets `fold_in(key, i)`, and its dropout
    key `fold_in(dropout key, i)`."""
    accum = batch["images"].shape[0]

    def keys(k):
        return k[None] if accum == 1 else micro_keys(k, accum)

    micro = dict(batch)
    if batch.get("dropout") is not None:
        micro["dropout"] = keys(batch["dropout"])
    return micro, keys(key)


def image_objective(
    model: ImageModel,
    sampler_cfg,
    ocfg: obj.ObjectiveConfig,
    reward_fn=None,
):
    """The distill area's MMD/RMMD objective on the VE view of the U-ViT.

    Batches are dicts `{"images": [B, H, W, C], "labels": [B], "dropout": rng key or None}`;
    the conditioning is `(labels, dropout_rng)` when dropout is on, else the labels.
    `reward_fn(x [B, H, W, C], labels [B]) -> [B]` is averaged over the M members.

    Dropout is the student's randomness xi (rmmd.md §0, §2.2, §2.8): its gradient-carrying call
    `x_hat = G_theta(x_t, t, xi)` gets the rng; the auxiliary denoiser, the frozen phase-1 copies
    (the L2 anchor G_theta0 and m_ref = frozen aux; `NO_DROPOUT_GROUPS`) and the teacher run
    without it, and so does phase 2's on-policy sampling chain (`chain_denoise_fn`).
    """

    def cond_fn(batch):
        if batch.get("dropout") is not None:
            return (batch["labels"], batch["dropout"])
        return batch["labels"]

    wrapped = None
    if reward_fn is not None:

        def wrapped(samples, cond, batch):
            return jnp.mean(jax.vmap(lambda s: reward_fn(s, batch["labels"]))(samples), axis=0)

    inner = obj.make_objective(
        model.denoise_fn,
        gaussian_noise,
        sampler_cfg,
        ocfg,
        target_fn=lambda b: b["images"],
        cond_fn=cond_fn,
        reward_fn=wrapped,
        teacher_denoise_fn=model.teacher_denoise_fn,
        chain_denoise_fn=lambda p, x, s, c: model.denoise_fn(WithoutDropout(p), x, s, c),
    )

    def objective(params, batch, rng, **kwargs):
        params = {g: WithoutDropout(p) if g in NO_DROPOUT_GROUPS else p for g, p in params.items()}
        return inner(params, batch, rng, **kwargs)

    return objective


# Parameter groups of the shared objective that run without the student's dropout
# (`image_objective`).
NO_DROPOUT_GROUPS = ("aux", "aux_frozen", "student_frozen")


def mmd_objective_config(cfg: MMDConfig) -> obj.ObjectiveConfig:
    """Phase-1 `ObjectiveConfig` (data start, no reward) from the image MMD config."""
    return obj.ObjectiveConfig(
        start="data",
        members=1,
        mmd_weight=1.0,
        reward_weight=0.0,
        l2_weight=0.0,
        reference="teacher",
        aux_update="online",
        update_schedule=cfg.update_schedule,
        time_sampling=cfg.time_sampling,
        mmd_weighting=cfg.mmd_weighting,
        aux_weighting=cfg.aux_weighting,
        aux_reg_weight=cfg.aux_reg_weight,
        s_floor=cfg.s_floor,
    )


def make_distill_step(objective, ocfg: obj.ObjectiveConfig, optimizers: dict):
    """Phase-1 update rules over `trainable = {"student", "aux"}` (and frozen groups), as
    `gencast_rmmd.distill.trainer.phase_rules` defines them: "alternating" updates the aux on
    even and the student on odd steps (MMD Algorithm 2), "simultaneous" both from one pass
    (disjoint parameter groups, and the student loss sees the aux only through stop_gradient, so
    one gradient gives both updates). `optimizers[rule]` (`mmd_optimizers`) updates exactly the
    groups of its rule with its own state, so an alternating step moves only the group it
    updates (no momentum step for the other) and each group's Adam counts its own updates.

    Returns `(init, step)`: `init(trainable) -> opt_state`, and
    `step(i, trainable, frozen, opt_state, batch, key) -> (trainable, opt_state, loss, metrics)`
    runs the rule of loop step i (one jitted function per rule) on a batch of micro-batches
    (`DataParallel.batch`), their gradients averaged.
    """
    rules, schedule = phase_rules(objective, ocfg)

    def make(name: str, rule):
        opt = optimizers[name]

        @jax.jit
        def step(trainable, frozen, opt_state, batch, key):
            active = {g: trainable[g] for g in rule.groups}
            others = {g: p for g, p in trainable.items() if g not in rule.groups}

            def loss_fn(a, mb, k):
                return rule.loss_fn({**frozen, **others, **a}, mb, k)

            micro, keys = micro_batches(batch, key)
            (loss, metrics), g = accumulated_value_and_grad(
                jax.value_and_grad(loss_fn, has_aux=True), active, micro, keys
            )
            upd, new_state = opt.update(g, opt_state[name], active)
            new = {**trainable, **optax.apply_updates(active, upd)}
            return new, {**opt_state, name: new_state}, loss, metrics

        return step

    steps = {name: make(name, rule) for name, rule in rules.items()}

    def init(trainable):
        return {
            name: optimizers[name].init({g: trainable[g] for g in rule.groups})
            for name, rule in rules.items()
        }

    def step(i, *args):
        return steps[schedule(i)](*args)

    step.rules = steps  # the jitted step of each rule, by name (for benchmarks/image_memory.py)
    return init, step


def mmd_optimizers(cfg: MMDConfig, steps: int) -> dict[str, optax.GradientTransformation]:
    """The optimizer of each phase-1 update rule (`make_distill_step`), for `steps` loop steps.

    "simultaneous": one, "joint", over `{"student", "aux"}`: `cfg.optim` for both, or with
    `aux_lr_ratio != 1` two time scales, the auxiliary denoiser at `aux_lr_ratio` x the learning
    rate (each group then clips its own gradient norm). "alternating": one per group, "student"
    and "aux" (the latter at `aux_lr_ratio` x the learning rate), each with its own Adam state,
    its warm-up and decay counted in its own updates, (steps + 1) // 2 of them (as
    `gencast_rmmd.distill.trainer` counts them).
    """
    aux_optim = dataclasses.replace(
        cfg.optim, learning_rate=cfg.optim.learning_rate * cfg.aux_lr_ratio
    )
    if cfg.update_schedule == "alternating":
        per_group = (steps + 1) // 2
        return {
            "student": make_optimizer(cfg.optim, per_group),
            "aux": make_optimizer(aux_optim, per_group),
        }
    opt = make_optimizer(cfg.optim, steps)
    if cfg.aux_lr_ratio != 1.0:
        opt = optax.multi_transform(
            {"student": opt, "aux": make_optimizer(aux_optim, steps)},
            lambda tree: {k: jax.tree.map(lambda _, k=k: k, v) for k, v in tree.items()},
        )
    return {"joint": opt}


def train_mmd(
    cfg: MMDConfig,
    model: ImageModel,
    teacher_params: Any,
    data: ImageDataset,
    steps: int | None = None,
    metrics_path: str | pathlib.Path | None = None,
    progress: bool = True,
    desc: str = "mmd",
    checkpoints: StageCheckpoints | None = None,
) -> tuple[Any, Any]:
    """Phase 1 (off-policy MMD): returns `(student_params, aux_params)`, both from the teacher.
    With `cfg.ema_decay > 0` the returned student is the exponential moving average of its
    iterates, the decay warmed up as min(ema_decay, (1 + i) / (10 + i)) at step i. With
    `checkpoints` it resumes from, and saves to, that stage's checkpoints."""
    ckpts = checkpoints or StageCheckpoints(None, {})
    steps = cfg.steps if steps is None else steps
    ocfg = mmd_objective_config(cfg)
    objective = image_objective(model, cfg.sampler, ocfg)
    trainable = {"student": teacher_params, "aux": teacher_params}
    frozen = {"teacher": teacher_params}
    init, step = make_distill_step(objective, ocfg, mmd_optimizers(cfg, steps))
    opt_state = init(trainable)
    ema = teacher_params
    rng = jax.random.PRNGKey(cfg.seed)
    start, (trainable, opt_state, ema, rng) = ckpts.restore((trainable, opt_state, ema, rng))
    per_group = (steps + 1) // 2 if cfg.update_schedule == "alternating" else steps
    say_warmup(cfg.optim, per_group, "mmd.optim", start, steps)
    dp = DataParallel(cfg.batch_size, cfg.grad_accum_steps, "mmd.")
    trainable, frozen, opt_state, ema, rng = dp.put((trainable, frozen, opt_state, ema, rng))
    writer = metrics_writer(metrics_path, start)
    it = batch_iterator(data.train_images, data.train_labels, cfg.batch_size, cfg.seed, start)
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, initial=start, total=steps)
    with stopping.graceful_stop(enabled=ckpts.directory is not None):
        for i in bar:
            rng, key, batch = next_batch(it, rng, cfg.dropout, dp)
            trainable, opt_state, loss, metrics = step(i, trainable, frozen, opt_state, batch, key)
            if i % 50 == 0 or i == steps - 1:
                lv = float(loss)
                _check_finite(lv, i, desc)
                m = {k: float(v) for k, v in metrics.items()}
                bar.set_postfix(gap=f"{m.get('moment_gap', float('nan')):.4f}")
                writer.write(i, {"loss": lv, **m})
            if cfg.ema_decay > 0:
                # warm-up of the decay, min(decay, (1 + i) / (10 + i)): the average forgets the
                # teacher it starts from within the first steps instead of keeping decay^steps of it
                decay = min(cfg.ema_decay, (1.0 + i) / (10.0 + i))
                ema = _ema_update(ema, trainable["student"], jnp.float32(decay))
            ckpts.maybe_save(i + 1, (trainable, opt_state, ema, rng), last=i == steps - 1)
    student = ema if cfg.ema_decay > 0 else trainable["student"]
    return student, trainable["aux"]


@jax.jit
def _ema_update(ema, params, decay):
    return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
