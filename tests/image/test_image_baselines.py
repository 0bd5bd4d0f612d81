"""DRaFT-K, ReFL and the denoising loss: definitions checked against hand-built references."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.distill import student_sampler as ss
from gencast_rmmd.image import baselines as B
from gencast_rmmd.model.sh_noise import gaussian_noise

CFG = ss.StudentSamplerConfig(
    num_steps=4, max_noise_level=20.0, min_noise_level=0.1, rho=7.0, eta=0.7
)
SHAPE = (3, 4, 4, 1)


def denoise(params, x, sigma, cond):
    """A small nonlinear VE 'denoiser' with two parameters and a class shift."""
    s = sigma.reshape(-1, 1, 1, 1)
    lab = cond.reshape(-1, 1, 1, 1).astype(jnp.float32)
    return jnp.tanh(params["a"] * x / jnp.sqrt(1 + s**2)) * params["b"] + 0.1 * lab


def reward(x, labels):
    return -jnp.mean((x - 0.5) ** 2, axis=(1, 2, 3))


P = {"a": jnp.float32(1.3), "b": jnp.float32(0.8)}
COND = jnp.array([0, 1, 2])


def test_truncated_chain_value_equals_student_sampler():
    rng = jax.random.PRNGKey(0)
    want = ss.sample(denoise, P, rng, COND, SHAPE, gaussian_noise, CFG)
    for k in range(CFG.num_steps + 1):
        got = B.truncated_chain(denoise, P, rng, COND, SHAPE, gaussian_noise, CFG, k)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_truncated_chain_gradient_flows_through_last_k_calls_only():
    rng = jax.random.PRNGKey(1)
    traj = ss.sample_trajectory(denoise, P, rng, COND, SHAPE, gaussian_noise, CFG)

    def last_call(p):  # reference for DRaFT-1: only the last network call sees params
        x0 = denoise(p, traj.states[-1], jnp.full((3,), traj.sigmas[-1]), COND)
        return jnp.sum(reward(x0, COND))

    def draft(p, k):
        return jnp.sum(
            reward(B.truncated_chain(denoise, p, rng, COND, SHAPE, gaussian_noise, CFG, k), COND)
        )

    g_ref = jax.grad(last_call)(P)
    g1 = jax.grad(draft)(P, 1)
    for key in P:
        np.testing.assert_allclose(g1[key], g_ref[key], rtol=1e-4, atol=1e-6)
    g0 = jax.grad(draft)(P, 0)
    assert all(float(v) == 0.0 for v in jax.tree.leaves(g0))
    # Full DRaFT equals differentiating the whole sampler.
    g_full = jax.grad(
        lambda p: jnp.sum(
            reward(ss.sample(denoise, p, rng, COND, SHAPE, gaussian_noise, CFG), COND)
        )
    )(P)
    g4 = jax.grad(draft)(P, CFG.num_steps)
    for key in P:
        np.testing.assert_allclose(g4[key], g_full[key], rtol=1e-4, atol=1e-6)
    assert abs(float(g4["a"] - g1["a"])) > 1e-6  # the truncation matters


def test_draft_loss_definition():
    rng = jax.random.PRNGKey(2)
    anchor = {"a": jnp.float32(1.0), "b": jnp.float32(1.0)}
    loss, m = B.draft_loss(
        denoise, P, anchor, rng, COND, SHAPE, gaussian_noise, CFG, reward, 2.5, 1, 0.3
    )
    x0 = ss.sample(denoise, P, rng, COND, SHAPE, gaussian_noise, CFG)
    r = float(jnp.mean(reward(x0, COND)))
    l2 = (1.3 - 1.0) ** 2 + (0.8 - 1.0) ** 2
    np.testing.assert_allclose(float(loss), -2.5 * r + 0.3 * l2, rtol=1e-5)
    np.testing.assert_allclose(float(m["param_l2"]), l2, rtol=1e-5)
    # L2 gradient: 2 * l2 * (theta - theta0) when lambda = 0
    g = jax.grad(
        lambda p: B.draft_loss(
            denoise, p, anchor, rng, COND, SHAPE, gaussian_noise, CFG, reward, 0.0, 1, 0.3
        )[0]
    )(P)
    np.testing.assert_allclose(g["a"], 2 * 0.3 * 0.3, rtol=1e-5)


def test_stopped_state_and_refl_loss_definition():
    rng = jax.random.PRNGKey(3)
    stop = jnp.array([0, 2, 3])
    y, sig = B.stopped_state(denoise, P, rng, COND, SHAPE, gaussian_noise, CFG, stop)
    traj = ss.sample_trajectory(denoise, P, rng, COND, SHAPE, gaussian_noise, CFG)
    for b, k in enumerate([0, 2, 3]):
        np.testing.assert_allclose(y[b], traj.states[k, b], rtol=1e-6)
        np.testing.assert_allclose(sig[b], traj.sigmas[k], rtol=1e-6)
    x_data = jnp.full(SHAPE, 0.2)
    loss, m = B.refl_loss(denoise, P, rng, COND, x_data, gaussian_noise, CFG, reward, 1.7, 2, 0.4)
    # Reconstruct: same rng split, one gradient step at the stop index.
    r_c, r_k, r_d = jax.random.split(rng, 3)
    stop = jax.random.randint(r_k, (3,), 2, CFG.num_steps)
    assert bool(jnp.all(stop >= 2))
    y, sig = B.stopped_state(denoise, P, r_c, COND, SHAPE, gaussian_noise, CFG, stop)
    r = jnp.mean(reward(denoise(P, y, sig, COND), COND))
    levels = ss.noise_levels(CFG)
    dl = B.denoising_loss(
        denoise, P, r_d, x_data, COND, gaussian_noise, float(levels[-1]), float(levels[0])
    )
    np.testing.assert_allclose(float(loss), float(-1.7 * r + 0.4 * dl), rtol=1e-5)
    # The reward gradient passes through exactly one network call: params are not
    # differentiated through the stopped chain.
    g = jax.grad(
        lambda p: B.refl_loss(
            denoise, p, rng, COND, x_data, gaussian_noise, CFG, reward, 1.0, 2, 0.0
        )[0]
    )(P)
    g_ref = jax.grad(lambda p: -jnp.mean(reward(denoise(p, y, sig, COND), COND)))(P)
    np.testing.assert_allclose(g["a"], g_ref["a"], rtol=1e-4)


def denoise_drop(params, x, sigma, cond):
    """`denoise` with a dropout-like multiplicative noise from the rng of `cond = (labels, rng)`
    (the image convention; labels alone: deterministic)."""
    if isinstance(cond, tuple):
        labels, rng = cond
        return denoise(params, x, sigma, labels) * (1 + 0.3 * jax.random.normal(rng, x.shape))
    return denoise(params, x, sigma, cond)


def test_baseline_chains_run_without_dropout():
    """The chains sample as at inference (no dropout) whatever rng `cond` carries: DRaFT's whole
    chain, ReFL's chain to the stop; ReFL's gradient call and denoising loss keep the rng."""
    rng, key = jax.random.PRNGKey(2), jax.random.PRNGKey(9)
    anchor = {"a": jnp.float32(1.0), "b": jnp.float32(1.0)}
    args = (SHAPE, gaussian_noise, CFG, reward, 2.5, 1, 0.3)
    got, m = B.draft_loss(denoise_drop, P, anchor, rng, (COND, key), *args)
    want, _ = B.draft_loss(denoise_drop, P, anchor, rng, COND, *args)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    x0 = ss.sample(denoise_drop, P, rng, COND, SHAPE, gaussian_noise, CFG)  # inference
    np.testing.assert_allclose(float(m["reward"]), float(jnp.mean(reward(x0, COND))), rtol=1e-6)
    x0_drop = ss.sample(denoise_drop, P, rng, (COND, key), SHAPE, gaussian_noise, CFG)
    assert abs(float(jnp.mean(reward(x0_drop, COND)) - m["reward"])) > 1e-4  # dropout matters
    x_data = jnp.full(SHAPE, 0.2)
    loss, _ = B.refl_loss(
        denoise_drop, P, rng, (COND, key), x_data, gaussian_noise, CFG, reward, 1.7, 2, 0.4
    )
    r_c, r_k, r_d = jax.random.split(rng, 3)
    stop = jax.random.randint(r_k, (3,), 2, CFG.num_steps)
    y, sig = B.stopped_state(denoise_drop, P, r_c, COND, SHAPE, gaussian_noise, CFG, stop)
    r = jnp.mean(reward(denoise_drop(P, y, sig, (COND, key)), COND))
    levels = ss.noise_levels(CFG)
    dl = B.denoising_loss(
        denoise_drop, P, r_d, x_data, (COND, key), gaussian_noise, float(levels[-1]),
        float(levels[0]),
    )  # fmt: skip
    np.testing.assert_allclose(float(loss), float(-1.7 * r + 0.4 * dl), rtol=1e-5)


def test_denoising_loss_brute_force():
    rng = jax.random.PRNGKey(4)
    x0 = jax.random.normal(jax.random.PRNGKey(5), SHAPE)
    got = B.denoising_loss(denoise, P, rng, x0, COND, gaussian_noise, 0.1, 20.0)
    r_s, r_n = jax.random.split(rng)
    u = np.asarray(jax.random.uniform(r_s, (3,)))
    n = gaussian_noise(r_n, SHAPE)
    tot = 0.0
    for b in range(3):
        s = float(np.exp(np.log(0.1) + u[b] * (np.log(20.0) - np.log(0.1))))
        xh = denoise(P, (x0[b] + s * n[b])[None], jnp.array([s]), COND[b : b + 1])[0]
        tot += (s**2 + 1) / s**2 * float(jnp.mean((xh - x0[b]) ** 2))
    np.testing.assert_allclose(float(got), tot / 3, rtol=1e-4)


def test_hypernoise_loss_definition_and_gradient():
    """HyperNoise: zero-initialised f gives the student's own samples and zero KL; the loss is
    -lam R(G(eps + f)) + kl * 0.5 sum_k mean f(eps_k)^2 against a hand-built reference (a chain
    written out step by step); the gradient reaches the noise network only."""
    from gencast_rmmd.image import hypernoise as H

    apply, phi0 = H.init_noise_net(8, 3, SHAPE[1:], seed=0)
    rng = jax.random.PRNGKey(4)
    want = ss.sample(denoise, P, rng, COND, SHAPE, gaussian_noise, CFG)
    got = ss.sample(denoise, P, rng, COND, SHAPE, H.modulated_noise_fn(apply, phi0, COND), CFG)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert float(H.noise_kl(apply, phi0, rng, COND, SHAPE, CFG)) == 0.0

    # A non-zero modulation: perturb every parameter, then check the loss by hand.
    phi = jax.tree.map(lambda x: x + 0.05 * jnp.ones_like(x), phi0)
    lam, kl_w = 0.7, 0.3
    loss, m = H.hypernoise_loss(denoise, P, apply, phi, rng, COND, SHAPE, CFG, reward, lam, kl_w)

    def mod(k):
        eps = gaussian_noise(jax.random.fold_in(rng, k), SHAPE)
        return eps + apply(phi, eps, COND), apply(phi, eps, COND)

    levels = ss.noise_levels(CFG)
    y, kl = levels[0] * mod(0)[0], 0.0
    for k in range(CFG.num_steps):
        kl = kl + 0.5 * jnp.mean(mod(k)[1] ** 2)
        x0 = denoise(P, y, jnp.full((SHAPE[0],), levels[k]), COND)
        s_next = levels[k + 1] if k + 1 < CFG.num_steps else 0.0
        y = ss.ddim_eta_step(y, x0, levels[k], s_next, CFG.eta, mod(k + 1)[0])
    assert float(jnp.max(jnp.abs(mod(1)[1]))) > 0
    ref = -lam * jnp.mean(reward(y, COND)) + kl_w * kl
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    np.testing.assert_allclose(float(m["noise_kl"]), float(kl), rtol=1e-5)
    # With eta = 0 the chain draws only the initial noise, and the KL counts only that one.
    cfg0 = dataclasses.replace(CFG, eta=0.0)
    np.testing.assert_allclose(
        float(H.noise_kl(apply, phi, rng, COND, SHAPE, cfg0)),
        float(0.5 * jnp.mean(mod(0)[1] ** 2)),
        rtol=1e-6,
    )

    g_phi, g_p = jax.grad(
        lambda ph, p: H.hypernoise_loss(
            denoise, p, apply, ph, rng, COND, SHAPE, CFG, reward, lam, kl_w
        )[0],
        argnums=(0, 1),
    )(phi, P)
    assert sum(float(jnp.sum(jnp.abs(v))) for v in jax.tree.leaves(g_phi)) > 0
    assert all(float(v) == 0.0 for v in jax.tree.leaves(g_p))  # the student is frozen


def test_switched_reward_matches_each_reward_with_one_compilation():
    # The sweep compiles one step per method: the reward is chosen by a traced index.
    from gencast_rmmd.image.finetune import switched_reward
    from gencast_rmmd.image.rewards import bw_reward, laplacian_reward

    rewards = (bw_reward, laplacian_reward, reward)
    traces = {"n": 0}

    @jax.jit
    def value_and_grad(x, labels, index):
        traces["n"] += 1
        f = switched_reward(rewards, index)
        return jax.value_and_grad(lambda y: jnp.sum(f(y, labels)))(x)

    x = jax.random.normal(jax.random.PRNGKey(5), SHAPE)
    for i, r in enumerate(rewards):
        v, g = value_and_grad(x, COND, jnp.int32(i))
        v_ref, g_ref = jax.value_and_grad(lambda y, r=r: jnp.sum(r(y, COND)))(x)
        np.testing.assert_allclose(v, v_ref, rtol=1e-6)
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)
    assert traces["n"] == 1
    # A single reward is passed through unchanged.
    assert switched_reward((bw_reward,), jnp.int32(0)) is bw_reward
