"""Pareto bookkeeping (fronts, dominance, CSV schema) and the image configs."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from gencast_rmmd.config import load_config
from gencast_rmmd.errors import ConfigError
from gencast_rmmd.image import pipeline
from gencast_rmmd.image.config import ImageConfig
from gencast_rmmd.safety import file_sha256


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


@pytest.mark.parametrize(
    "override, message",
    [
        # each was accepted and failed later (an optax error after the config was written, or a
        # sweep with no run, or a reward minimised by a negative lambda)
        ("classifier.steps=0", r"classifier: steps must be >= 1, found 0"),
        ("finetune.batch_size=0", r"finetune: batch_size must be >= 1, found 0"),
        ("pareto.eval_samples=0", r"pareto: eval_samples must be >= 1, found 0"),
        ("teacher.ema_decay=1", r"teacher: ema_decay must be in \[0, 1\), found 1.0"),
        ("mmd.optim.learning_rate=0", r"mmd.optim: learning_rate must be finite and > 0"),
        (
            "classifier.learning_rate=nan",
            r"'classifier.learning_rate': expected a number, found NaN",
        ),
        ("classifier.learning_rate=inf", r"'classifier.learning_rate': expected a finite number"),
        ("finetune.draft_l2=-2", r"finetune: draft_l2 must be >= 0, found -2.0"),
        ("pareto.methods=[]", r"needs at least one method and one reward, found methods \[\]"),
        ("pareto.lambdas.bw=[-1]", r"lambdas.bw: lambdas must be finite and >= 0, found -1.0"),
        (
            "pareto.method_lambdas={draft: {bw: [.nan]}}",
            r"'pareto.method_lambdas.draft.bw\[0\]': expected a number, found NaN",
        ),
        ("pareto.methods=[hypernoise]", r"reward 'bw' gets no run: every method's lambda list"),
    ],
)
def test_config_ranges_are_checked_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ImageConfig, "digits", [override], kind="image")


def test_an_empty_method_lambdas_list_skips_that_method():
    """digits.yaml runs HyperNoise on the classifier reward only (empty lists for bw/laplacian)."""
    cfg = load_config(ImageConfig, "digits", kind="image").pareto
    assert cfg.lambdas_for("hypernoise", "bw") == () and cfg.lambdas_for("hypernoise", "classifier")


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
    from gencast_rmmd.image.training import mmd_optimizers

    params = {"student": {"w": jnp.ones(3)}, "aux": {"w": jnp.ones(3)}}
    grads = {
        "student": {"w": jnp.array([0.5, -2.0, 1.0])},
        "aux": {"w": jnp.array([0.5, -2.0, 1.0])},
    }
    base = MMDConfig(optim=OptimConfig(learning_rate=1e-3, warmup_steps=0, grad_clip=0.0))
    for ratio in (1.0, 4.0):
        (opt,) = mmd_optimizers(dataclasses.replace(base, aux_lr_ratio=ratio), steps=10).values()
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

    def fake_generate(model, params, sampler, labels, seed, noise_net=None):
        calls.append(seed)
        return np.full((2, 4, 4, 1), float(seed) + 0.01 * len(calls), np.float32)

    monkeypatch.setattr(pipeline, "generate", fake_generate)
    cfg = SimpleNamespace(teacher=SimpleNamespace(sampler="teacher sampler"))
    evaluator = SimpleNamespace(labels=np.arange(2), evaluate_set=lambda x: float(x[0, 0, 0, 0]))
    ctx = pipeline.Context(
        cfg=cfg, out=None, data=None, model="m", reward_clf=None, eval_clf=None,
        evaluator=evaluator,
    )  # fmt: skip
    first = pipeline.teacher_set_eval(ctx, "params", 7, keep=True)  # teacher_eval.json
    assert calls == [7] and 7 in ctx.teacher_sets
    again = pipeline.teacher_set_eval(ctx, "params", 7)  # the comparison takes the kept set
    assert again == first
    assert calls == [7] and not ctx.teacher_sets  # released
    other = pipeline.teacher_set_eval(ctx, "params", 8)
    assert calls == [7, 8] and other > 8 and not ctx.teacher_sets
    third = pipeline.teacher_set_eval(ctx, "params", 7)  # not kept: drawn again
    assert calls == [7, 8, 7] and third != first


def test_dominance_is_strict_a_shared_point_is_not_dominated():
    """A tie dominates nothing: every front holds the start point shared by all methods, so a
    baseline that never moved is not dominated by RMMD's copy of it (nor is a front of ties)."""
    start = (1.91, -0.137)
    assert pipeline.dominance([start, (2.48, -0.105)], [start]) == 0.0
    assert pipeline.dominance([start], [(1.95, -0.137)]) == 1.0  # same reward, farther
    assert pipeline.dominance([start], [(1.91, -0.140)]) == 1.0  # same distance, lower reward
    pts = [(1.0, 0.1), (2.0, 0.5), (1.5, 0.05), (3.0, 0.4), (2.0, 0.6), (1.0, 0.1)]
    for b in pts:  # brute force: as good in both, strictly better in one
        want = any(a[0] <= b[0] and a[1] >= b[1] and a != b for a in pts)
        assert pipeline.dominance(pts, [b]) == float(want)
    rows = [
        {"method": m, "reward": "bw", "distance": start[0], "reward_value": start[1]}
        for m in ("rmmd", "draft", "refl")
    ]
    s = pipeline.summarize(rows, ("rmmd", "draft", "refl"), ("bw",))
    assert s["rewards"]["bw"]["rmmd_dominates_refl_share"] == 0.0
    assert s["rewards"]["bw"]["rmmd_dominates_draft_and_refl"] is False
    assert s["rewards_where_rmmd_dominates_draft_and_refl"] == 0


def test_s_floor_checked_at_config_load_and_kept_by_phase_2():
    """`mmd.s_floor` must lie below the student's last level, checked when the config loads
    (before any training); phase 2 uses the phase-1 floor, not a fixed 0.01."""
    from gencast_rmmd.image.config import ScheduleConfig, UViTConfig
    from gencast_rmmd.image.finetune import StartPoint, rmmd_objective_config
    from gencast_rmmd.image.model import build_model
    from gencast_rmmd.image.rewards import bw_reward
    from gencast_rmmd.image.training import image_objective

    with pytest.raises(
        ConfigError, match=r"mmd.s_floor 0.01 must be below .*mmd.sampler.min_noise_level 0.01"
    ):
        load_config(ImageConfig, "digits", ["mmd.sampler.min_noise_level=0.01"], kind="image")
    with pytest.raises(ConfigError, match=r"s_floor: must be > 0, found 0.0"):
        load_config(ImageConfig, "digits", ["mmd.s_floor=0.0"], kind="image")
    with pytest.raises(ConfigError, match="lower mmd.s_floor or raise mmd.sampler.max_noise"):
        load_config(
            ImageConfig, "digits", ["mmd.sampler.num_steps=1", "mmd.s_floor=90"], kind="image"
        )
    cfg = load_config(
        ImageConfig,
        "digits",
        ["mmd.sampler.min_noise_level=0.01", "mmd.s_floor=0.005"],
        kind="image",
    )
    start = StartPoint(student=None, aux=None, sampler=cfg.mmd.sampler, s_floor=cfg.mmd.s_floor)
    ocfg = rmmd_objective_config(cfg.finetune, 1.0, start.s_floor)
    assert ocfg.s_floor == 0.005
    model = build_model(
        UViTConfig(channels=(8, 16), transformer_width=16, heads=2, embed_dim=16),
        ScheduleConfig(),
        (8, 8, 1),
        10,
    )
    image_objective(model, start.sampler, ocfg, bw_reward)  # builds: the floor is below 0.01


def _stub_run(tmp_path, monkeypatch, overrides=()):
    """A run directory whose stages run for real except the heavy parts: training (teacher and
    phase 1), sampling and fine-tuning are stubs that record their calls; the evaluator is real,
    on a linear 'classifier'. Returns (ctx, calls, alive) where `alive` holds weak references to
    every sample set drawn."""
    import types
    import weakref

    import jax
    import jax.numpy as jnp

    from gencast_rmmd.image.classifier import Classifier
    from gencast_rmmd.image.evaluation import Evaluator
    from gencast_rmmd.image.rewards import make_reward

    over = [
        "pareto.methods=[rmmd, draft, dipp]", "pareto.rewards=[bw]", "pareto.lambdas.bw=[0.1]",
        "pareto.method_lambdas={}", "pareto.distill_eval_sets=3", "pareto.workers=1",
        *overrides,
    ]  # fmt: skip
    cfg = load_config(ImageConfig, "digits", over, kind="image")
    calls = {"teacher": 0, "mmd": [], "generate": [], "finetune": []}
    alive = []

    def train_teacher(cfg_, model, data, metrics_path=None, progress=True, checkpoints=None):
        calls["teacher"] += 1
        return model.init(jax.random.PRNGKey(0))

    def train_mmd(cfg_, model, teacher, data, steps=None, **kw):
        calls["mmd"].append(cfg_.sampler.num_steps)
        return jax.tree.map(lambda p: p + 1.0, teacher), teacher

    def generate(model, params, sampler, labels, seed, noise_net=None, **kw):
        calls["generate"].append(seed)
        rng = np.random.default_rng([seed, sampler.num_steps])
        x = rng.normal(size=(labels.shape[0], 4, 4, 1)).astype(np.float32)
        x += np.float32(np.asarray(params["w"])[0])
        alive.append(weakref.ref(x))
        return x

    def finetune_run(method, reward_name, lam, *, cfg, **kw):
        calls["finetune"].append((method, reward_name, lam))
        return [
            {"method": method, "reward": reward_name, "lambda": float(lam), "step": s,
             "distance": 1.0 + lam + s, "reward_value": -lam, "accuracy": 1.0}
            for s in (0, cfg.steps)
        ]  # fmt: skip

    def start_metrics(model, start, evaluator, seed, cache=None):
        return {"frechet_classifier_distance": 1.0, "accuracy": 1.0, "reward_bw": -0.2}

    for name, fn in [("train_teacher", train_teacher), ("train_mmd", train_mmd),
                     ("generate", generate), ("finetune_run", finetune_run),
                     ("start_metrics", start_metrics)]:  # fmt: skip
        monkeypatch.setattr(pipeline, name, fn)
    w = np.random.default_rng(2).normal(size=(16, 5)).astype(np.float32)

    def apply(params, x):
        f = jnp.reshape(x, (x.shape[0], -1)) @ params
        return f, f[:, :3]

    ref = np.random.default_rng(3).normal(size=(400, 4, 4, 1)).astype(np.float32)
    evaluator = Evaluator(
        Classifier(params=jnp.asarray(w), apply=apply), ref, np.zeros(50, np.int64),
        rewards={"bw": make_reward("bw")},
    )  # fmt: skip
    for name in ("classifier_eval.npz", "classifier_reward.npz"):  # only their bytes matter
        (tmp_path / name).write_bytes(name.encode())
    model = types.SimpleNamespace(init=lambda rng: {"w": jax.random.normal(rng, (3,))})
    ctx = pipeline.Context(
        cfg=cfg, out=tmp_path, data=None, model=model, reward_clf=None, eval_clf=None,
        evaluator=evaluator, progress=False,
    )  # fmt: skip
    return ctx, calls, alive


def test_distill_reuses_its_evaluation_when_made_from_the_current_files(tmp_path, monkeypatch):
    ctx, calls, _ = _stub_run(tmp_path, monkeypatch)
    first = pipeline.stage_distill(ctx)
    assert calls["teacher"] == 1 and calls["mmd"] == [8]
    n_sets = len(calls["generate"])
    assert n_sets == 3 + 3 + 3  # teacher, student, teacher with the student's sampler
    text = (tmp_path / "distill_eval.json").read_text()
    again = pipeline.stage_distill(ctx)  # nothing is trained, sampled or written again
    assert calls["teacher"] == 1 and calls["mmd"] == [8] and len(calls["generate"]) == n_sets
    assert again == first and (tmp_path / "distill_eval.json").read_text() == text
    files = ("teacher", "student_k8", "classifier_eval", "classifier_reward")
    assert first["inputs"] == {f"{n}_sha256": file_sha256(tmp_path / f"{n}.npz") for n in files}
    # an incomplete record (other sample sets) is made again
    ctx.cfg = load_config(
        ImageConfig, "digits", ["pareto.distill_eval_sets=2", "pareto.workers=1"], kind="image"
    )
    assert pipeline.stage_distill(ctx)["seeds"] == [7, 8]
    assert len(calls["generate"]) == n_sets + 2 + 2 + 2 and calls["mmd"] == [8]


def test_a_new_teacher_redoes_every_output_made_from_the_old_one(tmp_path, monkeypatch):
    import json

    from gencast_rmmd.image.training import load_params, save_params

    ctx, calls, _ = _stub_run(tmp_path, monkeypatch)
    pipeline.stage_pareto(ctx)
    assert calls["mmd"] == [8, 1] and len(calls["finetune"]) == 3
    pipeline.stage_pareto(ctx)  # a rerun redoes nothing
    assert calls["mmd"] == [8, 1] and len(calls["finetune"]) == 3
    n_generate = len(calls["generate"])
    # a retrained teacher at the same path: other parameters
    teacher, _ = load_params(tmp_path / "teacher.npz", {"w": np.zeros(3, np.float32)})
    save_params(tmp_path / "teacher.npz", {"w": teacher["w"] + 5.0})
    new = file_sha256(tmp_path / "teacher.npz")
    pipeline.stage_pareto(ctx)
    assert calls["teacher"] == 1  # the teacher itself is reused
    assert calls["mmd"] == [8, 1, 8, 1]  # both students distilled again from it
    assert len(calls["finetune"]) == 6  # and every sweep run made again
    assert len(calls["generate"]) > n_generate
    for name in ("teacher_eval.json", "distill_eval.json"):
        assert json.loads((tmp_path / name).read_text())["inputs"]["teacher_sha256"] == new
    refs = json.loads((tmp_path / "pareto_refs.json").read_text())
    assert refs["teacher"]["inputs"]["teacher_sha256"] == new
    assert refs["mmd"]["inputs"]["student_k8_sha256"] == file_sha256(tmp_path / "student_k8.npz")
    rows = [json.loads(x) for x in (tmp_path / "pareto_rows.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["inputs"]["teacher_sha256"] == new for r in rows)
    for k in (8, 1):
        _, meta = load_params(tmp_path / f"student_k{k}.npz", {"w": np.zeros(3)})
        assert meta["teacher_sha256"] == new


def test_distill_evaluation_holds_one_sample_set_at_a_time(tmp_path, monkeypatch):
    """The comparison pools 3 x 3 sets here (ImageNet 64: 72 sets of 10,000 images, ~35 GB):
    each set is scored as it is drawn and only its features are kept."""
    import gc

    ctx, calls, alive = _stub_run(tmp_path, monkeypatch)
    most = []
    real = pipeline.generate

    def counting(*a, **kw):
        gc.collect()
        most.append(sum(r() is not None for r in alive))
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "generate", counting)
    pipeline.stage_distill(ctx)
    assert len(calls["generate"]) == 9
    assert max(most) == 0  # (one job at a time: the previous set is gone when the next is drawn)


def test_a_rerun_with_other_settings_is_refused_where_their_outputs_exist(tmp_path):
    """Stages reuse their files as they are: a re-run whose settings differ where an output
    exists is refused, naming the change and the files (it used to overwrite config.yaml with
    settings the files were not made with and reuse them, with a log note). Settings that only
    widen the sweep, or whose outputs exist not yet, may change."""
    import yaml

    from gencast_rmmd.config import dump_yaml, to_dict
    from gencast_rmmd.errors import OutputError

    old = load_config(ImageConfig, "digits", kind="image")
    text = dump_yaml(old)

    def check(*over):
        cfg = load_config(ImageConfig, "digits", list(over), kind="image")
        pipeline._refuse_other_settings(tmp_path, text, cfg)

    check("teacher.steps=10")  # nothing made yet
    (tmp_path / "teacher.npz").write_bytes(b"x")
    with pytest.raises(OutputError, match=r"teacher.steps: 1500 -> 10 \(made: teacher.npz\)"):
        check("teacher.steps=10")
    with pytest.raises(OutputError, match=r"data.seed: 0 -> 1 \(made: teacher.npz\)"):
        check("data.seed=1")
    check("mmd.steps=10", "teacher.sampler.num_steps=32")  # their outputs are not there yet
    (tmp_path / "student_k8.npz").write_bytes(b"x")
    (tmp_path / "teacher_eval.json").write_text("{}")
    with pytest.raises(OutputError, match=r"mmd.steps: 800 -> 10 \(made: student_k8.npz\)"):
        check("mmd.steps=10")
    with pytest.raises(OutputError, match=r"num_steps: 64 -> 32 \(made: teacher_eval.json\)"):
        check("teacher.sampler.num_steps=32")
    check("pareto.lambdas.bw=[0.1, 1.0, 3.0]", "pareto.workers=1", "pareto.methods=[rmmd]")
    # A run made before a key existed (its config.yaml lacks it) resumes with the key at its
    # default; another value is a change, named with the default (was: a change None -> 0).
    saved = to_dict(old)
    del saved["data"]["seed"]
    text = yaml.safe_dump(saved)
    check()
    with pytest.raises(OutputError, match=r"data.seed: 0 -> 1 \(made: student_k8.npz, teacher"):
        check("data.seed=1")
    saved["data"]["batch_noise"] = 1  # a key removed since: the saved dict is compared as it is
    text = yaml.safe_dump(saved)
    with pytest.raises(OutputError, match=r"data.batch_noise: 1 -> None"):
        check()
    text = "teacher: [unclosed"
    with pytest.raises(OutputError, match=r"config.yaml is not a readable config"):
        check()
