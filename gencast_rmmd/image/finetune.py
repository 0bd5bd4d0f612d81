"""Phase 2 on images: RMMD and the baselines, one reward and one lambda per run.

- `rmmd`: the distill area's objective (`gencast_rmmd.distill.objectives`) with on-policy starts
  (discrete = the student's own chain stopped at a random grid level, or continuous = a re-noised
  finished sample), `reward_weight = lambda`, `l2_weight = lambda * reg_ratio` (lambda/2 on
  ImageNet), m_ref = teacher (or the frozen phase-1 aux), the auxiliary keeps training online
  (rmmd.md §2.2-2.4, U1). Student and aux start from the phase-1 MMD networks.
- `dipp`: DI++ = the same objective with a one-step student (K = 1, start = pure noise), started
  from a phase-1 MMD run with K = 1.
- `draft`, `refl`: `gencast_rmmd.image.baselines`, started from the same phase-1 student.
- `hypernoise`: `gencast_rmmd.image.hypernoise`, the same phase-1 student frozen, every noise
  its sampler draws (initial and posterior; the paper: the initial noise) modulated by a trained
  noise network.

Each run evaluates the student every `eval_every` steps (and at step 0) and returns rows
`{method, reward, lambda, step, distance, reward_value, ...}` for the Pareto front.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from gencast_rmmd import stopping
from gencast_rmmd.distill import objectives as obj
from gencast_rmmd.distill.student_sampler import StudentSamplerConfig
from gencast_rmmd.errors import TrainingDivergedError
from gencast_rmmd.image import baselines, hypernoise
from gencast_rmmd.image.config import FinetuneConfig, MMDConfig
from gencast_rmmd.image.data import ImageDataset, batch_iterator
from gencast_rmmd.image.evaluation import Evaluator, generate
from gencast_rmmd.image.model import ImageModel
from gencast_rmmd.image.rewards import Reward
from gencast_rmmd.image.training import (
    DataParallel,
    StageCheckpoints,
    image_objective,
    make_optimizer,
    micro_batches,
    next_batch,
)
from gencast_rmmd.model.sh_noise import gaussian_noise
from gencast_rmmd.training.loop import accumulated_value_and_grad


@dataclasses.dataclass(frozen=True)
class StartPoint:
    """Phase-1 networks a fine-tuning run starts from (and anchors to)."""

    student: Any
    aux: Any
    sampler: StudentSamplerConfig
    # The phase-1 objective's lowest level of s (`mmd.s_floor`, below the sampler's last level),
    # which phase 2 keeps.
    s_floor: float = MMDConfig.s_floor


def rmmd_objective_config(cfg: FinetuneConfig, lam: float, s_floor: float) -> obj.ObjectiveConfig:
    """Phase-2 `ObjectiveConfig`: on-policy start, reward weight lambda, L2 lambda * reg_ratio;
    `s_floor` is the phase-1 student's (`StartPoint.s_floor`)."""
    return obj.ObjectiveConfig(
        start="on_policy_discrete" if cfg.on_policy == "discrete" else "on_policy_continuous",
        members=1,
        mmd_weight=1.0,
        reward_weight=float(lam),
        l2_weight=float(lam) * cfg.reg_ratio,
        reference=cfg.m_ref,
        aux_update="online",
        update_schedule="simultaneous",
        time_sampling="grid" if cfg.on_policy == "discrete" else "continuous",
        mmd_weighting="uniform",
        aux_weighting="edm",
        aux_reg_weight=0.0,
        s_floor=s_floor,
    )


def switched_reward(rewards: Sequence[Reward], index: jax.Array) -> Reward:
    """The reward `rewards[index]` for a traced `index` (`lax.switch`: only that branch runs), so
    one compiled step serves every reward of a sweep."""
    fns = list(rewards)
    if len(fns) == 1:
        return fns[0]
    return lambda images, labels: jax.lax.switch(index, fns, images, labels)


# XLA options of the compiled fine-tuning steps on CPU. Backend optimisation level 1 instead of
# XLA's default (3) compiles the RMMD step in 10.7-11.6 s instead of 16.3-17.5 s on 2 cores, at a
# step time within the noise (73-90 ms against 75-87 ms; level 0 doubles it), and each method of
# a sweep compiles one step (benchmarks/image.py measures both levels side by side).
STEP_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def step_compiler_options() -> dict:
    """`STEP_COMPILER_OPTIONS` on CPU; XLA's defaults on accelerators (not measured there)."""
    return dict(STEP_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


def _rmmd_step(
    model,
    start: StartPoint,
    cfg: FinetuneConfig,
    rewards: Sequence[Reward],
    opt,
    compiler_options: dict | None = None,
):
    """The jitted phase-2 step; lambda and the reward index are traced (one compilation for the
    whole sweep of a method, not one per reward and lambda). `compiler_options` default:
    `step_compiler_options()`."""
    if compiler_options is None:
        compiler_options = step_compiler_options()

    @functools.partial(jax.jit, compiler_options=compiler_options or None)
    def step(trainable, frozen, opt_state, batch, key, lam, reward_index):
        # lambda = 1 only switches the reward and L2 terms on; `lam` sets them.
        objective = image_objective(
            model,
            start.sampler,
            rmmd_objective_config(cfg, 1.0, start.s_floor),
            switched_reward(rewards, reward_index),
        )

        def loss_fn(tr, mb, k):
            return objective(
                {**frozen, **tr},
                mb,
                k,
                student=True,
                aux=True,
                reward_weight=lam,
                l2_weight=lam * cfg.reg_ratio,
            )

        micro, keys = micro_batches(batch, key)
        (loss, metrics), g = accumulated_value_and_grad(
            jax.value_and_grad(loss_fn, has_aux=True), trainable, micro, keys
        )
        upd, opt_state = opt.update(g, opt_state, trainable)
        return optax.apply_updates(trainable, upd), opt_state, loss, metrics

    return step


def _baseline_step(
    model: ImageModel,
    method: str,
    start: StartPoint,
    cfg: FinetuneConfig,
    rewards: Sequence[Reward],
    opt,
    noise_apply: hypernoise.NoiseApply | None = None,
    compiler_options: dict | None = None,
):
    if compiler_options is None:
        compiler_options = step_compiler_options()
    denoise = model.denoise_fn
    sampler = start.sampler

    def loss_fn(tr, frozen, batch, key, lam, reward_index):
        reward = switched_reward(rewards, reward_index)
        if method == "hypernoise":  # the student is frozen and samples as at inference
            return hypernoise.hypernoise_loss(
                model.teacher_denoise_fn, frozen["student"], noise_apply, tr["noise"], key,
                batch["labels"], batch["images"].shape, sampler, reward, lam, cfg.hypernoise_kl,
            )  # fmt: skip
        cond = (
            batch["labels"] if batch.get("dropout") is None else (batch["labels"], batch["dropout"])
        )
        if method == "draft":
            return baselines.draft_loss(
                denoise, tr["student"], frozen["student_frozen"], key, cond,
                batch["images"].shape, gaussian_noise, sampler, reward, lam, cfg.draft_k, cfg.draft_l2,
            )  # fmt: skip
        return baselines.refl_loss(
            denoise, tr["student"], key, cond, batch["images"], gaussian_noise, sampler, reward,
            lam, cfg.refl_min_stop if cfg.refl_min_stop >= 0 else sampler.num_steps // 2,
            cfg.refl_data_weight,
        )  # fmt: skip

    @functools.partial(jax.jit, compiler_options=compiler_options or None)
    def step(trainable, frozen, opt_state, batch, key, lam, reward_index):
        def grad_fn(tr, mb, k):
            return jax.value_and_grad(loss_fn, has_aux=True)(tr, frozen, mb, k, lam, reward_index)

        micro, keys = micro_batches(batch, key)
        (loss, metrics), g = accumulated_value_and_grad(grad_fn, trainable, micro, keys)
        upd, opt_state = opt.update(g, opt_state, trainable)
        return optax.apply_updates(trainable, upd), opt_state, loss, metrics

    return step


_CACHE_LOCK = threading.Lock()


def start_metrics(
    model: ImageModel,
    start: StartPoint,
    evaluator: Evaluator,
    eval_seed: int,
    eval_cache: dict | None = None,
) -> dict:
    """Evaluator metrics of the start point's student (the step 0 of every run from `start` but
    HyperNoise's), computed once per start point and seed when `eval_cache` (a dict) is given;
    concurrent callers wait for the one computation."""
    if eval_cache is None:
        return evaluator.evaluate(
            generate(model, start.student, start.sampler, evaluator.labels, eval_seed)
        )
    key = ("start", id(start), eval_seed)
    with _CACHE_LOCK:
        if key not in eval_cache:
            eval_cache[key] = start_metrics(model, start, evaluator, eval_seed)
        return eval_cache[key]


def finetune_run(
    method: str,
    reward_name: str,
    lam: float,
    *,
    model: ImageModel,
    teacher_params: Any,
    start: StartPoint,
    reward: Reward,
    data: ImageDataset,
    cfg: FinetuneConfig,
    evaluator: Evaluator,
    eval_every: int,
    eval_seed: int = 1234,
    steps: int | None = None,
    step_cache: dict | None = None,
    progress: bool = True,
    on_eval: Callable[[dict], None] | None = None,
    sweep_rewards: Mapping[str, Reward] | None = None,
    eval_cache: dict | None = None,
    checkpoints: StageCheckpoints | None = None,
) -> list[dict]:
    """Fine-tune with `method` in {rmmd, dipp, draft, refl, hypernoise} on one reward and lambda.

    Returns one row per evaluation (step 0 included): method, reward, lambda, step, distance
    (Frechet classifier distance), reward_value (mean reward of the evaluated samples), accuracy.
    `step_cache` (a dict) reuses compiled steps: lambda is traced in every method, and with
    `sweep_rewards` (every reward of the sweep by name, `reward_name` among them; `reward` is then
    `sweep_rewards[reward_name]`) so is the choice of reward, so a method compiles once per sweep.
    `eval_cache` (a dict) reuses the step-0 evaluation, where every method but HyperNoise still
    has the start point's student: one evaluation per start point and seed for the whole sweep.
    With `checkpoints` the run resumes from, and saves to, its checkpoints (state and the rows
    of the evaluations so far).
    """
    ckpts = checkpoints or StageCheckpoints(None, {})
    steps = cfg.steps if steps is None else steps
    opt = make_optimizer(cfg.optim, steps)
    lam_arr = jnp.float32(lam)
    if sweep_rewards is None:
        sweep_rewards = {reward_name: reward}
    if reward_name not in sweep_rewards:
        raise ValueError(f"reward {reward_name!r} is not in sweep_rewards {list(sweep_rewards)}")
    names = tuple(sweep_rewards)
    rewards = tuple(sweep_rewards[n] for n in names)
    index_arr = jnp.int32(names.index(reward_name))
    # The optimizer schedule depends on steps; the compiled step on the reward set.
    key = (method, names, tuple(id(r) for r in rewards), id(start), steps)
    if method in ("rmmd", "dipp"):
        build = lambda: _rmmd_step(model, start, cfg, rewards, opt)  # noqa: E731
        trainable = {"student": start.student, "aux": start.aux}
        frozen = {
            "teacher": teacher_params,
            "student_frozen": start.student,
            "aux_frozen": start.aux,
        }
    elif method in ("draft", "refl"):
        build = lambda: _baseline_step(model, method, start, cfg, rewards, opt)  # noqa: E731
        trainable = {"student": start.student}
        frozen = {"student_frozen": start.student}
    elif method == "hypernoise":
        noise_apply, phi = hypernoise.init_noise_net(
            cfg.hypernoise_width, model.num_classes, model.image_shape, cfg.seed
        )
        build = lambda: _baseline_step(  # noqa: E731
            model, method, start, cfg, rewards, opt, noise_apply
        )
        trainable = {"noise": phi}
        frozen = {"student": start.student}
    else:
        raise ValueError(f"unknown method {method!r}")
    if step_cache is None:
        base = build()
    else:
        with _CACHE_LOCK:  # runs of a sweep may share the caches from several threads
            if key not in step_cache:
                step_cache[key] = build()
            base = step_cache[key]
    opt_state = opt.init(trainable)

    def step(tr, fr, os_, batch, k):
        return base(tr, fr, os_, batch, k, lam_arr, index_arr)

    rows: list[dict] = []

    def metrics_at(i: int) -> dict:
        if method == "hypernoise":
            x = generate(
                model, frozen["student"], start.sampler, evaluator.labels, eval_seed,
                noise_net=(noise_apply, trainable["noise"]),
            )  # fmt: skip
            return evaluator.evaluate(x)
        if i == 0:
            return start_metrics(model, start, evaluator, eval_seed, eval_cache)
        x = generate(model, trainable["student"], start.sampler, evaluator.labels, eval_seed)
        return evaluator.evaluate(x)

    def evaluate(i: int) -> None:
        m = metrics_at(i)
        row = {
            "method": method,
            "reward": reward_name,
            "lambda": float(lam),
            "step": int(i),
            "distance": m[evaluator.distance_name],
            "reward_value": m[f"reward_{reward_name}"],
            "accuracy": m["accuracy"],
        }
        rows.append(row)
        if on_eval is not None:
            on_eval(row)

    rng = jax.random.PRNGKey(cfg.seed)
    first, (trainable, opt_state, rng) = ckpts.restore((trainable, opt_state, rng))
    dp = DataParallel(cfg.batch_size, cfg.grad_accum_steps, "finetune.")
    trainable, frozen, opt_state, rng = dp.put((trainable, frozen, opt_state, rng))
    if first:  # resumed: the evaluations made before the checkpoint come back with it
        rows.extend(ckpts.record or [])
    else:
        first = 1
        evaluate(0)
    it = batch_iterator(data.train_images, data.train_labels, cfg.batch_size, cfg.seed, first - 1)
    bar = tqdm(
        range(first, steps + 1), desc=f"{method}/{reward_name}/lam={lam:g}",
        disable=not progress, initial=first - 1, total=steps,
    )  # fmt: skip
    with stopping.graceful_stop(enabled=ckpts.directory is not None):
        for i in bar:
            rng, k, batch = next_batch(it, rng, cfg.dropout, dp)
            trainable, opt_state, loss, metrics = step(trainable, frozen, opt_state, batch, k)
            if i % eval_every == 0 or i == steps:
                lv = float(loss)
                if not np.isfinite(lv):
                    raise TrainingDivergedError(
                        f"{method}/{reward_name}/lambda={lam}: loss became {lv} at step {i}"
                    )
                evaluate(i)
            ckpts.maybe_save(i + 1, (trainable, opt_state, rng), last=i == steps, record=rows)
    return rows
