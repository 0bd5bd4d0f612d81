"""Moment matching (phase 1) and RMMD (phase 2) losses as JAX surrogates.

Both phases use one loss builder; a phase is a `ObjectiveConfig`. Names follow rmmd.md §0/§2:
student G (params group "student"), auxiliary denoiser A ("aux"), teacher D_T ("teacher"), frozen
phase-1 student G0 ("student_frozen") and frozen phase-1 auxiliary ("aux_frozen"). Every network
is a `denoise_fn(params, x_noisy, sigma, cond) -> x0_hat` in VE/EDM form.

Per example (conditioning c, truth x0 in normalized residual space):

1. start state `x_t` at level `S_t` (`start`):
   - "data" (MMD phase 1, RMMD offline ablation): `x_t = x0 + S_t * n`;
   - "on_policy_continuous": `x_t = sg(x~0) + S_t * n` with `x~0` a full K-step student sample;
   - "on_policy_discrete": the student's own no-gradient chain stopped at a random grid level
     `t_stop` (the state it feeds the network there), `S_t = S_{t_stop}`.
   Times live on a continuous index `u in [0, K)`: integer u is grid level u of the student
   sampler, fractional u interpolates log S between adjacent levels, and level K is
   `s_floor` (the lowest level of s below the student's last level). "grid" time sampling draws
   integer u (training times = inference times); "continuous" draws u ~ U[0, K).
2. `x0_hat = G(x_t, S_t)` (the one call that carries gradient), M members per conditioning.
3. `u_s = u + U(0, 1]` (s within one student step below t), `x_s = P_eta(x_t, sg x0_hat)` (the
   DDIM-eta posterior step of the sampler, built from sg(x0_hat): no gradient through x_s).
4. student loss (gradient `J^T [w(s) (m_stu - m_ref) - lam grad R] + lam_reg ...`):
       L_G = mmd_weight * mean_b w(S_s) <x0_hat, sg(A(x_s) - m_ref(x_s))>_W
             - reward_weight * mean_b R(x0_hat^(1..M))
             + l2_weight * mean_b ||x0_hat - sg G0(x_t, S_t)||^2_W
   with m_ref = teacher (default) or frozen phase-1 aux (U1), and `<a, b>_W = mean(W * a * b)`
   over the feature axes (W = per-channel weights, e.g. latitude x level x variable, mean 1).
5. aux loss: `mean_b v(S_s) (||A(x_s) - sg x0_hat||^2_W + aux_reg_weight ||A(x_s) - sg D_T(x_s)||^2_W)`.

The inner products are means (not sums) over feature axes, so lambda is relative to a
per-point CRPS; with sums the same update needs lambda scaled by the dimension (U5/U12).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from gencast_rmmd.distill import student_sampler as ss
from gencast_rmmd.distill.crps import crps_reward, fair_crps, weighted_mean

Weighting = Literal["uniform", "edm", "inv_sigma2"]
RewardFn = Callable[[jax.Array, Any, Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Loss settings of one phase. Defaults = phase 1 (MMD, alternating, off-policy).

    start: where x_t comes from ("data" | "on_policy_continuous" | "on_policy_discrete").
    members: M predictions per conditioning (RMMD GenCast: 2 for the fair CRPS).
    mmd_weight: weight of the moment-matching surrogate.
    reward_weight: lambda (RMMD GenCast 0.3; 0 in phase 1).
    l2_weight: lambda_reg of the anchor to the frozen phase-1 student (U8: ImageNet uses
      lambda/2, GenCast's value is not recovered; phase-2 default 0.15).
    reference: m_ref, "teacher" or "frozen_aux" (frozen phase-1 auxiliary) (U1).
    aux_update: "online" (the auxiliary keeps regressing the current student) or "frozen" (U1).
    update_schedule: "alternating" (aux on even steps, student on odd, MMD Algorithm 2) or
      "simultaneous" (both from one shared forward pass every step) (U2).
    time_sampling: "continuous" or "grid" (see module doc) for the data / continuous starts (U5/U9).
    share_time_across_members: the M members of one conditioning use the same t.
    mmd_weighting: w(s) for the surrogate: "uniform" (1), "edm" ((S^2+1)/S^2) or "inv_sigma2"
      (1/S^2, the score-difference form of Diff-Instruct) (U5).
    aux_weighting: v(s) for the auxiliary regression (default "edm", the teacher's own loss
      weighting, so the auxiliary stays the kind of denoiser it was initialized as).
    aux_reg_weight: weight of the auxiliary's regularizer toward the teacher's prediction
      (rmmd.md §1.2 step 4, RMMD App. A.1 via the paper summary; U4). 0 disables it.
    s_floor: the lowest noise level s can reach below the student's last grid level; must be
      below that level (`check_s_floor`).
    weight_regularizers: apply the per-channel weights W to the MMD, L2 and aux terms as well as
      the reward (else W only weights the reward).
    """

    start: Literal["data", "on_policy_continuous", "on_policy_discrete"] = "data"
    members: int = 1
    mmd_weight: float = 1.0
    reward_weight: float = 0.0
    l2_weight: float = 0.0
    reference: Literal["teacher", "frozen_aux"] = "teacher"
    aux_update: Literal["online", "frozen"] = "online"
    update_schedule: Literal["alternating", "simultaneous"] = "alternating"
    time_sampling: Literal["continuous", "grid"] = "continuous"
    share_time_across_members: bool = True
    mmd_weighting: Weighting = "edm"
    aux_weighting: Weighting = "edm"
    aux_reg_weight: float = 1.0
    s_floor: float = 0.02
    weight_regularizers: bool = True

    def validate(self) -> None:
        if self.members < 1:
            raise ValueError(f"members: must be >= 1, found {self.members}")
        for k in ("mmd_weight", "reward_weight", "l2_weight", "aux_reg_weight"):
            if not 0 <= getattr(self, k) < float("inf"):  # NaN fails too
                raise ValueError(f"{k}: must be finite and >= 0, found {getattr(self, k)}")
        if not (self.mmd_weight > 0 or self.reward_weight > 0):
            raise ValueError(
                "mmd_weight and reward_weight are both 0: the student would learn nothing (the "
                "L2 term only anchors it to where it starts); give either a weight > 0"
            )
        if not 0 < self.s_floor < float("inf"):
            raise ValueError(f"s_floor: must be finite and > 0, found {self.s_floor}")

    def trainable_groups(self) -> tuple[str, ...]:
        """The param groups the optimizer updates in this phase."""
        return ("student", "aux") if self.aux_update == "online" else ("student",)

    def required_groups(self) -> tuple[str, ...]:
        """All param groups the loss reads."""
        groups = ["student", "aux", "teacher"]
        if self.reference == "frozen_aux":
            groups.append("aux_frozen")
        if self.l2_weight > 0:
            groups.append("student_frozen")
        return tuple(groups)


def check_s_floor(
    cfg: ObjectiveConfig,
    sampler_cfg: ss.StudentSamplerConfig,
    where: str = "",
    sampler_where: str = "student_sampler.",
) -> None:
    """ValueError unless `cfg.s_floor` lies below the student sampler's last noise level
    (`student_sampler.last_level`). s is drawn between t and the next knot
    below it; were the floor not below the last level, the draws from the last level would all
    get s = t, and x_s = x_t gives that share of the batch (about 1/K) nothing to match.
    `where` prefixes the floor's key in the message (e.g. "mmd.objective."), `sampler_where` the
    sampler's (the image config's is "mmd.sampler.")."""
    last, key = ss.last_level(sampler_cfg)
    if not cfg.s_floor < last:
        if key is None:
            level = f"{last:.4g} ({sampler_where}grid cosine at t = 1/K)"
            fix = ""
        else:
            level, fix = f"{sampler_where}{key} {last}", f" or raise {sampler_where}{key}"
        raise ValueError(
            f"{where}s_floor {cfg.s_floor} must be below the student's last noise level, "
            f"{level}: lower {where}s_floor{fix}"
        )


def time_weight(kind: Weighting, sigma: jax.Array) -> jax.Array:
    """w(S): "uniform" 1, "edm" (S^2 + 1)/S^2 (GenCast's lambda(S), sigma_data = 1), "inv_sigma2"
    1/S^2."""
    if kind == "uniform":
        return jnp.ones_like(sigma)
    if kind == "edm":
        return (sigma**2 + 1.0) / sigma**2
    if kind == "inv_sigma2":
        return 1.0 / sigma**2
    raise ValueError(f"unknown weighting {kind!r}")


def extended_log_levels(sampler_cfg: ss.StudentSamplerConfig, s_floor: float) -> jax.Array:
    """log of `[S_0, ..., S_{K-1}, s_floor]`: the continuous time index's knots (module doc);
    `s_floor` below `S_{K-1}` (`check_s_floor`)."""
    levels = ss.noise_levels(sampler_cfg)
    return jnp.log(jnp.asarray(list(levels) + [s_floor], jnp.float32))


def sigma_at(log_levels: jax.Array, u: jax.Array) -> jax.Array:
    """Noise level at continuous time index u in [0, K] (log-linear between knots)."""
    knots = jnp.arange(log_levels.shape[0], dtype=jnp.float32)
    return jnp.exp(jnp.interp(u, knots, log_levels))


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def _tile(tree: Any, m: int) -> Any:
    """Repeat the leading (batch) axis m times, member-major (index = member * B + b)."""
    if m == 1:
        return tree
    return jax.tree.map(lambda x: jnp.concatenate([x] * m, axis=0), tree)


def make_objective(
    denoise_fn: ss.DenoiseFn,
    noise_fn: ss.NoiseFn,
    sampler_cfg: ss.StudentSamplerConfig,
    cfg: ObjectiveConfig,
    *,
    target_fn: Callable[[Any], jax.Array],
    cond_fn: Callable[[Any], Any],
    reward_fn: RewardFn | None = None,
    weights: jax.Array | None = None,
    teacher_denoise_fn: ss.DenoiseFn | None = None,
    chain_denoise_fn: ss.DenoiseFn | None = None,
) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """Build `objective(params, batch, rng, student=True, aux=True) -> (loss, metrics)`.

    Args:
      denoise_fn: the student/aux/frozen-copy network (teacher's architecture).
      noise_fn: `noise_fn(rng, shape)` unit-variance noise (spherical for GenCast).
      sampler_cfg: the student sampler (grid, eta; eta is also the posterior step's eta).
      cfg: the phase's `ObjectiveConfig`.
      target_fn: `batch -> x0 [B, ...]` truth (normalized residual targets for GenCast).
      cond_fn: `batch -> cond` pytree with leading batch axis (or None).
      reward_fn: `(samples [M, B, ...], cond, batch) -> [B]`; default minus the weighted fair
        CRPS against `target_fn(batch)` (`crps.crps_reward`). Only used if reward_weight > 0.
      weights: per-channel weights broadcastable to the per-example shape, or None.
      teacher_denoise_fn: the teacher network if it differs from `denoise_fn`.
      chain_denoise_fn: the network the on-policy start's sampling chain runs with the
        student's parameters, if it differs from `denoise_fn` (the image path: the student
        without dropout, which only its gradient-carrying call x_hat gets).
    `student` / `aux` select which of the two losses are included (static Python bools):
    the returned loss is `L_G * student + L_A * aux`. `reward_weight` / `l2_weight` (may be
    traced) replace the config's lambda / lambda_reg, so one compiled step serves a whole lambda
    sweep; the reward and L2 terms are built only when the config's weights are > 0. `intermediates=True` also returns the
    arrays the loss was built from (x_t, sigma_t, x_hat, x_s, sigma_s, aux_out, teacher_out). Metrics always include `mmd`, `aux_loss`
    where computed, `reward` when a reward is used (`crps` too for the default CRPS reward with
    M >= 2), `l2`, `moment_gap`.
    """
    cfg.validate()
    sampler_cfg.validate()
    check_s_floor(cfg, sampler_cfg)
    teacher_fn = teacher_denoise_fn or denoise_fn
    chain_fn = chain_denoise_fn or denoise_fn
    k_steps = sampler_cfg.num_steps
    log_levels = extended_log_levels(sampler_cfg, cfg.s_floor)
    m = cfg.members
    reg_w = weights if cfg.weight_regularizers else None
    # The CRPS diagnostic: only for the default (CRPS) reward, and the fair CRPS needs M >= 2.
    log_crps = reward_fn is None and m >= 2
    if reward_fn is None:
        reward_fn = crps_reward(target_fn, weights)
    use_reward = cfg.reward_weight > 0

    def objective(
        params,
        batch,
        rng,
        student: bool = True,
        aux: bool = True,
        intermediates: bool = False,
        reward_weight: jax.Array | float | None = None,
        l2_weight: jax.Array | float | None = None,
    ):
        sg = jax.lax.stop_gradient
        lam = cfg.reward_weight if reward_weight is None else reward_weight
        lam_reg = cfg.l2_weight if l2_weight is None else l2_weight
        cond1 = cond_fn(batch)
        x_true = target_fn(batch)
        b = x_true.shape[0]
        n = m * b
        cond = _tile(cond1, m)
        shape = (n,) + tuple(x_true.shape[1:])
        keys = jax.random.split(rng, 8)

        # --- start time index u and state x_t (no gradient anywhere in here) ---
        n_t = b if cfg.share_time_across_members else n
        if cfg.start == "on_policy_discrete" or cfg.time_sampling == "grid":
            u = jax.random.randint(keys[0], (n_t,), 0, k_steps).astype(jnp.float32)
        else:
            u = jax.random.uniform(keys[0], (n_t,), minval=0.0, maxval=float(k_steps))
        if cfg.share_time_across_members:
            u = _tile(u, m)
        sigma_t = sigma_at(log_levels, u)
        student_params = params["student"]
        if cfg.start == "data":
            x_t = _tile(x_true, m) + _bcast(sigma_t, x_true) * noise_fn(keys[1], shape)
        elif cfg.start == "on_policy_continuous":
            x_pol = ss.sample_trajectory(
                chain_fn, sg(student_params), keys[2], cond, shape, noise_fn, sampler_cfg
            ).sample
            x_t = sg(x_pol) + _bcast(sigma_t, x_pol) * noise_fn(keys[1], shape)
        elif cfg.start == "on_policy_discrete":
            traj = ss.sample_trajectory(
                chain_fn, sg(student_params), keys[2], cond, shape, noise_fn, sampler_cfg
            )
            idx = u.astype(jnp.int32)
            x_t = sg(jnp.take_along_axis(traj.states, _bcast(idx, traj.states[0])[None], 0)[0])
            sigma_t = traj.sigmas[idx]
        else:
            raise ValueError(f"unknown start {cfg.start!r}")

        # --- the one student call with gradient ---
        x_hat = denoise_fn(student_params, x_t, sigma_t, cond)

        # --- s one student step below t, x_s from sg(x_hat) ---
        u_s = u + (1.0 - jax.random.uniform(keys[3], u.shape))  # (u, u + 1]
        sigma_s = sigma_at(log_levels, jnp.minimum(u_s, float(k_steps)))
        z = noise_fn(keys[4], shape)
        x_s = sg(ss.ddim_eta_step(x_t, sg(x_hat), sigma_t, sigma_s, sampler_cfg.eta, z))

        metrics: dict[str, jax.Array] = {
            "sigma_t_mean_log": jnp.mean(jnp.log(sigma_t)),
        }
        aux_params = params["aux"]
        a_out = denoise_fn(aux_params, x_s, sigma_s, cond)  # grad to aux params only
        need_teacher = (student and cfg.reference == "teacher") or (aux and cfg.aux_reg_weight > 0)
        teacher_out = (
            sg(teacher_fn(params["teacher"], x_s, sigma_s, cond)) if need_teacher else None
        )
        total = jnp.zeros((), jnp.float32)

        if student:
            m_stu = sg(a_out)
            if cfg.reference == "teacher":
                m_ref = teacher_out
            else:
                m_ref = sg(denoise_fn(params["aux_frozen"], x_s, sigma_s, cond))
            diff = m_stu - m_ref
            w_s = time_weight(cfg.mmd_weighting, sigma_s)
            mmd = jnp.mean(w_s * weighted_mean(x_hat * diff, reg_w))
            metrics["mmd"] = mmd
            metrics["moment_gap"] = jnp.mean(jnp.sqrt(weighted_mean(diff**2, reg_w)))
            loss_g = cfg.mmd_weight * mmd
            if use_reward:
                samples = x_hat.reshape((m, b) + x_hat.shape[1:])
                r = jnp.mean(reward_fn(samples, cond1, batch))
                metrics["reward"] = r
                if log_crps:
                    metrics["crps"] = jnp.mean(
                        weighted_mean(fair_crps(sg(samples), x_true, axis=0), weights)
                    )
                loss_g = loss_g - lam * r
            if cfg.l2_weight > 0:
                anchor = sg(denoise_fn(params["student_frozen"], x_t, sigma_t, cond))
                l2 = jnp.mean(weighted_mean((x_hat - anchor) ** 2, reg_w))
                metrics["l2"] = l2
                loss_g = loss_g + lam_reg * l2
            metrics["student_loss"] = loss_g
            total = total + loss_g

        if aux:
            v_s = time_weight(cfg.aux_weighting, sigma_s)
            reg = jnp.mean(v_s * weighted_mean((a_out - sg(x_hat)) ** 2, reg_w))
            loss_a = reg
            if cfg.aux_reg_weight > 0:
                anchor_t = jnp.mean(v_s * weighted_mean((a_out - teacher_out) ** 2, reg_w))
                metrics["aux_teacher_reg"] = anchor_t
                loss_a = loss_a + cfg.aux_reg_weight * anchor_t
            metrics["aux_regression"] = reg
            metrics["aux_loss"] = loss_a
            total = total + loss_a
        if intermediates:  # for tests and diagnostics: the arrays the loss was built from
            inter = {"x_t": x_t, "sigma_t": sigma_t, "x_hat": x_hat, "x_s": x_s, "sigma_s": sigma_s}
            inter.update({"aux_out": a_out, "teacher_out": teacher_out, "cond": cond})
            return total, metrics, inter
        return total, metrics

    return objective
