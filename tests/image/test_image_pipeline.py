"""Pareto bookkeeping (fronts, dominance, CSV schema) and the image configs."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from gencast_rmmd.config import load_config
from gencast_rmmd.errors import ConfigError
from gencast_rmmd.image import pipeline
from gencast_rmmd.image.config import ImageConfig


def test_pareto_front_brute_force():
    pts = [(1.0, 0.1), (2.0, 0.5), (1.5, 0.05), (3.0, 0.4), (0.5, -1.0), (2.0, 0.6)]
    front = pipeline.pareto_front(pts)
    # brute force: a point is on the front iff no other point is at least as good in both and
    # strictly better in one
    want = sorted(p for p in pts if not any(q != p and q[0] <= p[0] and q[1] >= p[1] for q in pts))
    assert sorted(front) == want
    assert pipeline.dominance(front, [(1.2, 0.05), (2.5, 0.55)]) == 1.0
    assert pipeline.dominance(front, [(0.4, 0.0)]) == 0.0


def test_summarize_and_csv_columns(tmp_path):
    rows = []
    for m, shift in (("rmmd", 0.0), ("draft", 0.5), ("refl", 0.3), ("dipp", 1.0)):
        for k in range(3):
            rows.append(
                {
                    "method": m,
                    "reward": "bw",
                    "lambda": 1.0,
                    "step": k * 10,
                    "distance": 1.0 + k + shift,
                    "reward_value": -1.0 + 0.2 * k,
                }
            )
    s = pipeline.summarize(rows, ("rmmd", "draft", "refl", "dipp", "hypernoise"), ("bw",))
    assert s["rewards"]["bw"]["rmmd_dominates_draft_share"] == 1.0
    # a method with no run on this reward has no front and no share (not NaN)
    assert "hypernoise" not in s["rewards"]["bw"]["fronts"]
    assert "rmmd_dominates_hypernoise_share" not in s["rewards"]["bw"]
    # without DRaFT and ReFL runs on a reward, RMMD wins nothing there
    only = pipeline.summarize(
        [x for x in rows if x["method"] == "rmmd"], ("rmmd", "draft"), ("bw",)
    )
    assert only["rewards"]["bw"]["rmmd_dominates_draft_and_refl"] is False
    assert only["rewards_where_rmmd_dominates_draft_and_refl"] == 0
    assert s["rewards"]["bw"]["rmmd_dominates_draft_and_refl"] is True
    assert s["rewards_where_rmmd_dominates_draft_and_refl"] == 1
    pipeline.write_outputs(tmp_path, rows, s, {"teacher": {"distance": 1.0, "bw": -0.5}})
    with open(tmp_path / "pareto.csv") as f:
        r = list(csv.reader(f))
    assert r[0] == ["method", "reward", "lambda", "step", "distance", "reward_value"]
    assert len(r) == 1 + len(rows)
    assert (tmp_path / "pareto.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["digits", "imagenet64"])
def test_shipped_configs_load(name):
    over = ["data.path=/somewhere/train.npz"] if name == "imagenet64" else []
    cfg = load_config(ImageConfig, name, over, kind="image")
    assert cfg.mmd.sampler.num_steps == 8
    if name == "imagenet64":
        with pytest.raises(ConfigError, match="data.path"):
            load_config(ImageConfig, name, kind="image")


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown key 'mmd.bogus'"):
        load_config(ImageConfig, "digits", ["mmd.bogus=1"], kind="image")
    with pytest.raises(ConfigError, match="num_steps"):
        load_config(ImageConfig, "digits", ["mmd.sampler.num_steps=3"], kind="image")
    with pytest.raises(ConfigError, match="unknown method"):
        load_config(ImageConfig, "digits", ["pareto.methods=[rmmd, bogus]"], kind="image")
    with pytest.raises(ConfigError, match="distill_eval_sets must be >= 1, found 0"):
        load_config(ImageConfig, "digits", ["pareto.distill_eval_sets=0"], kind="image")
    with pytest.raises(ConfigError, match="workers must be >= 1, found 0"):
        load_config(ImageConfig, "digits", ["pareto.workers=0"], kind="image")


def test_method_lambdas_override_the_reward_list():
    cfg = load_config(
        ImageConfig,
        "digits",
        ["pareto.lambdas.bw=[0.1, 1.0]", "pareto.method_lambdas={draft: {bw: [3.0, 30.0, 300.0]}}"],
        kind="image",
    ).pareto
    assert cfg.lambdas_for("draft", "bw") == (3.0, 30.0, 300.0)
    assert cfg.lambdas_for("refl", "bw") == (0.1, 1.0)  # no override: the reward's list
    assert cfg.lambdas_for("draft", "laplacian") == cfg.lambdas["laplacian"]
    with pytest.raises(ConfigError, match="method_lambdas: unknown method 'bogus'"):
        load_config(
            ImageConfig, "digits", ["pareto.method_lambdas={bogus: {bw: [1]}}"], kind="image"
        )
    with pytest.raises(ConfigError, match="method_lambdas.draft: unknown reward 'color'"):
        load_config(
            ImageConfig, "digits", ["pareto.method_lambdas={draft: {color: [1]}}"], kind="image"
        )


def test_cli_bad_data_leaves_no_run_directory(tmp_path):
    from gencast_rmmd.cli import main

    out = tmp_path / "run"
    rc = main(
        ["image", "teacher", "--config", "imagenet64", "--out", str(out),
         "--data", str(tmp_path / "missing.npz")]
    )  # fmt: skip
    assert rc == 2
    assert not out.exists()


def test_mmd_optimizer_two_time_scales():
    """aux_lr_ratio = r: the auxiliary's first Adam step is r x the student's (same gradient)."""
    import dataclasses

    import jax.numpy as jnp
    import optax

    from gencast_rmmd.image.config import MMDConfig, OptimConfig
    from gencast_rmmd.image.training import mmd_optimizer

    params = {"student": {"w": jnp.ones(3)}, "aux": {"w": jnp.ones(3)}}
    grads = {
        "student": {"w": jnp.array([0.5, -2.0, 1.0])},
        "aux": {"w": jnp.array([0.5, -2.0, 1.0])},
    }
    base = MMDConfig(optim=OptimConfig(learning_rate=1e-3, warmup_steps=0, grad_clip=0.0))
    for ratio in (1.0, 4.0):
        opt = mmd_optimizer(dataclasses.replace(base, aux_lr_ratio=ratio), steps=10)
        upd, _ = opt.update(grads, opt.init(params), params)
        new = optax.apply_updates(params, upd)
        d_student = np.asarray(new["student"]["w"] - 1.0)
        d_aux = np.asarray(new["aux"]["w"] - 1.0)
        np.testing.assert_allclose(d_student, -1e-3 * np.sign([0.5, -2.0, 1.0]), rtol=1e-4)
        np.testing.assert_allclose(d_aux, ratio * d_student, rtol=1e-4)
    with pytest.raises(ConfigError, match="aux_lr_ratio"):
        load_config(ImageConfig, "digits", ["mmd.aux_lr_ratio=0"], kind="image")


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_run_jobs_keeps_order_and_reports_each_job(workers):
    import time

    done = []
    # later items finish first: the results still come back in the order of the items
    out = pipeline.run_jobs(
        lambda x: (time.sleep(0.02 * (4 - x)), x * x)[1],
        [0, 1, 2, 3],
        workers,
        on_done=lambda i, r: done.append((i, r)),
    )
    assert out == [0, 1, 4, 9]
    assert sorted(done) == [(0, 0), (1, 1), (2, 4), (3, 9)]
    if workers == 1:
        assert done == [(0, 0), (1, 1), (2, 4), (3, 9)]


@pytest.mark.parametrize("workers", [1, 2])
def test_run_jobs_raises_the_first_error_and_skips_jobs_not_started(workers):
    import threading
    import time

    started = []
    lock = threading.Lock()

    def job(x):
        with lock:
            started.append(x)
        if x == 0:
            raise RuntimeError("job 0 failed")
        time.sleep(0.05)
        return x

    with pytest.raises(RuntimeError, match="job 0 failed"):
        pipeline.run_jobs(job, list(range(50)), workers)
    assert started[0] == 0 if workers == 1 else 0 in started
    assert len(started) == 1 if workers == 1 else len(started) < 10


def test_generate_in_threads_equals_one_after_the_other():
    import jax

    from gencast_rmmd.distill.student_sampler import StudentSamplerConfig
    from gencast_rmmd.image.config import ScheduleConfig, UViTConfig
    from gencast_rmmd.image.evaluation import generate
    from gencast_rmmd.image.model import build_model

    model = build_model(
        UViTConfig(channels=(8, 16), transformer_width=16, heads=2, embed_dim=16),
        ScheduleConfig(),
        (8, 8, 1),
        10,
    )
    # random (not zero-initialised) output layers, so the samples depend on the network
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda p: p + np.float32(0.1) * rng.standard_normal(p.shape, np.float32),
        model.init(jax.random.PRNGKey(0)),
    )
    sampler = StudentSamplerConfig(num_steps=3, rho=7.0)
    labels = np.arange(30) % 10
    seeds = [3, 4, 5, 6]
    one = [generate(model, params, sampler, labels, sd, batch=16) for sd in seeds]
    two = pipeline.run_jobs(
        lambda sd: generate(model, params, sampler, labels, sd, batch=16), seeds, 2
    )
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(one[0], one[1])


def test_teacher_set_kept_set_is_drawn_once_then_released(monkeypatch):
    from types import SimpleNamespace

    calls = []

    def fake_generate(model, params, sampler, labels, seed):
        calls.append(seed)
        return np.full((2, 4, 4, 1), float(seed) + 0.01 * len(calls), np.float32)

    monkeypatch.setattr(pipeline, "generate", fake_generate)
    cfg = SimpleNamespace(teacher=SimpleNamespace(sampler="teacher sampler"))
    ctx = pipeline.Context(
        cfg=cfg, out=None, data=None, model="m", reward_clf=None, eval_clf=None,
        evaluator=SimpleNamespace(labels=np.arange(2)),
    )  # fmt: skip
    first = pipeline.teacher_set(ctx, "params", 7, keep=True)  # teacher_eval.json
    assert calls == [7] and 7 in ctx.teacher_sets
    again = pipeline.teacher_set(ctx, "params", 7)  # the comparison takes the kept set
    np.testing.assert_array_equal(again, first)
    assert calls == [7] and not ctx.teacher_sets  # released: a set may be large
    other = pipeline.teacher_set(ctx, "params", 8)
    assert calls == [7, 8] and other[0, 0, 0, 0] > 8 and not ctx.teacher_sets
    third = pipeline.teacher_set(ctx, "params", 7)  # not kept: drawn again
    assert calls == [7, 8, 7] and not np.array_equal(third, first)
