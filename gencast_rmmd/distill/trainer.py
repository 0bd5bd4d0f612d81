"""Run one distillation phase (MMD or RMMD) with the shared training loop.

`run_phase` turns an `ObjectiveConfig` into update rules for `gencast_rmmd.training.Trainer`:

- aux online + "alternating": rule "aux" (even steps, updates the auxiliary only) and rule
  "student" (odd steps, updates the student only), as in MMD Algorithm 2;
- aux online + "simultaneous": rule "joint" (both groups from one forward pass every step; the two
  losses share no gradient path because of the stop-gradients);
- aux "frozen": rule "student" every step; the auxiliary is passed as a frozen group.

Param groups (rmmd.md §2.8): "student" and "aux" (trainable, both initialized from the teacher in
phase 1), "teacher" (frozen), "student_frozen" and "aux_frozen" (frozen phase-1 results, phase 2).
Only trainable groups have optimizer state and are checkpointed.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax

from gencast_rmmd.distill.objectives import ObjectiveConfig, RewardFn, make_objective
from gencast_rmmd.distill.student_sampler import DenoiseFn, NoiseFn, StudentSamplerConfig
from gencast_rmmd.training import (
    LoopConfig,
    OptimizerConfig,
    Trainer,
    UpdateRule,
    make_optimizer,
    make_schedule,
)
from gencast_rmmd.training.loop import warmup_note


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
    """One phase: its objective, optimizers and loop.

    aux_optimizer: the auxiliary's optimizer (U2: its LR is not recovered); None = `optimizer`.

    The optimizers' `warmup_steps` and `decay_steps` count the updates of their own group, not
    loop steps. With `update_schedule: alternating` each group is updated every other step, so
    `decay_steps: null` means (loop.num_steps + 1) // 2 updates (the auxiliary makes that many,
    on even steps; the student loop.num_steps // 2, on odd steps), and `warmup_steps: 20` warms
    each group up over its first 20 updates, 40 loop steps. With `simultaneous` (or a frozen
    auxiliary) a group's updates are the loop's steps.
    """

    objective: ObjectiveConfig
    loop: LoopConfig
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-7)
    aux_optimizer: OptimizerConfig | None = None


def phase_rules(
    objective: Callable, cfg: ObjectiveConfig
) -> tuple[dict[str, UpdateRule], Callable[[int], str]]:
    """Update rules and the step -> rule schedule for an objective (see module doc)."""

    def rule(student: bool, aux: bool):
        def loss_fn(params, batch, rng):
            return objective(params, batch, rng, student=student, aux=aux)

        return loss_fn

    if cfg.aux_update == "frozen":
        return {"student": UpdateRule(rule(True, False), ("student",))}, lambda step: "student"
    if cfg.update_schedule == "simultaneous":
        return {"joint": UpdateRule(rule(True, True), ("student", "aux"))}, lambda step: "joint"
    rules = {
        "aux": UpdateRule(rule(False, True), ("aux",)),
        "student": UpdateRule(rule(True, False), ("student",)),
    }
    return rules, lambda step: "aux" if step % 2 == 0 else "student"


def build_phase_trainer(
    cfg: PhaseConfig,
    sampler_cfg: StudentSamplerConfig,
    run_dir: str | pathlib.Path,
    *,
    denoise_fn: DenoiseFn,
    noise_fn: NoiseFn,
    target_fn: Callable[[Any], jax.Array],
    cond_fn: Callable[[Any], Any],
    reward_fn: RewardFn | None = None,
    weights: jax.Array | None = None,
    teacher_denoise_fn: DenoiseFn | None = None,
    meta: dict | None = None,
    mesh=None,
    desc: str = "distill",
    config_key: str | None = None,
) -> Trainer:
    """The `Trainer` of one phase (rules, optimizers, schedules); see `run_phase`.
    `config_key` (e.g. "mmd"): the phase's key in the run's config; with it, a warm-up that does
    not end within the run is noted (`warmup_note`) in `trainer.start_notes`, which `run_phase`
    prints on stderr when the phase has steps left."""
    objective = make_objective(
        denoise_fn,
        noise_fn,
        sampler_cfg,
        cfg.objective,
        target_fn=target_fn,
        cond_fn=cond_fn,
        reward_fn=reward_fn,
        weights=weights,
        teacher_denoise_fn=teacher_denoise_fn,
    )
    rules, schedule = phase_rules(objective, cfg.objective)
    n = cfg.loop.num_steps
    opt_cfgs = {"student": cfg.optimizer, "aux": cfg.aux_optimizer or cfg.optimizer}
    groups = cfg.objective.trainable_groups()
    # In alternating mode each group is updated every other step and optax counts a group's own
    # updates: its schedule spans (n + 1) // 2 of them (PhaseConfig's docstring).
    per_group = (n + 1) // 2 if len(rules) == 2 else n
    optimizers = {g: make_optimizer(opt_cfgs[g], per_group) for g in groups}
    notes = []
    if config_key:
        keys = {
            "student": "optimizer",
            "aux": "aux_optimizer" if cfg.aux_optimizer else "optimizer",
        }
        for key in sorted({keys[g] for g in groups}):
            note = warmup_note(getattr(cfg, key), per_group, f"{config_key}.{key}")
            if note:
                notes.append(note)
    schedules = {g: make_schedule(opt_cfgs[g], per_group) for g in groups}
    trainer = Trainer(
        rules,
        optimizers,
        cfg.loop,
        run_dir,
        schedule=schedule,
        mesh=mesh,
        meta=meta,
        schedules=schedules,
        desc=desc,
    )
    trainer.start_notes = notes  # said by `run_phase` when the phase has steps left
    return trainer


def run_phase(
    cfg: PhaseConfig,
    sampler_cfg: StudentSamplerConfig,
    params: dict[str, Any],
    batches: Any,
    run_dir: str | pathlib.Path,
    *,
    stop_after: int | None = None,
    **kwargs,
) -> tuple[dict[str, Any], Trainer]:
    """Train one phase (resuming from `run_dir/checkpoints` if present); return all param groups.

    Args:
      cfg: the phase.
      sampler_cfg: the student sampler.
      params: every group the objective needs (`cfg.objective.required_groups()`); the trainable
        ones give the starting point of a fresh run.
      batches: `batches(step) -> batch` (or a resumable iterator), see `training.Trainer.fit`.
      run_dir: the phase's run directory (checkpoints, metrics.jsonl).
      stop_after: stop after this many steps without saving (crash simulation in tests).
      kwargs: `build_phase_trainer` keywords (denoise_fn, noise_fn, target_fn, cond_fn, ...).
    Returns `(params, trainer)`: `params` with the trainable groups replaced by their trained
    values, and the phase's `Trainer` (checkpoint manager, `last_metrics`).
    """
    missing = [g for g in cfg.objective.required_groups() if g not in params]
    if missing:
        raise ValueError(f"run_phase: param groups {missing} are required by the objective")
    trainer = build_phase_trainer(cfg, sampler_cfg, run_dir, **kwargs)
    groups = cfg.objective.trainable_groups()
    trainable = {g: params[g] for g in groups}
    frozen = {g: p for g, p in params.items() if g not in groups}
    state = trainer.restore_or_init(trainable)
    if trainer.step_of(state) < cfg.loop.num_steps:  # not for a finished phase run again
        for note in trainer.start_notes:
            print(note, file=sys.stderr, flush=True)
    state = trainer.fit(state, frozen, batches, stop_after=stop_after)
    out = dict(params)
    out.update(trainer.params(state))
    return out, trainer
