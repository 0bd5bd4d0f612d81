"""Training on images: which calls get the student's dropout, the alternating schedule, and the
mid-stage checkpoints a crashed stage resumes from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gencast_rmmd.distill.student_sampler import StudentSamplerConfig
from gencast_rmmd.image import training
from gencast_rmmd.image.config import (
    FinetuneConfig,
    MMDConfig,
    OptimConfig,
    ScheduleConfig,
    UViTConfig,
)
from gencast_rmmd.image.data import ImageDataset
from gencast_rmmd.image.finetune import rmmd_objective_config
from gencast_rmmd.image.model import build_model
from gencast_rmmd.image.rewards import bw_reward
from gencast_rmmd.image.training import image_objective

SMALL = UViTConfig(channels=(8, 16), transformer_width=16, heads=2, embed_dim=16, mlp_ratio=2)
SAMPLER = StudentSamplerConfig(
    num_steps=2, max_noise_level=80.0, min_noise_level=0.03, rho=100.0, eta=1.0
)


def _model_and_params():
    """The small U-ViT with random (not zero-initialised) output layers, so dropout shows."""
    model = build_model(SMALL, ScheduleConfig(), (8, 8, 1), 10)
    params = model.init(jax.random.PRNGKey(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    noisy = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return model, jax.tree.unflatten(tree, noisy)


def test_dropout_reaches_only_the_students_gradient_call():
    """rmmd.md §2.2 / §2.8: x_hat = G_theta(x_t, t, xi) carries the dropout; the L2 anchor
    G_theta0 ("run without dropout noise") and the auxiliary denoiser do not. With theta =
    theta0 the L2 term is then the dropout's own effect, not 0."""
    model, p = _model_and_params()
    ocfg = rmmd_objective_config(FinetuneConfig(), 1.0, 0.01)  # on-policy, L2 anchor on
    objective = image_objective(model, SAMPLER, ocfg, bw_reward)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (6, 8, 8, 1)), jnp.float32)
    y = jnp.arange(6) % 10
    drop = jax.random.PRNGKey(5)
    params = {"student": p, "aux": p, "teacher": p, "student_frozen": p, "aux_frozen": p}
    batch = {"images": x, "labels": y, "dropout": drop}
    run = jax.jit(lambda pr, b, k: objective(pr, b, k, intermediates=True))
    _, metrics, inter = run(params, batch, jax.random.PRNGKey(3))
    x_t, s_t = inter["x_t"], inter["sigma_t"]
    denoise = jax.jit(model.denoise_fn)
    with_dropout = denoise(p, x_t, s_t, (y, drop))
    without = denoise(p, x_t, s_t, y)
    np.testing.assert_allclose(inter["x_hat"], with_dropout, atol=1e-5)
    assert float(jnp.max(jnp.abs(with_dropout - without))) > 1e-3  # dropout does act
    l2 = float(metrics["l2"])
    np.testing.assert_allclose(l2, float(jnp.mean((inter["x_hat"] - without) ** 2)), rtol=1e-4)
    assert l2 > 1e-6
    aux_plain = denoise(p, inter["x_s"], inter["sigma_s"], y)
    np.testing.assert_allclose(inter["aux_out"], aux_plain, atol=1e-5)
    # The on-policy chain that makes x_t samples without dropout: the same x_t with no rng.
    _, _, plain = run(params, {**batch, "dropout": None}, jax.random.PRNGKey(3))
    np.testing.assert_allclose(inter["x_t"], plain["x_t"], atol=1e-5)


def _tree_equal(a, b) -> bool:
    return all(bool(jnp.array_equal(u, v)) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _toy_objective(model, sampler_cfg, ocfg, reward_fn=None):
    """A quadratic stand-in for the phase-1 objective that reads the batch and the rng (so a
    resumed loop must restore both positions to match); compiles in no time."""

    def objective(params, batch, rng, student=True, aux=True):
        x = jnp.mean(batch["images"]) + 0.1 * jax.random.normal(rng)
        ls = jnp.sum((params["student"]["w"] - x - 1.0) ** 2)
        la = jnp.sum((params["aux"]["w"] + x + 2.0) ** 2)
        return ls * student + la * aux, {"moment_gap": ls}

    return objective


def test_alternating_mmd_moves_only_the_group_it_updates(monkeypatch):
    """update_schedule alternating (MMD Algorithm 2): step 0 updates the aux, step 1 the
    student, step 2 the aux. With Adam b1 = 0.9 a shared optimizer state would still move the
    other group by its momentum; each group's own state moves only the group it updates. (The
    loop of `train_mmd` on a quadratic stand-in for the objective: compiles in no time.)"""

    monkeypatch.setattr(training, "image_objective", _toy_objective)
    p = {"w": jnp.zeros(3)}
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32)
    labels = (np.arange(16) % 10).astype(np.int32)
    data = ImageDataset(images, labels, images[:4], labels[:4], 10, "toy")
    cfg = MMDConfig(
        sampler=SAMPLER,
        batch_size=8,
        optim=OptimConfig(learning_rate=0.1, b1=0.9, warmup_steps=0),
        update_schedule="alternating",
    )
    after = {n: training.train_mmd(cfg, None, p, data, steps=n, progress=False) for n in (1, 2, 3)}
    (s1, a1), (s2, a2), (s3, a3) = after[1], after[2], after[3]
    assert _tree_equal(s1, p) and not _tree_equal(a1, p)  # step 0: the aux only
    assert _tree_equal(a2, a1) and not _tree_equal(s2, s1)  # step 1: the student only
    assert _tree_equal(s3, s2) and not _tree_equal(a3, a2)  # step 2: the aux only


def test_a_cosine_student_grid_runs_the_objective_on_its_levels():
    """rmmd.md §2.5's ImageNet student grid (`grid: cosine`, configs/image/imagenet64.yaml): the
    phase-2 objective's on-policy chain and its draws of t use the cosine levels (1808 and 1 for
    K = 2: logSNR -15 and 0), and the loss is finite. The ImageNet config must name the
    schedule's cosine (a ConfigError otherwise); its floor is checked against the cosine grid."""
    from gencast_rmmd.config import load_config
    from gencast_rmmd.distill.student_sampler import noise_levels
    from gencast_rmmd.errors import ConfigError
    from gencast_rmmd.image.config import ImageConfig

    cos = StudentSamplerConfig(num_steps=2, grid="cosine", eta=1.0)
    levels = noise_levels(cos)
    np.testing.assert_allclose(levels, [np.exp(7.5), 1.0], rtol=1e-9)
    model, p = _model_and_params()
    ocfg = rmmd_objective_config(FinetuneConfig(on_policy="discrete", reg_ratio=0.0), 1.0, 0.01)
    objective = image_objective(model, cos, ocfg, bw_reward)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (6, 8, 8, 1)), jnp.float32)
    params = {"student": p, "aux": p, "teacher": p, "student_frozen": p, "aux_frozen": p}
    batch = {"images": x, "labels": jnp.arange(6) % 10, "dropout": None}
    run = jax.jit(lambda pr, b, k: objective(pr, b, k, intermediates=True))
    loss, _, inter = run(params, batch, jax.random.PRNGKey(3))
    assert np.isfinite(float(loss))
    s_t = np.asarray(inter["sigma_t"]).ravel()
    assert np.all(np.min(np.abs(s_t[:, None] / levels[None, :] - 1), axis=1) < 1e-5), s_t

    over = ["data.path=/x.npz"]
    cfg = load_config(ImageConfig, "imagenet64", over, kind="image")
    assert cfg.mmd.sampler.grid == "cosine"
    assert noise_levels(cfg.mmd.sampler)[-1] == pytest.approx(0.1993, rel=1e-3)
    with pytest.raises(ConfigError, match="mmd.sampler: a cosine grid must be the schedule's"):
        load_config(ImageConfig, "imagenet64", [*over, "schedule.shift=0.5"], kind="image")
    with pytest.raises(
        ConfigError,
        match=r"below the student's last noise level, 0.1993 "
        r"\(mmd.sampler.grid cosine at t = 1/K\): lower mmd.s_floor$",
    ):
        load_config(ImageConfig, "imagenet64", [*over, "mmd.s_floor=0.3"], kind="image")


class _Crash(Exception):
    pass


def _crash_after(monkeypatch, batches: int, module=training):
    """Make the batch iterator of `module`'s loops fail when asked for batch number `batches`
    (0-based, from where the loop starts): a crash in the middle of a stage."""
    real = getattr(module.batch_iterator, "unpatched", module.batch_iterator)

    def failing(*args, **kwargs):
        it = real(*args, **kwargs)
        for _ in range(batches):
            yield next(it)
        raise _Crash

    failing.unpatched = real
    monkeypatch.setattr(module, "batch_iterator", failing)
    return real


def _digits(n=24):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32)
    labels = (np.arange(n) % 10).astype(np.int32)
    return ImageDataset(images, labels, images[:4], labels[:4], 10, "toy")


@pytest.mark.slow  # three compilations of the U-ViT's training step, 40 s
def test_a_crashed_teacher_stage_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys):
    """`StageCheckpoints` (every step here): a teacher loop killed at step 4 of 7 resumes from
    its checkpoint on the same batches and keys and ends with exactly the parameters of a run
    that was never interrupted; metrics.jsonl reads as one run. A checkpoint made with other
    settings is set aside, not resumed. `finish` removes the checkpoints."""
    from gencast_rmmd.image.config import TeacherConfig

    model = build_model(SMALL, ScheduleConfig(), (8, 8, 1), 10)
    cfg = TeacherConfig(steps=7, batch_size=4, ema_decay=0.5)
    data = _digits()
    straight = training.train_teacher(cfg, model, data, progress=False)
    # the default 200-update warm-up does not end in 7 steps: said, as the weather trainers do
    assert capsys.readouterr().err == (
        "note: teacher.optim.warmup_steps (200) is not shorter than the run (7 updates): the "
        "learning rate rises only to 6e-05 of its 0.002\n"
    )
    d = tmp_path / "ckpt"

    def ckpts(settings):
        return training.StageCheckpoints(d, settings, every_s=0.0)

    metrics = tmp_path / "metrics.jsonl"
    real = _crash_after(monkeypatch, 4)
    try:
        training.train_teacher(
            cfg, model, data, metrics, progress=False, checkpoints=ckpts({"a": 1})
        )
        raise AssertionError("the loop should have crashed")
    except _Crash:
        pass
    assert training.latest_step(d) == 4
    _crash_after(monkeypatch, 3)  # the resumed loop may draw the batches of steps 4..6 only
    resumed = training.train_teacher(
        cfg, model, data, metrics, progress=False, checkpoints=ckpts({"a": 1})
    )
    assert _tree_equal(resumed, straight)
    assert [r["step"] for r in map(json.loads, metrics.read_text().splitlines())] == [0, 6]
    # The checkpoints left (the loop does not remove them; the pipeline does once the stage's
    # output is written) under other settings: a fresh start, said, with the fresh result.
    assert training.latest_step(d) == 6
    monkeypatch.setattr(training, "batch_iterator", real)
    other = ckpts({"a": 2})
    again = training.train_teacher(cfg, model, data, progress=False, checkpoints=other)
    assert (
        "checkpoint made with other settings; starting the stage afresh" in capsys.readouterr().err
    )
    assert _tree_equal(again, straight)
    other.finish()
    assert not d.exists()


def test_sigterm_stops_a_teacher_stage_with_a_checkpoint_and_it_resumes(tmp_path, monkeypatch):
    """SIGTERM inside an image loop (checkpoints every 1000 s here, so none is due): the loop
    saves a checkpoint at once and raises `StoppedBySignal`; the resumed stage ends with the
    parameters of an uninterrupted run."""
    import os
    import signal

    from gencast_rmmd.errors import StoppedBySignal
    from gencast_rmmd.image.config import TeacherConfig

    model = build_model(SMALL, ScheduleConfig(), (8, 8, 1), 10)
    cfg = TeacherConfig(steps=7, batch_size=4, ema_decay=0.5)
    data = _digits()
    straight = training.train_teacher(cfg, model, data, progress=False)
    d = tmp_path / "ckpt"
    real = training.batch_iterator

    def signalling(*args, **kwargs):
        it = real(*args, **kwargs)
        for i, b in enumerate(it):
            if i == 3:  # while the loop works on its 4th batch
                os.kill(os.getpid(), signal.SIGTERM)
            yield b

    monkeypatch.setattr(training, "batch_iterator", signalling)
    with pytest.raises(StoppedBySignal, match=r"ckpt: stopped by SIGTERM with checkpoint .*ckpt "
                       r"saved \(it resumes at step 4\)"):  # fmt: skip
        training.train_teacher(
            cfg, model, data, progress=False,
            checkpoints=training.StageCheckpoints(d, {"a": 1}, every_s=1000.0),
        )  # fmt: skip
    assert training.latest_step(d) == 4
    monkeypatch.setattr(training, "batch_iterator", real)
    resumed = training.train_teacher(
        cfg, model, data, progress=False,
        checkpoints=training.StageCheckpoints(d, {"a": 1}, every_s=1000.0),
    )  # fmt: skip
    assert _tree_equal(resumed, straight)


def test_a_crashed_mmd_stage_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """The same for phase 1 with an EMA student and the alternating schedule (two optimizer
    states, a step-dependent EMA decay; the objective a stand-in that reads batch and key): a
    crash after 3 of 6 steps, then a resume, gives the student and auxiliary of the
    uninterrupted run."""
    monkeypatch.setattr(training, "image_objective", _toy_objective)
    model, p = None, {"w": jnp.zeros(3)}
    data = _digits()
    cfg = MMDConfig(
        sampler=SAMPLER, batch_size=4, optim=OptimConfig(learning_rate=1e-3, warmup_steps=2),
        update_schedule="alternating", ema_decay=0.9,
    )  # fmt: skip
    straight = training.train_mmd(cfg, model, p, data, steps=6, progress=False)
    ck = lambda: training.StageCheckpoints(tmp_path / "c", {"k": 2}, every_s=0.0)  # noqa: E731
    _crash_after(monkeypatch, 3)
    try:
        training.train_mmd(cfg, model, p, data, steps=6, progress=False, checkpoints=ck())
        raise AssertionError("the loop should have crashed")
    except _Crash:
        pass
    assert training.latest_step(tmp_path / "c") == 3
    _crash_after(monkeypatch, 3)  # the resumed loop may draw the batches of steps 3..5 only
    resumed = training.train_mmd(cfg, model, p, data, steps=6, progress=False, checkpoints=ck())
    assert _tree_equal(resumed[0], straight[0]) and _tree_equal(resumed[1], straight[1])


def test_a_crashed_classifier_stage_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """The reward / evaluation classifiers (50 000 steps each on ImageNet 64): killed after 3
    of 7 steps, resumed, they end with the parameters of an uninterrupted run."""
    from gencast_rmmd.image import classifier
    from gencast_rmmd.image.config import ClassifierConfig

    data = _digits()
    cfg = ClassifierConfig(width=4, feature_dim=6, steps=7, batch_size=4)
    args = (cfg, data.train_images, data.train_labels, 10, 3)
    straight = classifier.train_classifier(*args, progress=False).params
    ck = lambda: training.StageCheckpoints(tmp_path / "c", {"seed": 3}, every_s=0.0)  # noqa: E731
    _crash_after(monkeypatch, 3, classifier)
    try:
        classifier.train_classifier(*args, progress=False, checkpoints=ck())
        raise AssertionError("the loop should have crashed")
    except _Crash:
        pass
    assert training.latest_step(tmp_path / "c") == 3
    _crash_after(monkeypatch, 4, classifier)  # the resumed loop may draw steps 3..6 only
    resumed = classifier.train_classifier(*args, progress=False, checkpoints=ck()).params
    assert _tree_equal(resumed, straight)


def test_a_crashed_finetune_run_resumes_to_the_uninterrupted_rows(tmp_path, monkeypatch):
    """One run of the sweep (10 000 steps on ImageNet 64): killed after 3 of 5 steps, resumed,
    it returns the rows of an uninterrupted run, the evaluations made before the checkpoint
    included (they come back with it). The evaluator here reads the student's parameters (a
    sum standing in for samples), so the rows follow the training state."""
    from gencast_rmmd.image import finetune
    from gencast_rmmd.image.rewards import bw_reward

    model, p = _model_and_params()
    start = finetune.StartPoint(student=p, aux=p, sampler=SAMPLER, s_floor=0.01)

    def fake_generate(model, params, sampler, labels, seed, noise_net=None):
        return sum(float(jnp.sum(leaf)) for leaf in jax.tree.leaves(params))

    class Evaluator:
        labels = np.arange(4) % 10
        distance_name = "frechet_classifier_distance"

        def evaluate(self, x):
            return {"frechet_classifier_distance": x, "accuracy": 0.5, "reward_bw": -x}

    monkeypatch.setattr(finetune, "generate", fake_generate)
    monkeypatch.setattr(
        finetune, "start_metrics",
        lambda model, start, ev, seed, cache=None: ev.evaluate(fake_generate(model, start.student, None, None, seed)),
    )  # fmt: skip
    kw = dict(
        model=model, teacher_params=p, start=start, reward=bw_reward, data=_digits(),
        cfg=FinetuneConfig(steps=5, batch_size=4), evaluator=Evaluator(), eval_every=2,
        step_cache={}, progress=False,
    )  # fmt: skip
    straight = finetune.finetune_run("draft", "bw", 1.0, **kw)
    assert [r["step"] for r in straight] == [0, 2, 4, 5]
    ck = lambda: training.StageCheckpoints(tmp_path / "c", {"run": 1}, every_s=0.0)  # noqa: E731
    _crash_after(monkeypatch, 3, finetune)
    try:
        finetune.finetune_run("draft", "bw", 1.0, checkpoints=ck(), **kw)
        raise AssertionError("the run should have crashed")
    except _Crash:
        pass
    assert training.latest_step(tmp_path / "c") == 4  # steps 1..3 done, step 4 next
    _crash_after(monkeypatch, 2, finetune)  # the resumed run may draw steps 4 and 5 only
    resumed = finetune.finetune_run("draft", "bw", 1.0, checkpoints=ck(), **kw)
    assert resumed == straight


@pytest.mark.slow  # four compilations of the U-ViT's gradient, 70 s on 2 cores
def test_accumulated_micro_batches_give_the_teachers_batch_gradient():
    """Gradient accumulation on the real U-ViT's v-prediction loss: with one micro-batch the
    step is the plain gradient (same key and batch, so equal to float rounding: XLA fuses the two
    programs differently); with two it is the mean of the halves' gradients, each drawn with its
    own `fold_in(key, i)`."""
    from gencast_rmmd.training.loop import accumulated_value_and_grad

    model, p = _model_and_params()
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    y = jnp.arange(4) % 10
    key = jax.random.PRNGKey(7)

    def grad_fn(params, mb, k):
        return jax.value_and_grad(model.vp_loss)(params, k, mb["images"], mb["labels"])

    def accumulated(batch, k):
        micro, keys = training.micro_batches(batch, k)
        return accumulated_value_and_grad(grad_fn, p, micro, keys)

    run = jax.jit(accumulated)
    dp = {a: training.DataParallel(4, a, "teacher.") for a in (1, 2)}
    plain = jax.jit(grad_fn)(p, {"images": x, "labels": y}, key)
    for a, b in zip(*(jax.tree.leaves(t) for t in (run(dp[1].batch(x, y), key), plain))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    loss2, g2 = run(dp[2].batch(x, y), key)
    halves = [
        jax.jit(grad_fn)(p, {"images": x[i * 2 : i * 2 + 2], "labels": y[i * 2 : i * 2 + 2]},
                         jax.random.fold_in(key, i))
        for i in (0, 1)
    ]  # fmt: skip
    np.testing.assert_allclose(loss2, (halves[0][0] + halves[1][0]) / 2, rtol=1e-6)
    for a, b, c in zip(*(jax.tree.leaves(t) for t in (g2, halves[0][1], halves[1][1]))):
        np.testing.assert_allclose(a, (b + c) / 2, rtol=1e-5, atol=1e-7)
    # the halves draw other noise than the whole batch: not the one-micro-batch gradient
    assert not np.allclose(jax.tree.leaves(g2)[0], jax.tree.leaves(plain[1])[0], rtol=1e-3)


def _per_example_objective(model, sampler_cfg, ocfg, reward_fn=None):
    """A stand-in objective that is a mean over examples and ignores its rng: a batch's loss and
    gradient are then the mean of its micro-batches' (accumulation must not change the step)."""

    def objective(params, batch, rng, student=True, aux=True, **kwargs):
        x = jnp.mean(batch["images"], axis=(1, 2, 3))[:, None]
        ls = jnp.mean(jnp.sum((params["student"]["w"] - x - 1.0) ** 2, axis=1))
        la = jnp.mean(jnp.sum((params["aux"]["w"] + x + 2.0) ** 2, axis=1))
        return ls * student + la * aux, {"moment_gap": ls}

    return objective


@pytest.mark.parametrize("schedule", ["simultaneous", "alternating"])
def test_mmd_with_gradient_accumulation_takes_the_full_batch_steps(monkeypatch, schedule):
    """`mmd.grad_accum_steps`: with a per-example loss, 4 micro-batches of 2 end where batches
    of 8 do, step by step; a batch it does not divide is refused at config load."""
    monkeypatch.setattr(training, "image_objective", _per_example_objective)
    p, data = {"w": jnp.zeros(3)}, _digits()
    out = {}
    for accum in (1, 4):
        cfg = MMDConfig(
            sampler=SAMPLER, batch_size=8, grad_accum_steps=accum, update_schedule=schedule,
            optim=OptimConfig(learning_rate=0.1, b1=0.9, warmup_steps=0),
        )  # fmt: skip
        out[accum] = training.train_mmd(cfg, None, p, data, steps=4, progress=False)
    for a, b in zip(jax.tree.leaves(out[1]), jax.tree.leaves(out[4])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not _tree_equal(out[4][0], p)  # it did train
    with pytest.raises(ValueError, match="grad_accum_steps: must be >= 1 and divide batch_size=8, "
                       "found 3"):  # fmt: skip
        MMDConfig(sampler=SAMPLER, batch_size=8, grad_accum_steps=3).validate()


def test_teacher_with_gradient_accumulation_takes_the_full_batch_steps():
    """`teacher.grad_accum_steps`, on a model whose v-loss is a per-example mean that ignores
    its key: 4 micro-batches end where the whole batches do (parameters and EMA)."""
    from gencast_rmmd.image.config import TeacherConfig

    class Quadratic:
        def init(self, key):
            return {"w": jnp.zeros(2)}

        def vp_loss(self, params, key, x, y):
            t = jnp.stack([jnp.mean(x, axis=(1, 2, 3)), y.astype(jnp.float32)], axis=1)
            return jnp.mean(jnp.sum((params["w"] - t) ** 2, axis=1))

    ema = {}
    for accum in (1, 4):
        cfg = TeacherConfig(
            steps=5, batch_size=8, grad_accum_steps=accum, ema_decay=0.5,
            optim=OptimConfig(learning_rate=0.1, warmup_steps=0),
        )  # fmt: skip
        ema[accum] = training.train_teacher(cfg, Quadratic(), _digits(), progress=False)
    np.testing.assert_allclose(ema[1]["w"], ema[4]["w"], rtol=1e-5)
    assert float(jnp.abs(ema[4]["w"]).max()) > 0.1  # it did train


def test_finetune_steps_with_gradient_accumulation_take_the_full_batch_step(monkeypatch):
    """`finetune.grad_accum_steps` in the RMMD step and the baselines' step (DRaFT here), each
    with a per-example stand-in loss: 4 micro-batches of 2 give the update of the batch of 8,
    the dropout key split per micro-batch along the way."""
    import types

    import optax

    from gencast_rmmd.image import finetune
    from gencast_rmmd.image.rewards import bw_reward

    def draft_loss(denoise, params, frozen, key, cond, shape, *args):
        labels = cond[0] if isinstance(cond, tuple) else cond
        loss = jnp.mean((params["w"] - labels.astype(jnp.float32)[:, None]) ** 2)
        return loss, {"reward": loss}

    monkeypatch.setattr(finetune, "image_objective", _per_example_objective)
    monkeypatch.setattr(finetune.baselines, "draft_loss", draft_loss)
    start = finetune.StartPoint(student=None, aux=None, sampler=SAMPLER, s_floor=0.01)
    model = types.SimpleNamespace(denoise_fn=None, teacher_denoise_fn=None)
    data = _digits()
    x, y = data.train_images[:8], data.train_labels[:8]
    opt = optax.sgd(0.1)
    trainable = {"student": {"w": jnp.ones(3)}, "aux": {"w": jnp.zeros(3)}}
    frozen = {"student_frozen": trainable["student"]}
    for make in (
        lambda cfg: finetune._rmmd_step(model, start, cfg, [bw_reward], opt),
        lambda cfg: finetune._baseline_step(model, "draft", start, cfg, [bw_reward], opt),
    ):
        new = {}
        for accum in (1, 4):
            step = make(FinetuneConfig(batch_size=8, grad_accum_steps=accum))
            batch = training.DataParallel(8, accum, "finetune.").batch(x, y, jax.random.PRNGKey(4))
            new[accum], _, _, _ = step(
                trainable, frozen, opt.init(trainable), batch, jax.random.PRNGKey(0), 1.0, 0
            )
        for a, b in zip(jax.tree.leaves(new[1]), jax.tree.leaves(new[4])):
            np.testing.assert_allclose(a, b, rtol=1e-6)
        assert not _tree_equal(new[4], trainable)


_DEVICES_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {testdir!r})
    import test_image_training as t
    from gencast_rmmd.image import training
    from gencast_rmmd.image.config import MMDConfig, OptimConfig, TeacherConfig
    from gencast_rmmd.image.evaluation import generate
    from gencast_rmmd.image.model import build_model
    from gencast_rmmd.image.config import ScheduleConfig

    data = t._digits()
    dp = training.DataParallel(4, 2, "teacher.")
    b = dp.batch(data.train_images[:4], data.train_labels[:4])
    shards = len(b["images"].sharding.device_set), b["images"].sharding.spec
    model = build_model(t.SMALL, ScheduleConfig(), (8, 8, 1), 10)
    # Adam's eps 1: an update in proportion to the gradient, so the float rounding of a tiny
    # gradient cannot flip the sign of a whole step (as eps 1e-12 lets it)
    cfg = TeacherConfig(steps=3, batch_size=4, grad_accum_steps=2, ema_decay=0.5,
                        optim=OptimConfig(learning_rate=0.03, eps=1.0, warmup_steps=0))
    ema = training.train_teacher(cfg, model, data, progress=False)
    samples = generate(model, ema, t.SAMPLER, np.arange(4) % 10, seed=0, batch=4)
    training.image_objective = t._per_example_objective
    mcfg = MMDConfig(sampler=t.SAMPLER, batch_size=8, grad_accum_steps=2,
                     optim=OptimConfig(learning_rate=0.1, warmup_steps=0))
    student, aux = training.train_mmd(mcfg, None, {{"w": jnp.zeros(3)}}, data, steps=3,
                                      progress=False)
    print(json.dumps({{
        "n": jax.device_count(), "devices": shards[0], "spec": list(shards[1]),
        "ema_devices": len(jax.tree.leaves(ema)[0].sharding.device_set),
        "ema": [np.asarray(x).ravel()[:64].tolist() for x in jax.tree.leaves(ema)],
        "samples": np.asarray(samples).ravel().tolist(),
        "mmd": [np.asarray(x).tolist() for x in jax.tree.leaves((student, aux))],
    }}))
    """
)


def _run_on_devices(n: int, env: dict) -> dict:
    code = _DEVICES_SCRIPT.format(testdir=os.path.dirname(__file__))
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two processes compile the U-ViT's teacher step and sampler, 60 s
def test_image_loops_on_two_devices_match_one_device(host_devices_env):
    """`DataParallel`: on 2 devices each micro-batch is split over both (axis 1 of
    `[A, B / A, ...]`), the parameters stay replicated, and the teacher (the U-ViT, 3 steps of 2
    micro-batches), its samples (the batch split over the devices) and phase 1 (a stand-in
    objective) end where one device ends, to float rounding."""
    one, two = _run_on_devices(1, host_devices_env(1)), _run_on_devices(2, host_devices_env(2))
    assert (one["n"], two["n"]) == (1, 2)
    assert (two["devices"], two["ema_devices"]) == (2, 2)
    assert two["spec"] == [None, "data"]
    for key, tol in (("ema", 1e-5), ("samples", 1e-5), ("mmd", 1e-5)):
        for a, b in zip(one[key], two[key]):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=tol, atol=tol)
    assert np.asarray(one["samples"]).std() > 0.01  # samples, not zeros (the teacher is young)


def test_a_micro_batch_the_devices_do_not_divide_is_refused_naming_the_keys():
    """Before an image run writes anything (`pipeline.make_context`): micro-batches of 2 on 4
    devices is one `ConfigError` naming the stage's keys and an accumulation that works."""
    from gencast_rmmd.errors import ConfigError
    from gencast_rmmd.image.config import ImageConfig, TeacherConfig

    cfg = ImageConfig(teacher=TeacherConfig(batch_size=8, grad_accum_steps=4))
    training.check_devices(cfg, 1)
    with pytest.raises(ConfigError) as e:
        training.check_devices(cfg, 4)
    msg = str(e.value)
    assert "teacher.batch_size 8 / teacher.grad_accum_steps 4 gives micro-batches of 2" in msg
    assert "--set teacher.grad_accum_steps=2" in msg


def test_a_command_checks_the_micro_batches_of_the_trainers_it_runs_only():
    """`image teacher` does not refuse phase 2's micro-batches (it never trains phase 2);
    `image pareto` does (`pipeline.COMMAND_STAGES`)."""
    from gencast_rmmd.errors import ConfigError
    from gencast_rmmd.image.config import FinetuneConfig, ImageConfig
    from gencast_rmmd.image.pipeline import COMMAND_STAGES

    cfg = ImageConfig(finetune=FinetuneConfig(batch_size=8, grad_accum_steps=4))
    for command in ("teacher", "distill"):
        training.check_devices(cfg, 4, COMMAND_STAGES[command])
    with pytest.raises(ConfigError, match="finetune.batch_size 8 / finetune.grad_accum_steps 4"):
        training.check_devices(cfg, 4, COMMAND_STAGES["pareto"])


_PADDED_SAMPLING_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {testdir!r})
    import test_image_training as t
    from gencast_rmmd.image import evaluation, training
    from gencast_rmmd.image.config import ScheduleConfig
    from gencast_rmmd.image.evaluation import generate
    from gencast_rmmd.image.model import build_model

    calls, real = [], evaluation._sampler

    def spy(*a):  # records each sampler call's labels: their shape and devices
        fn = real(*a)

        def call(p, rng, y):
            calls.append([y.shape[0], len(y.sharding.device_set)])
            return fn(p, rng, y)

        return call

    evaluation._sampler = spy
    model = build_model(t.SMALL, ScheduleConfig(), (8, 8, 1), 10)
    params = model.init(jax.random.PRNGKey(0))
    labels = np.arange(7) % 10
    one = generate(model, params, t.SAMPLER, labels, seed=3, batch=4)
    spread = training.DataParallel(3, 1, "teacher.").put(params)
    three = generate(model, spread, t.SAMPLER, labels, seed=3, batch=4)
    print(json.dumps({{"n": jax.device_count(), "one": one.ravel().tolist(),
                       "three": three.ravel().tolist(), "shape": list(three.shape),
                       "calls": calls}}))
    """
)


def test_samples_on_devices_that_do_not_divide_the_batch_are_one_devices(host_devices_env):
    """`evaluation.generate` with parameters replicated on 3 devices and sampling batches of 4
    (7 labels: batches of 4 and 3): each batch is padded to 6 and split over the devices, and the
    7 samples kept are one device's, to float rounding (the noise is drawn per element)."""
    code = _PADDED_SAMPLING_SCRIPT.format(testdir=os.path.dirname(__file__))
    res = subprocess.run(
        [sys.executable, "-c", code], env=host_devices_env(3), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["n"] == 3 and out["shape"] == [7, 8, 8, 1]
    assert out["calls"] == [[4, 1], [4, 1], [6, 3], [6, 3]]  # one device; then padded, split
    np.testing.assert_allclose(out["three"], out["one"], rtol=1e-5, atol=1e-5)
    assert np.std(out["one"]) > 0.01
