"""Surrogate gradients: grad of the JAX surrogate == J^T(...) computed directly; no leaks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gencast_rmmd.distill import student_sampler as ss
from gencast_rmmd.distill.crps import crps_reward
from gencast_rmmd.distill.objectives import ObjectiveConfig, make_objective, time_weight

SHAPE = (3, 2)  # per-example shape: deliberately not [lat, lon, C]
F = 6
B = 4


def mlp_denoise(params, x, sigma, cond):
    """A small nonlinear network: x0_hat = x / (1 + s^2) + MLP([x, log s, cond])."""
    flat = x.reshape(x.shape[0], -1)
    h = jnp.concatenate([flat, jnp.log(sigma)[:, None], cond[:, None]], axis=1)
    h = jnp.tanh(h @ params["w1"] + params["b1"])
    out = flat / (1 + sigma[:, None] ** 2) + h @ params["w2"]
    return out.reshape(x.shape)


def _params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w1": 0.5 * jax.random.normal(k1, (F + 2, 16)),
        "b1": 0.1 * jax.random.normal(k2, (16,)),
        "w2": 0.5 * jax.random.normal(k3, (16, F)),
    }


def _setup(start, members=2, reward=0.3, l2=0.15, reference="teacher", aux_reg=0.5, reward_fn=None):
    names = ["student", "aux", "teacher", "student_frozen", "aux_frozen"]
    params = {n: _params(jax.random.PRNGKey(i)) for i, n in enumerate(names)}
    rng = np.random.default_rng(0)
    batch = {
        "x": jnp.asarray(rng.normal(size=(B, *SHAPE)), jnp.float32),
        "c": jnp.asarray(rng.normal(size=(B,)), jnp.float32),
    }
    weights = jnp.asarray([[0.5], [1.0], [1.5]], jnp.float32)
    cfg = ObjectiveConfig(
        start=start,
        members=members,
        reward_weight=reward,
        l2_weight=l2,
        reference=reference,
        aux_reg_weight=aux_reg,
        mmd_weighting="edm",
        aux_weighting="edm",
    )
    scfg = ss.StudentSamplerConfig(num_steps=4)
    target_fn = lambda b: b["x"]  # noqa: E731
    cond_fn = lambda b: b["c"]  # noqa: E731
    noise = lambda k, s: jax.random.normal(k, s)  # noqa: E731
    obj = make_objective(
        mlp_denoise, noise, scfg, cfg, target_fn=target_fn, cond_fn=cond_fn, weights=weights,
        reward_fn=reward_fn,
    )  # fmt: skip
    obj = jax.jit(obj, static_argnames=("student", "aux", "intermediates"))
    return obj, params, batch, weights, cfg, target_fn


def _vjp(params, x, sigma, cond, v):
    _, pull = jax.vjp(lambda p: mlp_denoise(p, x, sigma, cond), params)
    return pull(v)[0]


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        # float32 under jit; the EDM weight reaches 2500 at s = 0.02, so compare on the scale of
        # the whole tensor
        scale = float(np.max(np.abs(np.asarray(y))))
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-5 * scale)


def _zero(tree):
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "start,reference",
    [
        ("data", "teacher"),
        ("on_policy_continuous", "frozen_aux"),
        ("on_policy_discrete", "teacher"),
    ],
)
def test_student_gradient_is_jacobian_transpose_of_moment_gap(start, reference):
    obj, params, batch, w, cfg, target_fn = _setup(start, reference=reference)
    key = jax.random.PRNGKey(7)
    _, _, it = obj(params, batch, key, student=True, aux=False, intermediates=True)
    grads = jax.jit(jax.grad(lambda p: obj(p, batch, key, student=True, aux=False)[0]))(params)

    n = cfg.members * B
    m_ref = (
        it["teacher_out"]
        if reference == "teacher"
        else mlp_denoise(params["aux_frozen"], it["x_s"], it["sigma_s"], it["cond"])
    )
    ws = time_weight("edm", it["sigma_s"])[:, None, None]
    v = ws * w * (it["aux_out"] - m_ref) / (n * F)
    # reward: -lambda * d mean_b R / d x_hat
    reward = crps_reward(target_fn, w)
    v = v - cfg.reward_weight * jax.grad(
        lambda xh: jnp.mean(reward(xh.reshape(cfg.members, B, *SHAPE), None, batch))
    )(it["x_hat"])
    anchor = mlp_denoise(params["student_frozen"], it["x_t"], it["sigma_t"], it["cond"])
    v = v + cfg.l2_weight * 2 * w * (it["x_hat"] - anchor) / (n * F)
    expect = _vjp(params["student"], it["x_t"], it["sigma_t"], it["cond"], v)
    _close(grads["student"], expect)
    # nothing else receives gradient: not the aux, teacher, frozen copies (nor through x_s)
    for g in ("aux", "teacher", "student_frozen", "aux_frozen"):
        _zero(grads[g])
    # the gradient is not trivially zero
    assert float(jnp.max(jnp.abs(grads["student"]["w2"]))) > 1e-4


def test_aux_gradient_is_weighted_regression_and_simultaneous_is_the_sum():
    obj, params, batch, w, cfg, _ = _setup("on_policy_continuous")
    key = jax.random.PRNGKey(3)
    _, _, it = obj(params, batch, key, student=False, aux=True, intermediates=True)
    g_aux = jax.jit(jax.grad(lambda p: obj(p, batch, key, student=False, aux=True)[0]))(params)
    n = cfg.members * B
    vs = time_weight("edm", it["sigma_s"])[:, None, None]
    v = vs * w * 2 * (it["aux_out"] - it["x_hat"]) / (n * F)
    v = v + cfg.aux_reg_weight * vs * w * 2 * (it["aux_out"] - it["teacher_out"]) / (n * F)
    _close(g_aux["aux"], _vjp(params["aux"], it["x_s"], it["sigma_s"], it["cond"], v))
    for g in ("student", "teacher", "student_frozen", "aux_frozen"):
        _zero(g_aux[g])
    g_stu = jax.jit(jax.grad(lambda p: obj(p, batch, key, student=True, aux=False)[0]))(params)
    g_both = jax.jit(jax.grad(lambda p: obj(p, batch, key, student=True, aux=True)[0]))(params)
    _close(g_both["student"], g_stu["student"])
    _close(g_both["aux"], g_aux["aux"])


def test_members_share_conditioning_and_get_independent_noise():
    obj, params, batch, _, cfg, _ = _setup("on_policy_continuous", members=3)
    _, m, it = obj(params, batch, jax.random.PRNGKey(0), intermediates=True)
    xt = np.asarray(it["x_t"]).reshape(3, B, *SHAPE)
    assert not np.allclose(xt[0], xt[1])
    np.testing.assert_array_equal(np.asarray(it["cond"]).reshape(3, B)[0], np.asarray(batch["c"]))
    # shared time per conditioning (default)
    st = np.asarray(it["sigma_t"]).reshape(3, B)
    np.testing.assert_array_equal(st[0], st[2])
    assert {"mmd", "reward", "crps", "l2", "aux_loss", "moment_gap"} <= set(m)
    assert float(m["reward"]) < 0 and float(m["crps"]) > 0


def test_discrete_mode_uses_grid_levels_and_s_is_one_step_below():
    obj, params, batch, _, _, _ = _setup("on_policy_discrete")
    levels = ss.noise_levels(ss.StudentSamplerConfig(num_steps=4))
    ext = list(levels) + [0.02]
    for seed in range(5):
        _, _, it = obj(params, batch, jax.random.PRNGKey(seed), intermediates=True)
        st, s_s = np.asarray(it["sigma_t"]), np.asarray(it["sigma_s"])
        for a, b in zip(st, s_s):
            k = int(np.argmin(np.abs(levels - a)))
            assert a == pytest.approx(levels[k], rel=1e-5)
            assert ext[k + 1] * (1 - 1e-5) <= b < a


def test_traced_lambda_equals_config_lambda_and_compiles_once():
    """`reward_weight` / `l2_weight` arguments give the loss and gradients of a config with those
    weights, and a lambda sweep through them reuses one compilation."""
    obj, params, batch, _, _, _ = _setup("on_policy_continuous", reward=1.0, l2=1.0)
    traces = []

    def loss(p, lam, lam_reg):
        traces.append(1)
        return obj(p, batch, jax.random.PRNGKey(3), reward_weight=lam, l2_weight=lam_reg)

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    for lam, lam_reg in ((0.3, 0.15), (0.8, 0.4), (0.05, 0.0)):
        (v, m), g = grad(params, jnp.float32(lam), jnp.float32(lam_reg))
        ref_obj, *_ = _setup("on_policy_continuous", reward=lam, l2=lam_reg or 1e-30)
        (v_ref, m_ref), g_ref = jax.value_and_grad(
            lambda p, f=ref_obj: f(p, batch, jax.random.PRNGKey(3)), has_aux=True
        )(params)
        np.testing.assert_allclose(float(v), float(v_ref), rtol=1e-4, atol=1e-6)
        _close(g, g_ref)
        assert float(m["reward"]) == pytest.approx(float(m_ref["reward"]), rel=1e-5)
    assert len(traces) == 1


def test_one_member_custom_reward_logs_no_crps():
    """With M = 1 and a custom reward (the image path) there is no fair CRPS to log (it needs
    two members); every logged metric is finite."""

    def reward_fn(samples, cond, batch):
        return -jnp.mean(samples**2, axis=(0, *range(2, samples.ndim)))

    obj, params, batch, *_ = _setup(
        "on_policy_discrete", members=1, reward=0.5, l2=0.1, reward_fn=reward_fn
    )
    _, m = obj(params, batch, jax.random.PRNGKey(0))
    assert "crps" not in m and "reward" in m
    assert all(np.isfinite(float(v)) for v in m.values())


def test_s_floor_must_lie_below_the_students_last_level():
    """s is drawn in (t, next knot]; with s_floor >= the last grid level it used to be clamped
    silently to that level, so every draw from the last level got s = t and x_s = x_t (about
    1/K of a batch, 12.7% at K = 8). Now the objective refuses it, and a distillation config
    naming it is one `ConfigError` with both values."""
    from gencast_rmmd.config import load_config
    from gencast_rmmd.distill.gencast import DistillConfig
    from gencast_rmmd.errors import ConfigError

    low = ss.StudentSamplerConfig(num_steps=8, min_noise_level=0.01)
    with pytest.raises(ValueError, match=r"s_floor 0.02 must be below .*min_noise_level 0.01"):
        make_objective(
            mlp_denoise, None, low, ObjectiveConfig(), target_fn=None, cond_fn=None
        )  # fmt: skip
    with pytest.raises(ConfigError) as e:
        load_config(DistillConfig, "tiny", ["student_sampler.min_noise_level=0.01"], kind="distill")
    assert "mmd.objective.s_floor 0.02" in str(e.value)
    assert "student_sampler.min_noise_level 0.01" in str(e.value)
    # One step: the only level is max_noise_level, and that is what the floor must be below.
    one = ["student_sampler.num_steps=1", "student_sampler.max_noise_level=0.02"]
    one += ["student_sampler.min_noise_level=0.01"]
    with pytest.raises(ConfigError, match="student_sampler.max_noise_level 0.02"):
        load_config(DistillConfig, "tiny", one, kind="distill")
    ok = ["student_sampler.min_noise_level=0.01", "mmd.objective.s_floor=0.005"]
    with pytest.raises(ConfigError, match=r"rmmd.objective.s_floor 0.02"):
        load_config(DistillConfig, "tiny", ok, kind="distill")
    both = ok + ["rmmd.objective.s_floor=0.005"]
    assert load_config(DistillConfig, "tiny", both, kind="distill").mmd.objective.s_floor == 0.005

    # With a valid floor, s lies strictly below t for every draw.
    scfg = ss.StudentSamplerConfig(num_steps=8)
    names = ["student", "aux", "teacher"]
    params = {n: _params(jax.random.PRNGKey(i)) for i, n in enumerate(names)}
    batch = {"x": jnp.zeros((512, *SHAPE)), "c": jnp.zeros((512,))}
    obj = make_objective(
        mlp_denoise, lambda k, s: jax.random.normal(k, s), scfg, ObjectiveConfig(),
        target_fn=lambda b: b["x"], cond_fn=lambda b: b["c"],
    )  # fmt: skip
    inter = obj(params, batch, jax.random.PRNGKey(0), intermediates=True)[2]
    assert np.all(np.asarray(inter["sigma_s"]) < np.asarray(inter["sigma_t"]))


@pytest.mark.parametrize("start", ["on_policy_continuous", "on_policy_discrete"])
def test_the_on_policy_chain_runs_chain_denoise_fn(start):
    """`chain_denoise_fn` is the network the on-policy start's chain runs (the image path: the
    student without dropout); x_hat stays the call of `denoise_fn`. Default: `denoise_fn`."""
    _, params, batch, _, cfg, target_fn = _setup(start)
    scfg = ss.StudentSamplerConfig(num_steps=4)
    noise = lambda k, s: jax.random.normal(k, s)  # noqa: E731

    def shifted(p, x, sigma, cond):  # another network: the chain's states must change
        return mlp_denoise(p, x, sigma, cond) + 0.5

    def run(chain):
        obj = make_objective(
            mlp_denoise, noise, scfg, cfg, target_fn=target_fn, cond_fn=lambda b: b["c"],
            chain_denoise_fn=chain,
        )  # fmt: skip
        _, _, inter = jax.jit(obj, static_argnames=("intermediates",))(
            params, batch, jax.random.PRNGKey(7), intermediates=True
        )
        return inter

    default, same, other = run(None), run(mlp_denoise), run(shifted)
    np.testing.assert_array_equal(default["x_t"], same["x_t"])
    assert float(jnp.max(jnp.abs(other["x_t"] - default["x_t"]))) > 1e-2
    # x_hat is denoise_fn at the chain's state, whichever network made that state.
    sig = other["sigma_t"]
    want = mlp_denoise(params["student"], other["x_t"], sig, other["cond"])
    np.testing.assert_allclose(other["x_hat"], want, rtol=1e-5, atol=1e-5)


def test_a_crps_reward_with_one_member_is_refused_by_the_distill_config():
    """The GenCast distillation's reward is the fair CRPS: with M = 1 its spread term vanishes
    and it is the absolute error (a reward for collapsing onto the median); the config refuses
    it, while phase 1 (no reward) keeps M = 1."""
    from gencast_rmmd.config import load_config
    from gencast_rmmd.distill.gencast import DistillConfig
    from gencast_rmmd.errors import ConfigError

    cfg = load_config(DistillConfig, "tiny", kind="distill")
    assert cfg.mmd.objective.members == 1 and cfg.rmmd.objective.members == 2
    with pytest.raises(ConfigError, match=r"rmmd.objective.members: the CRPS reward needs >= 2"):
        load_config(DistillConfig, "tiny", ["rmmd.objective.members=1"], kind="distill")
    one = ["rmmd.objective.members=1", "rmmd.objective.reward_weight=0"]
    assert load_config(DistillConfig, "tiny", one, kind="distill").rmmd.objective.members == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("mmd.objective.mmd_weight=nan", r"key 'mmd\.objective\.mmd_weight': expected a number, found NaN"),
        ("rmmd.objective.reward_weight=inf", r"key 'rmmd\.objective\.reward_weight': expected a finite number, found inf"),
        ("mmd.objective.mmd_weight=0", r"mmd\.objective: mmd_weight and reward_weight are both 0"),
        ("mmd.objective.s_floor=nan", r"key 'mmd\.objective\.s_floor': expected a number, found NaN"),
        ("mmd.optimizer.end_learning_rate=-1", r"mmd\.optimizer: end_learning_rate: must be finite and >= 0, found -1"),
        ("rmmd.optimizer.learning_rate=inf", r"key 'rmmd\.optimizer\.learning_rate': expected a finite number, found inf"),
        ("mmd.optimizer.learning_rate=0", r"mmd\.optimizer: learning_rate: must be finite and > 0, found 0"),
        ("mmd.optimizer.decay_steps=20", r"mmd\.optimizer: decay_steps: must be > warmup_steps \(20\) for the cosine schedule, found 20"),
    ],
)  # fmt: skip
def test_distill_config_refuses_weights_and_rates_that_train_nothing_or_garbage(override, message):
    """NaN or infinite loss weights and learning rates, a learning rate of 0, a negative final
    learning rate (the end of the schedule would climb the loss), a decay that ends within the
    warm-up (the rate would drop to its end value in one update), and a phase with neither an MMD nor a reward term (the
    student would not move) were all accepted and trained; each is now one ConfigError naming
    the key, at config load. A reward-only phase (mmd_weight 0, reward_weight > 0) stays valid."""
    from gencast_rmmd.config import load_config
    from gencast_rmmd.distill.gencast import DistillConfig
    from gencast_rmmd.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(DistillConfig, "tiny", [override], kind="distill")
    ok = ["rmmd.objective.mmd_weight=0", "rmmd.objective.reward_weight=0.3"]
    assert load_config(DistillConfig, "tiny", ok, kind="distill").rmmd.objective.mmd_weight == 0
