"""The shared training loop: optimizers, data order, sharded jitted steps, checkpoints, metrics.

Used by the teacher trainer (`training/teacher.py`) and the distillation trainer (`distill/`).
The loop knows nothing about models: a task gives it

- `trainable`: a dict `group name -> params pytree` (e.g. {"student": ..., "aux": ...}); only
  these get optimizer state and are checkpointed;
- `frozen`: a dict of params that are read but never updated (teacher, frozen phase-1 copy); they
  are passed to every step, replicated, and not checkpointed (the caller reloads them; their
  identity goes into the provenance record);
- one or more `UpdateRule(loss_fn, groups)`: `loss_fn(params, batch, rng) -> (loss, metrics)`
  where `params` is the union of all trainable and frozen groups; the gradient is taken with
  respect to `groups` only, and only those groups' optimizers step. A Python `schedule(step) ->
  rule name` picks the rule per step (alternating optimisation = two rules with a parity
  schedule);
- `batches`: `batches(step) -> host-local numpy pytree` for the global batch of that step (a
  pure function of the step, e.g. `ShuffledBatches`), or an iterator with `get_state()` /
  `set_state()` (e.g. a grain loader iterator); either way the data position is checkpointed.
  With several processes each gets its share of every accumulation micro-batch (see
  `Trainer.train_step`).

Minimal use:

    rules = {"train": UpdateRule(loss_fn, groups=("denoiser",))}
    opt = {"denoiser": make_optimizer(OptimizerConfig(learning_rate=1e-3), num_steps)}
    trainer = Trainer(rules, opt, LoopConfig(num_steps=1000, batch_size=32), run_dir="RUN")
    state = trainer.restore_or_init({"denoiser": params})      # resumes if RUN has checkpoints
    state = trainer.fit(state, frozen={}, batches=ShuffledBatches(source, 32, seed=0))
    params = trainer.params(state)["denoiser"]

Per step: the global batch (leading axis `batch_size`) is split into `grad_accum_steps`
micro-batches (`lax.scan`, gradients averaged), sharded over the `data` mesh axis, and the update
is skipped if the loss or any gradient is NaN/Inf, after which the loop raises
`TrainingDivergedError` naming the step and the last good checkpoint (a resumed run may change
the optimizer settings, e.g. a lower learning rate: `optimizer_resume_key`). The step rng is
`fold_in(base_key, step)` (micro-batch i: `fold_in(step_key, i)`), so a resumed run draws exactly
the random numbers an uninterrupted run would.

Files under `run_dir`: `checkpoints/<step>/` (orbax, see `checkpointing.py`), `metrics.jsonl`
(see `metrics.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from gencast_rmmd import stopping
from gencast_rmmd.errors import ConfigError, TrainingDivergedError
from gencast_rmmd.training import sharding as shd
from gencast_rmmd.training.checkpointing import CheckpointManager
from gencast_rmmd.training.metrics import MetricsWriter

PyTree = Any
LossFn = Callable[[dict[str, PyTree], PyTree, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Adam with a learning-rate schedule (RMMD/GenCast: Adam(0.9, 0.99, 1e-12)).

    schedule:
      constant: `learning_rate` throughout (after an optional linear warm-up);
      cosine: warm-up, then cosine decay to `end_learning_rate` at `decay_steps`;
      linear: warm-up, then linear decay to `end_learning_rate` at `decay_steps` (RMMD ImageNet
        phase 2 decays linearly to 0).
    warmup_steps, decay_steps: counted in the updates of the parameter group this optimizer
      steps (its own update count, as optax counts), not in loop steps. decay_steps None means
      the number of updates `make_optimizer`'s `num_steps` gives: the run's `LoopConfig.num_steps`
      where the group is updated every step (the teacher; distillation's `simultaneous`
      schedule). In distillation's `alternating` schedule each group is updated every other
      step and `num_steps` is (loop num_steps + 1) // 2 for both groups (the auxiliary makes that
      many updates, the student (loop num_steps) // 2); an explicit value counts the same way, so
      `decay_steps: 100` spans 200 loop steps there. An explicit `decay_steps` must exceed
      `warmup_steps` for the cosine and linear schedules.
    grad_clip_norm: clip the global gradient norm before Adam (None: no clipping).

    A resumed run may change every field except whether gradients are clipped (see
    `optimizer_resume_key`); the new schedule continues from the group's update count.
    """

    learning_rate: float = 1e-4
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    decay_steps: int | None = None
    end_learning_rate: float = 0.0
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-12
    grad_clip_norm: float | None = None

    def validate(self) -> None:
        if not 0 < self.learning_rate < float("inf"):  # NaN fails too; 0 would train nothing
            raise ValueError(f"learning_rate: must be finite and > 0, found {self.learning_rate}")
        if not 0 <= self.end_learning_rate < float("inf"):
            raise ValueError(
                f"end_learning_rate: must be finite and >= 0, found {self.end_learning_rate}"
            )
        check_adam(self)
        if self.decay_steps is not None and self.decay_steps <= 0:
            raise ValueError(f"decay_steps: must be > 0 or null, found {self.decay_steps}")
        if (
            self.schedule != "constant"
            and self.decay_steps is not None
            and self.decay_steps <= self.warmup_steps
        ):  # the decay would happen in one update, straight after the warm-up
            raise ValueError(
                f"decay_steps: must be > warmup_steps ({self.warmup_steps}) for the "
                f"{self.schedule} schedule, found {self.decay_steps}"
            )
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm: must be > 0 or null, found {self.grad_clip_norm}")


def check_accum(batch_size: int, grad_accum_steps: int) -> None:
    """`ValueError` unless `grad_accum_steps` is >= 1 and divides `batch_size` (equal
    micro-batches); the weather and image trainers' configs both check it here."""
    if grad_accum_steps < 1 or batch_size % grad_accum_steps:
        raise ValueError(
            f"grad_accum_steps: must be >= 1 and divide batch_size={batch_size}, "
            f"found {grad_accum_steps}"
        )


def check_adam(cfg: Any) -> None:
    """For a `validate()` of any Adam config (this module's `OptimizerConfig`, the image path's
    `OptimConfig`): `warmup_steps` >= 0, `b1`, `b2` in [0, 1), `eps` >= 0."""
    if not cfg.warmup_steps >= 0:
        raise ValueError(f"warmup_steps: must be >= 0, found {cfg.warmup_steps}")
    for k in ("b1", "b2"):
        v = getattr(cfg, k)
        if not 0 <= v < 1:
            raise ValueError(f"{k}: must be in [0, 1), found {v}")
    if not cfg.eps >= 0:
        raise ValueError(f"eps: must be >= 0, found {cfg.eps}")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Steps, batch and bookkeeping of one training run.

    batch_size: the global batch per optimizer step (all devices and accumulation micro-steps
      together); must be divisible by `grad_accum_steps * number of devices` (`check_devices`).
    checkpoint_every: save every N steps (and always at the end).
    log_every: write a metrics record every N steps.
    """

    num_steps: int
    batch_size: int
    grad_accum_steps: int = 1
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.num_steps < 0:
            raise ValueError(f"num_steps: must be >= 0, found {self.num_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, found {self.batch_size}")
        check_accum(self.batch_size, self.grad_accum_steps)
        for k in ("checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}: must be >= 1, found {getattr(self, k)}")

    def check_devices(self, n_devices: int, where: str = "") -> None:
        """`ConfigError` unless every accumulation micro-batch (`batch_size / grad_accum_steps`
        examples) splits evenly over `n_devices` data-parallel devices. `where` prefixes the key
        names in the message (e.g. "mmd.loop.", "training.")."""
        micro = self.batch_size // self.grad_accum_steps
        if micro % n_devices == 0:
            return
        fits = [
            a
            for a in range(self.grad_accum_steps, 0, -1)
            if self.batch_size % a == 0 and (self.batch_size // a) % n_devices == 0
        ]
        hint = (
            f"e.g. {'--set ' if where else ''}{where}grad_accum_steps={fits[0]}"
            if fits
            else f"batch_size a multiple of {n_devices}"
        )
        raise ConfigError(
            f"{where}batch_size {self.batch_size} / {where}grad_accum_steps "
            f"{self.grad_accum_steps} gives micro-batches of {micro} examples, which do not split "
            f"over the {n_devices} devices: make each micro-batch a multiple of {n_devices} "
            f"({hint})"
        )


def make_schedule(cfg: OptimizerConfig, num_steps: int) -> optax.Schedule:
    """The learning-rate schedule of `cfg` for a run of `num_steps` optimizer updates."""
    decay = cfg.decay_steps if cfg.decay_steps is not None else max(num_steps, 1)
    lr, w, end = cfg.learning_rate, cfg.warmup_steps, cfg.end_learning_rate
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(decay - w, 1), alpha=end / lr if lr else 0.0)
    elif cfg.schedule == "linear":
        main = optax.linear_schedule(lr, end, max(decay - w, 1))
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    if w == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, w), main], [w])


def warmup_note(cfg: OptimizerConfig, num_updates: int, where: str) -> str | None:
    """A line for stderr when the warm-up does not end within the run's `num_updates` (e.g. a
    short run with a config's 100-update warm-up): the learning rate never reaches
    `learning_rate`. None otherwise. `where` names the optimizer's key."""
    w = cfg.warmup_steps
    if w == 0 or num_updates == 0 or w < num_updates:
        return None
    top = cfg.learning_rate * (num_updates - 1) / w  # the last update's rate
    head = f"note: {where}.warmup_steps ({w}) is not shorter than the run ({num_updates} updates): "
    if num_updates == 1:  # the warm-up starts at 0: the single update's rate
        return head + "its one update has learning rate 0 and leaves the weights as they are"
    return head + f"the learning rate rises only to {top:.3g} of its {cfg.learning_rate:g}"


def say_warmup(cfg: Any, updates: int, where: str, start: int, steps: int) -> None:
    """Print `warmup_note` on stderr when the run (`start` of `steps` done) has steps left."""
    note = warmup_note(cfg, updates, where)
    if note and start < steps:
        print(note, file=sys.stderr, flush=True)


def optimizer_resume_key(cfg: Mapping[str, Any] | None) -> dict[str, str] | None:
    """What of an optimizer config (its dict form) a resumed run must keep: whether gradients
    are clipped (`{"grad_clip_norm": "null" | "set"}`), because the clipping stage is part of the
    saved optimizer state's structure. Everything else (learning rate, schedule, warm-up, decay,
    end rate, b1, b2, eps, the clipping norm's value) may change when a run resumes, e.g. a lower
    learning rate after a `TrainingDivergedError`; the new schedule continues from the group's
    update count, and `metrics.jsonl`'s `lr/<group>` records the rate of every logged update,
    before and after the change."""
    if cfg is None:
        return None
    return {"grad_clip_norm": "null" if cfg.get("grad_clip_norm") is None else "set"}


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys where two config dicts differ, with both values (`"a.b: 1 -> 2"`), for a
    refusal to resume that says what changed."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            out += config_changes(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def make_optimizer(cfg: OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
    """Optional global-norm clipping, then Adam(b1, b2, eps) with `make_schedule(cfg)`."""
    parts = []
    if cfg.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    parts.append(optax.scale_by_learning_rate(make_schedule(cfg, num_steps)))
    return optax.chain(*parts)


@dataclasses.dataclass(frozen=True)
class UpdateRule:
    """One kind of optimizer step: `loss_fn(params, batch, rng) -> (scalar loss, metrics)`.

    `params` holds every trainable and frozen group by name; gradients are taken with respect to
    `groups` only. Metrics are scalars (averaged over accumulation micro-batches).
    """

    loss_fn: LossFn
    groups: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------


class ShuffledBatches:
    """Deterministic, resumable batches from a random-access source (`len` + `__getitem__`).

    Batch `step` is a pure function of `(seed, step)`: the examples are reshuffled each epoch with
    `numpy.random.default_rng([seed, epoch])`, incomplete last batches are dropped. Each example
    is a dict (or pytree) of numpy arrays; the batch stacks them on a new leading axis. With
    several processes each gets its share of every accumulation micro-batch: the global batch's
    indices, read as `grad_accum_steps` micro-batches `[A, B/A]`, give process p the columns
    `[p*B/(A P), (p+1)*B/(A P))` of each, micro-batch by micro-batch (`process_rows`), so that
    micro-batch i holds the same examples as with one process.
    `keys`: for dict examples, keep only these entries (e.g. drop an int64 `time` the loss does
    not need, so it never goes to the device).
    """

    def __init__(
        self,
        source: Any,
        batch_size: int,
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        keys: tuple[str, ...] | None = None,
        grad_accum_steps: int = 1,
    ):
        self.source = source
        self.keys = keys
        self.batch_size = batch_size
        self.seed = seed
        self.grad_accum_steps = grad_accum_steps
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        n = len(source)
        if n < batch_size:
            raise ValueError(f"data source has {n} examples, fewer than one batch ({batch_size})")
        if batch_size % (self.process_count * grad_accum_steps):
            raise ValueError(
                f"batch_size {batch_size} not divisible by {grad_accum_steps} micro-batches x "
                f"{self.process_count} processes"
            )
        self.batches_per_epoch = n // batch_size
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def indices(self, step: int) -> np.ndarray:
        """Global example indices of batch `step` (all processes)."""
        epoch, pos = divmod(step, self.batches_per_epoch)
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
            self._perm_cache = (epoch, perm)
        perm = self._perm_cache[1]
        return perm[pos * self.batch_size : (pos + 1) * self.batch_size]

    def __call__(self, step: int) -> PyTree:
        idx = process_rows(
            self.indices(step), self.grad_accum_steps, self.process_index, self.process_count
        )
        examples = [self.source[int(i)] for i in idx]
        if self.keys is not None:
            examples = [{k: ex[k] for k in self.keys} for ex in examples]
        return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *examples)


def process_rows(
    indices: np.ndarray, grad_accum_steps: int, process_index: int, process_count: int
) -> np.ndarray:
    """Process `process_index`'s share of a global batch (its example `indices`, `[B]`): the
    global batch is `grad_accum_steps` micro-batches of B/A consecutive rows, the process takes
    its `1/process_count` column slice of each, micro-batches in order (`[B / P]`).

    `Trainer.train_step` splits the local batch into A micro-batches and `sharding.shard_batch`
    joins the processes' slices along the micro-batch axis, so micro-batch i is the same set of
    examples with any number of processes (a contiguous `[p B/P, (p+1) B/P)` slice would give
    micro-batch i other examples once A > 1)."""
    per_micro = indices.reshape(grad_accum_steps, -1)
    local = per_micro.shape[1] // process_count
    return per_micro[:, process_index * local : (process_index + 1) * local].reshape(-1)


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


def _host(x: jax.Array) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def micro_keys(key: jax.Array, accum: int) -> jax.Array:
    """The keys of a step's `accum` micro-batches, `fold_in(key, i)` stacked (`[accum, ...]`)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(accum))


def accumulated_value_and_grad(
    grad_fn: Callable, params: PyTree, micro_batches: PyTree, keys: jax.Array
) -> Any:
    """The mean over micro-batches of `grad_fn(params, micro_batch, key) -> (value, grads)`
    (`value` any pytree: a loss, or `(loss, metrics)`), the gradient accumulation of one step.

    `micro_batches` holds the micro-batches along a leading axis (`[A, B / A, ...]`) and `keys`
    one key per micro-batch (`[A, ...]`). The micro-batches run one after the other in a
    `lax.scan`, so the step holds one micro-batch's activations whatever A. For a loss that is a
    mean over examples, the result is the whole batch's value and gradient (up to rounding) when
    every micro-batch sees the randomness it would see in the whole batch."""
    count = keys.shape[0]
    if count == 1:
        return grad_fn(params, *jax.tree.map(lambda x: x[0], (micro_batches, keys)))

    def body(carry, xs):
        return jax.tree.map(jnp.add, carry, grad_fn(params, *xs)), None

    # every micro-batch inside the loop, from a zero sum: with micro-batch 0 outside it, XLA
    # inlined the loop of one trip (A = 2) and held both micro-batches' activations at once
    # (benchmarks/image_memory.py: 128 GB at A = 2 against 130 GB at A = 1)
    shapes = jax.eval_shape(grad_fn, params, *jax.tree.map(lambda x: x[0], (micro_batches, keys)))
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zero, (micro_batches, keys))
    return jax.tree.map(lambda x: x / count, total)


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class Trainer:
    """Runs `UpdateRule`s over a data stream with sharding, accumulation, checkpoints, metrics.

    Args:
      rules: rule name -> `UpdateRule`.
      optimizers: trainable group name -> optax transformation (e.g. `make_optimizer`).
      cfg: `LoopConfig`.
      run_dir: directory for `checkpoints/` and `metrics.jsonl`.
      schedule: `step -> rule name` (default: the only rule).
      mesh: device mesh with axis `data` (default: all devices, `sharding.make_mesh()`).
      meta: JSON-able record stored in every checkpoint (provenance, config, ...).
      schedules: optional group -> learning-rate schedule, only for logging `lr/<group>`.
      desc: progress-bar label.
    """

    def __init__(
        self,
        rules: Mapping[str, UpdateRule],
        optimizers: Mapping[str, optax.GradientTransformation],
        cfg: LoopConfig,
        run_dir: str | pathlib.Path,
        schedule: Callable[[int], str] | None = None,
        mesh: Mesh | None = None,
        meta: dict | None = None,
        schedules: Mapping[str, optax.Schedule] | None = None,
        desc: str = "train",
    ):
        cfg.validate()
        self.rules = dict(rules)
        self.optimizers = dict(optimizers)
        for name, rule in self.rules.items():
            missing = [g for g in rule.groups if g not in self.optimizers]
            if missing:
                raise ValueError(f"rule {name!r} updates {missing} which have no optimizer")
        if schedule is None:
            if len(self.rules) != 1:
                raise ValueError("several rules need a schedule(step) -> rule name")
            only = next(iter(self.rules))
            schedule = lambda step: only  # noqa: E731
        self.schedule = schedule
        self.cfg = cfg
        self.run_dir = pathlib.Path(run_dir)
        self.mesh = mesh if mesh is not None else shd.make_mesh()
        self.meta = dict(meta or {})
        self.lr_schedules = dict(schedules or {})
        self.desc = desc
        # notes for the start of a run with steps left (a warm-up longer than the run, ...)
        self.start_notes: list[str] = []
        cfg.check_devices(self.mesh.size)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", cfg.keep_checkpoints)
        self._steps: dict[str, Callable] = {}
        self.last_metrics: dict[str, float] = {}

    # ---- state ------------------------------------------------------------------------------

    def init_state(self, trainable: Mapping[str, PyTree], seed: int | None = None) -> dict:
        """A fresh state `{step, params, opt_state, counts, rng}` replicated on the mesh."""
        missing = [g for g in self.optimizers if g not in trainable]
        if missing:
            raise ValueError(f"trainable params missing for groups {missing}")
        # Fresh host copies: groups initialized from the same arrays (student and aux both start
        # from the teacher) must not share device buffers, because the step donates the state.
        params = {g: jax.tree.map(np.array, trainable[g]) for g in self.optimizers}
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": {g: self.optimizers[g].init(params[g]) for g in self.optimizers},
            "counts": {g: jnp.zeros((), jnp.int32) for g in self.optimizers},
            "rng": jax.random.key_data(jax.random.PRNGKey(self.cfg.seed if seed is None else seed)),
        }
        return shd.replicate(state, self.mesh)

    def restore_or_init(self, trainable: Mapping[str, PyTree], seed: int | None = None) -> dict:
        """Resume from the latest checkpoint in `run_dir` if there is one, else `init_state`.

        `trainable` gives the structure (and the starting values of a fresh run)."""
        state = self.init_state(trainable, seed)
        if self.ckpt.latest_step() is None:
            self._data_state = None
            return state
        state, meta = self.ckpt.restore(state)
        self._data_state = meta.get("data_state")
        return state

    @staticmethod
    def step_of(state: dict) -> int:
        return int(_host(state["step"]))

    @staticmethod
    def params(state: dict) -> dict[str, PyTree]:
        """The trainable params of `state` (group -> pytree)."""
        return state["params"]

    # ---- the jitted step ----------------------------------------------------------------------

    def _build_step(self, rule_name: str) -> Callable:
        rule = self.rules[rule_name]
        groups = rule.groups
        optimizers = self.optimizers
        accum = self.cfg.grad_accum_steps

        def step_fn(state, frozen, batch):
            key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
            trainable = {g: state["params"][g] for g in groups}
            others = {g: p for g, p in state["params"].items() if g not in groups}

            def loss_of(tr, mb, k):
                params = {**frozen, **{g: jax.lax.stop_gradient(p) for g, p in others.items()}}
                params.update(tr)
                return rule.loss_fn(params, mb, k)

            (loss0, m0), g0 = accumulated_value_and_grad(
                jax.value_and_grad(loss_of, has_aux=True),
                trainable,
                batch,
                micro_keys(key, accum),
            )
            finite = jnp.isfinite(loss0) & _all_finite(g0)
            new_params = dict(state["params"])
            new_opt = dict(state["opt_state"])
            new_counts = dict(state["counts"])
            metrics = {"loss": loss0, **m0}
            for g in groups:
                updates, opt_g = optimizers[g].update(g0[g], state["opt_state"][g], trainable[g])
                p_g = optax.apply_updates(trainable[g], updates)
                new_params[g] = jax.tree.map(
                    lambda a, b: jnp.where(finite, a, b), p_g, trainable[g]
                )
                new_opt[g] = jax.tree.map(
                    lambda a, b: jnp.where(finite, a, b), opt_g, state["opt_state"][g]
                )
                new_counts[g] = state["counts"][g] + finite.astype(jnp.int32)
                metrics[f"grad_norm/{g}"] = optax.global_norm(g0[g])
                metrics[f"update_norm/{g}"] = optax.global_norm(updates)
            metrics["finite"] = finite
            new_state = {
                "step": state["step"] + 1,
                "params": new_params,
                "opt_state": new_opt,
                "counts": new_counts,
                "rng": state["rng"],
            }
            return new_state, metrics

        rep = shd.replicated_sharding(self.mesh)
        bat = shd.batch_sharding(self.mesh, batch_axis=1)
        return jax.jit(
            step_fn, in_shardings=(rep, rep, bat), out_shardings=(rep, rep), donate_argnums=0
        )

    def train_step(self, state: dict, frozen: dict, global_batch: PyTree, rule: str):
        """One optimizer step of rule `rule` on a host-local batch (leading axis = local batch).

        The local batch is split into `grad_accum_steps` micro-batches of consecutive rows; with
        several processes, micro-batch i of the global batch is the processes' i-th micro-batches
        side by side, so each process must pass its share of every micro-batch, in order
        (`process_rows`, as `ShuffledBatches` does). Returns `(new_state, metrics as device
        scalars)`."""
        return self._step(rule)(state, frozen, self._micro_batches(global_batch))

    def lower_step(self, state: dict, frozen: dict, global_batch: PyTree, rule: str) -> Any:
        """`train_step`'s jitted step lowered for these arguments, not run: its
        `.compile().memory_analysis()` is the step's memory (benchmarks/distill.py --memory)."""
        return self._step(rule).lower(state, frozen, self._micro_batches(global_batch))

    def _step(self, rule: str) -> Callable:
        if rule not in self._steps:
            self._steps[rule] = self._build_step(rule)
        return self._steps[rule]

    def _micro_batches(self, global_batch: PyTree) -> PyTree:
        accum = self.cfg.grad_accum_steps

        def split(x):
            x = np.asarray(x)
            if x.shape[0] % accum:
                raise ValueError(f"batch of {x.shape[0]} not divisible by {accum} micro-batches")
            return x.reshape(accum, x.shape[0] // accum, *x.shape[1:])

        return shd.shard_batch(jax.tree.map(split, global_batch), self.mesh, batch_axis=1)

    # ---- the loop ---------------------------------------------------------------------------

    def save(self, state: dict, data_state: Any = None) -> pathlib.Path:
        """Checkpoint `state` now (step = number of completed steps)."""
        step = self.step_of(state)
        meta = dict(self.meta, data_state=data_state, saved_unix_time=time.time())
        return self.ckpt.save(step, state, meta)

    def fit(
        self,
        state: dict,
        frozen: Mapping[str, PyTree],
        batches: Any,
        stop_after: int | None = None,
        on_log: Callable[[int, dict], None] | None = None,
    ) -> dict:
        """Train from `state`'s step to `cfg.num_steps`; return the final state.

        Args:
          frozen: non-trainable params (replicated once here).
          batches: `callable(step) -> batch`, or an iterator with `get_state`/`set_state`.
          stop_after: stop (without saving) after this many steps of this call: simulates a
            crash in tests; the next `restore_or_init` + `fit` continues from the last checkpoint.
          on_log: called with `(step, metrics)` on every metrics record.
        """
        from tqdm.auto import tqdm

        frozen = shd.replicate(dict(frozen), self.mesh)
        start = self.step_of(state)
        end = self.cfg.num_steps
        if stop_after is not None:
            end = min(end, start + stop_after)
        is_iter = not callable(batches)
        if is_iter and getattr(self, "_data_state", None) is not None:
            batches.set_state(self._data_state)
        lead = jax.process_index() == 0
        writer = MetricsWriter(self.run_dir / "metrics.jsonl", resume_step=start, enabled=lead)
        last_good = self.ckpt.latest_step()
        bar = tqdm(
            total=self.cfg.num_steps,
            initial=start,
            desc=self.desc,
            disable=not (self.cfg.progress and lead),
            dynamic_ncols=True,
        )
        t_last, n_last = time.perf_counter(), start
        stack = contextlib.ExitStack()
        try:
            # one process: SIGTERM / Ctrl-C stop after the step with a checkpoint (`stopping`)
            stack.enter_context(stopping.graceful_stop(enabled=jax.process_count() == 1))
            for step in range(start, end):
                rule = self.schedule(step)
                batch = next(batches) if is_iter else batches(step)
                state, metrics = self.train_step(state, frozen, batch, rule)
                if not bool(_host(metrics["finite"])):
                    if last_good is not None:
                        where = (
                            f"last good checkpoint: {self.ckpt.path(last_good)} (step {last_good})"
                        )
                        again = f"it resumes from step {last_good}"
                    else:
                        where = "no checkpoint was written yet"
                        again = "it starts again from step 0"
                    loss = float(_host(metrics["loss"]))
                    raise TrainingDivergedError(
                        f"{self.desc}: non-finite loss or gradient at step {step} (rule {rule!r}, "
                        f"loss={loss}); the update was not applied; {where}. Lower the learning "
                        "rate (the optimizer settings may change when a run resumes) or check "
                        f"the data, then run the same command again: {again}."
                    )
                done = step + 1
                bar.update(1)
                if done % self.cfg.log_every == 0 or done == end:
                    now = time.perf_counter()
                    rec = {k: float(_host(v)) for k, v in metrics.items() if k != "finite"}
                    rec["rule"] = rule
                    rec["steps_per_sec"] = (done - n_last) / max(now - t_last, 1e-9)
                    for g, sched in self.lr_schedules.items():
                        # The rate of the group's latest update: its n-th update ran at
                        # sched(n - 1) (optax counts from 0); counts[g] is n after it.
                        n = int(_host(state["counts"][g]))
                        rec[f"lr/{g}"] = float(sched(max(n - 1, 0)))
                    t_last, n_last = now, done
                    self.last_metrics = rec
                    writer.write(done, rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4g}", refresh=False)
                    if on_log is not None:
                        on_log(done, rec)
                test_stop = stop_after is not None and done == end and end < self.cfg.num_steps
                if not test_stop and (
                    done % self.cfg.checkpoint_every == 0 or done == self.cfg.num_steps
                ):
                    self.save(state, batches.get_state() if is_iter else None)
                    last_good = done
                signum = stopping.requested()
                if signum is not None:  # also after the last step: what follows waits
                    if last_good != done:
                        self.save(state, batches.get_state() if is_iter else None)
                    raise stopping.stopped(
                        signum,
                        self.desc,
                        f"after step {done} of {self.cfg.num_steps}; checkpoint "
                        f"{self.ckpt.path(done)} saved",
                    )
        finally:
            stack.close()
            bar.close()
        return state
