"""Analytic Gaussian world for distillation tests (not collected by pytest).

Data: x0 ~ N(MU, SIGMA) in D dims. The exact VE denoiser is
    E[x0 | y = x0 + S n] = MU + SIGMA (SIGMA + S^2 I)^-1 (y - MU)
and serves as the teacher. Student/auxiliary: a "knot-affine" network in EDM-preconditioned form,
    D(y, S) = c_skip y + c_out (P(S) c_in y + q(S)),
with P, q piecewise linear in log S between fixed knots; initialized by matching the teacher at
the knots ("initialized from the teacher"). It can represent any affine map per noise level,
which is what a K-step Gaussian student needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MU = np.array([0.5, -1.0], np.float32)
SIGMA = np.array([[1.0, 0.5], [0.5, 0.8]], np.float32)
D = 2


def teacher_denoise(params, y, sigma, cond):
    mu, cov = params["mu"], params["cov"]
    s2 = sigma[:, None, None] ** 2
    gain = cov[None] @ jnp.linalg.inv(cov[None] + s2 * jnp.eye(D)[None])
    return mu + jnp.einsum("bij,bj->bi", gain, y - mu)


TEACHER_PARAMS = {"mu": jnp.asarray(MU), "cov": jnp.asarray(SIGMA)}


def gaussian_noise(rng, shape):
    return jax.random.normal(rng, shape, jnp.float32)


def _precond(sigma):
    c_in = 1.0 / jnp.sqrt(sigma**2 + 1.0)
    c_skip = 1.0 / (sigma**2 + 1.0)
    c_out = sigma * c_in
    return c_in, c_skip, c_out


def make_knot_model(levels, floor=0.01, top=100.0, n_extra=24):
    """Returns (denoise_fn, init_params_from_teacher) with knots at `levels` plus log-spaced
    extras on [floor, top]."""
    knots = np.unique(
        np.concatenate(
            [np.log(np.asarray(levels)), np.linspace(np.log(floor), np.log(top), n_extra)]
        )
    ).astype(np.float32)
    knots_j = jnp.asarray(knots)
    eye = jnp.eye(len(knots))

    def basis(sigma):
        ls = jnp.log(sigma)
        return jax.vmap(lambda e: jnp.interp(ls, knots_j, e), out_axes=1)(eye)  # [B, n]

    def denoise(params, y, sigma, cond):
        w = basis(sigma)
        p = jnp.einsum("bn,nij->bij", w, params["P"])
        q = w @ params["q"]
        c_in, c_skip, c_out = _precond(sigma)
        f = jnp.einsum("bij,bj->bi", p, c_in[:, None] * y) + q
        return c_skip[:, None] * y + c_out[:, None] * f

    def init_from_teacher():
        s = jnp.exp(knots_j)
        gain = jnp.asarray(SIGMA)[None] @ jnp.linalg.inv(
            jnp.asarray(SIGMA)[None] + (s**2)[:, None, None] * jnp.eye(D)[None]
        )
        bias = jnp.asarray(MU)[None] - jnp.einsum("nij,j->ni", gain, jnp.asarray(MU))
        c_in, c_skip, c_out = _precond(s)
        p = (gain - c_skip[:, None, None] * jnp.eye(D)[None]) / (c_out * c_in)[:, None, None]
        q = bias / c_out[:, None]
        return {"P": p.astype(jnp.float32), "q": q.astype(jnp.float32)}

    return denoise, init_from_teacher


def data_batches(batch_size, seed=0):
    chol = np.linalg.cholesky(SIGMA)

    def batches(step):
        rng = np.random.default_rng([seed, step])
        x = MU + rng.normal(size=(batch_size, D)).astype(np.float32) @ chol.T
        return {"x": x.astype(np.float32)}

    return batches


def moments(x):
    x = np.asarray(x, np.float64)
    return x.mean(0), np.cov(x.T)
