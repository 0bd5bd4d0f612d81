"""Tests of the shared training loop: learning, accumulation, resume, NaN guard, sharding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gencast_rmmd.config import to_dict
from gencast_rmmd.errors import ConfigError, StoppedBySignal, TrainingDivergedError
from gencast_rmmd.training import (
    LoopConfig,
    OptimizerConfig,
    ShuffledBatches,
    Trainer,
    UpdateRule,
    make_optimizer,
    make_schedule,
    read_metrics,
)
from gencast_rmmd.training.loop import optimizer_resume_key, warmup_note

D = 3


class _Source:
    """y = x @ w_true + 0.5 + noise; 64 examples."""

    def __init__(self, n=64, seed=0):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, D)).astype(np.float32)
        self.w = np.array([1.0, -2.0, 0.5], np.float32)
        self.y = (self.x @ self.w + 0.5 + 0.01 * rng.normal(size=n)).astype(np.float32)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _loss(params, batch, rng):
    p = params["lin"]
    # a little rng use so that the rng stream matters for exact resume
    jitter = 1e-3 * jax.random.normal(rng, batch["y"].shape)
    pred = batch["x"] @ p["w"] + p["b"] + params["frozen_shift"]["c"] + jitter
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"mae": jnp.mean(jnp.abs(pred - batch["y"]))}


def _init():
    return {"lin": {"w": jnp.zeros(D), "b": jnp.zeros(())}}


FROZEN = {"frozen_shift": {"c": jnp.asarray(0.0)}}


def _trainer(
    tmp_path, num_steps=40, accum=1, batch=16, ckpt=10, lr=0.05, loss=_loss, log_every=5, **kw
):
    cfg = LoopConfig(
        num_steps=num_steps,
        batch_size=batch,
        grad_accum_steps=accum,
        checkpoint_every=ckpt,
        log_every=log_every,
        progress=False,
    )
    ocfg = OptimizerConfig(learning_rate=lr, schedule="cosine", warmup_steps=3)
    return Trainer(
        {"fit": UpdateRule(loss, ("lin",))},
        {"lin": make_optimizer(ocfg, num_steps)},
        cfg,
        tmp_path,
        schedules={"lin": make_schedule(ocfg, num_steps)},
        meta={"provenance": {"teacher": "none"}},
        **kw,
    )


def test_trainer_learns_and_logs(tmp_path):
    tr = _trainer(tmp_path, num_steps=150, ckpt=50)
    state = tr.restore_or_init(_init())
    state = tr.fit(state, FROZEN, ShuffledBatches(_Source(), 16, seed=1))
    w = np.asarray(state["params"]["lin"]["w"])
    np.testing.assert_allclose(w, _Source().w, atol=0.05)
    assert abs(float(state["params"]["lin"]["b"]) - 0.5) < 0.05
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(5, 151, 5))
    assert recs[-1]["loss"] < 0.1 * recs[0]["loss"]
    for key in ("mae", "grad_norm/lin", "update_norm/lin", "steps_per_sec", "lr/lin"):
        assert key in recs[-1]
    assert tr.ckpt.all_steps()[-1] == 150
    assert tr.ckpt.read_meta()["provenance"] == {"teacher": "none"}


def test_logged_learning_rate_is_the_one_applied(tmp_path):
    # Warm-up from 0 over 3 updates: the first update is applied at rate 0 (no change), and each
    # record's `lr/lin` is the rate its own update ran at, not the next one's.
    tr = _trainer(tmp_path / "a", num_steps=5, ckpt=5, log_every=1)
    state = tr.restore_or_init(_init())
    w0 = np.asarray(state["params"]["lin"]["w"]).copy()
    state = tr.fit(state, FROZEN, ShuffledBatches(_Source(), 16, seed=1), stop_after=1)
    np.testing.assert_array_equal(np.asarray(state["params"]["lin"]["w"]), w0)

    tr = _trainer(tmp_path / "b", num_steps=5, ckpt=5, log_every=1)
    tr.fit(tr.restore_or_init(_init()), FROZEN, ShuffledBatches(_Source(), 16, seed=1))
    recs = read_metrics(tmp_path / "b" / "metrics.jsonl")
    sched = make_schedule(OptimizerConfig(learning_rate=0.05, schedule="cosine", warmup_steps=3), 5)
    assert recs[0]["lr/lin"] == 0.0 and recs[0]["update_norm/lin"] == 0.0
    np.testing.assert_allclose([r["lr/lin"] for r in recs], [sched(n) for n in range(5)], rtol=1e-6)
    assert all(r["update_norm/lin"] > 0 for r in recs[1:])


def test_a_warmup_longer_than_the_run_is_said():
    """A warm-up that does not end within the run (a short run with a config's 100-update
    warm-up) trained at a fraction of the learning rate without a word; `warmup_note` gives the
    line the teacher and distillation print, with the last update's rate (the schedule's own)."""
    cfg = OptimizerConfig(learning_rate=1e-3, schedule="cosine", warmup_steps=100)
    note = warmup_note(cfg, 20, "training.optimizer")
    top = float(make_schedule(cfg, 20)(19))
    assert note == (
        "note: training.optimizer.warmup_steps (100) is not shorter than the run (20 updates): "
        f"the learning rate rises only to {top:.3g} of its 0.001"
    )
    assert top == pytest.approx(1.9e-4)
    assert warmup_note(cfg, 100, "x") is not None  # the 100th update runs at 99% of the rate
    assert warmup_note(cfg, 101, "x") is None
    assert warmup_note(OptimizerConfig(learning_rate=1e-3), 5, "x") is None  # no warm-up
    # one update: the warm-up's first rate is 0 (it printed "rises only to 0 of its 0.001")
    assert float(make_schedule(cfg, 1)(0)) == 0.0
    assert warmup_note(cfg, 1, "x").endswith(
        "its one update has learning rate 0 and leaves the weights as they are"
    )


def _assert_same_run(s_full, s2, run_a, run_b):
    """The resumed run `s2` (run dir `run_b`) ended with the uninterrupted run's state `s_full`
    (run dir `run_a`), and its metrics file reads as if uninterrupted. Returns the records."""
    for a, b in zip(jax.tree.leaves(s_full), jax.tree.leaves(s2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ra = read_metrics(run_a / "metrics.jsonl")
    rb = read_metrics(run_b / "metrics.jsonl")
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    return ra


def test_resume_is_exact(tmp_path):
    src = _Source()
    full = _trainer(tmp_path / "a", num_steps=23, ckpt=5)
    s_full = full.fit(full.restore_or_init(_init()), FROZEN, ShuffledBatches(src, 16, seed=3))

    crash = _trainer(tmp_path / "b", num_steps=23, ckpt=5)
    s = crash.fit(
        crash.restore_or_init(_init()), FROZEN, ShuffledBatches(src, 16, seed=3), stop_after=13
    )
    assert crash.step_of(s) == 13 and crash.ckpt.latest_step() == 10
    resumed = _trainer(tmp_path / "b", num_steps=23, ckpt=5)
    s2 = resumed.restore_or_init(_init())
    assert resumed.step_of(s2) == 10
    s2 = resumed.fit(s2, FROZEN, ShuffledBatches(src, 16, seed=3))
    # records of steps 11-13 were rewritten once
    _assert_same_run(s_full, s2, tmp_path / "a", tmp_path / "b")


def test_gradient_accumulation_matches_full_batch(tmp_path):
    src = _Source()

    def loss_no_rng(params, batch, rng):
        p = params["lin"]
        pred = batch["x"] @ p["w"] + p["b"]
        return jnp.mean((pred - batch["y"]) ** 2), {}

    states = []
    for accum in (1, 4):
        tr = _trainer(tmp_path / f"acc{accum}", num_steps=6, accum=accum, loss=loss_no_rng)
        states.append(tr.fit(tr.restore_or_init(_init()), FROZEN, ShuffledBatches(src, 16)))
    for a, b in zip(jax.tree.leaves(states[0]["params"]), jax.tree.leaves(states[1]["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_accumulated_micro_batches_run_one_at_a_time():
    """`accumulated_value_and_grad` must hold one micro-batch's activations, not all of them:
    XLA's memory analysis of the compiled step (static, no run) of an 8-layer MLP on 4096
    examples. With micro-batch 0 outside the scan, XLA inlined the one-trip loop of two
    micro-batches and ran both side by side: 159 MB of temporaries against 151 MB unsplit; one
    loop over both gives 96 MB."""
    from gencast_rmmd.training.loop import accumulated_value_and_grad, micro_keys

    def loss(p, x, key):
        h = x
        for w in p:
            h = jnp.tanh(h @ w)
        return jnp.mean(h**2)

    grad_fn = jax.value_and_grad(loss)
    params = [jax.ShapeDtypeStruct((1024, 1024), jnp.float32)] * 8

    def temp_bytes(accum: int) -> int:
        def step(p, x, key):
            micro = x.reshape(accum, -1, x.shape[-1])
            return accumulated_value_and_grad(grad_fn, p, micro, micro_keys(key, accum))

        x = jax.ShapeDtypeStruct((4096, 1024), jnp.float32)
        key = jax.ShapeDtypeStruct((2,), jnp.uint32)
        return jax.jit(step).lower(params, x, key).compile().memory_analysis().temp_size_in_bytes

    one, two, four = temp_bytes(1), temp_bytes(2), temp_bytes(4)
    assert two < 0.8 * one and four < 0.6 * one, (one, two, four)


def test_nan_guard_names_step_and_checkpoint(tmp_path):
    def loss_nan_at_7(params, batch, rng):
        loss, m = _loss(params, batch, rng)
        bad = batch["step_marker"][0] >= 7
        return jnp.where(bad, jnp.nan, loss), m

    src = _Source()
    base = ShuffledBatches(src, 16)

    def batches(step):
        b = base(step)
        b["step_marker"] = np.full((16,), step, np.int32)
        return b

    tr = _trainer(tmp_path, num_steps=20, ckpt=5, loss=loss_nan_at_7)
    state = tr.restore_or_init(_init())
    with pytest.raises(TrainingDivergedError, match=r"step 7 .*step 5\)") as e:
        tr.fit(state, FROZEN, batches)
    assert tr.ckpt.latest_step() == 5
    assert "run the same command again: it resumes from step 5" in str(e.value)


def test_a_resumed_run_may_lower_the_learning_rate(tmp_path):
    """What the divergence message advises works: a run resumed with other optimizer settings
    restores the checkpoint's Adam state and continues with the new schedule from the group's
    update count (`lr/<group>` shows the change). Only turning clipping on or off changes the
    saved state's structure, and `optimizer_resume_key` keeps exactly that."""
    src = ShuffledBatches(_Source(), 16, seed=1)
    tr = _trainer(tmp_path, num_steps=6, ckpt=3, log_every=1)
    tr.fit(tr.restore_or_init(_init()), FROZEN, src, stop_after=4)
    assert tr.ckpt.latest_step() == 3
    ocfg = OptimizerConfig(learning_rate=0.005, schedule="constant", b2=0.999)
    resumed = Trainer(
        {"fit": UpdateRule(_loss, ("lin",))},
        {"lin": make_optimizer(ocfg, 6)},
        LoopConfig(num_steps=6, batch_size=16, checkpoint_every=3, log_every=1, progress=False),
        tmp_path,
        schedules={"lin": make_schedule(ocfg, 6)},
    )
    state = resumed.restore_or_init(_init())
    assert resumed.step_of(state) == 3 and int(state["counts"]["lin"]) == 3
    resumed.fit(state, FROZEN, src)
    lrs = [r["lr/lin"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert lrs[2] > 0.01 and lrs[3:] == pytest.approx([0.005] * 3)
    assert optimizer_resume_key(to_dict(ocfg)) == optimizer_resume_key(
        to_dict(OptimizerConfig(learning_rate=1e30, schedule="cosine", grad_clip_norm=None))
    )
    assert optimizer_resume_key(to_dict(ocfg)) != optimizer_resume_key(
        to_dict(OptimizerConfig(grad_clip_norm=1.0))
    )


def test_alternating_rules_only_update_their_group(tmp_path):
    def loss_a(params, batch, rng):
        return jnp.sum((params["a"] - 1.0) ** 2) + 0.0 * jnp.sum(batch["x"]), {}

    def loss_b(params, batch, rng):
        return jnp.sum((params["b"] + params["a"]) ** 2) + 0.0 * jnp.sum(batch["x"]), {}

    cfg = LoopConfig(num_steps=4, batch_size=4, checkpoint_every=10, progress=False)
    opt = make_optimizer(OptimizerConfig(learning_rate=0.1), 4)
    tr = Trainer(
        {"A": UpdateRule(loss_a, ("a",)), "B": UpdateRule(loss_b, ("b",))},
        {"a": opt, "b": opt},
        cfg,
        tmp_path,
        schedule=lambda s: "A" if s % 2 == 0 else "B",
    )
    state = tr.restore_or_init({"a": jnp.zeros(2), "b": jnp.zeros(2)})
    batches = lambda step: {"x": np.zeros((4, 1), np.float32)}  # noqa: E731
    state = tr.train_step(state, {}, batches(0), "A")[0]
    assert np.all(np.asarray(state["params"]["b"]) == 0) and np.all(
        np.asarray(state["params"]["a"]) > 0
    )
    a_before = np.asarray(state["params"]["a"]).copy()
    state = tr.train_step(state, {}, batches(1), "B")[0]
    np.testing.assert_array_equal(np.asarray(state["params"]["a"]), a_before)
    assert np.all(np.asarray(state["params"]["b"]) < 0)
    assert [int(state["counts"][g]) for g in "ab"] == [1, 1]


def test_shuffled_batches_deterministic_and_cover_epoch():
    src = _Source(n=40)
    b = ShuffledBatches(src, 8, seed=5)
    idx = np.concatenate([b.indices(s) for s in range(5)])
    assert sorted(idx.tolist()) == list(range(40))
    assert not np.array_equal(b.indices(0), b.indices(5))  # next epoch reshuffled
    np.testing.assert_array_equal(ShuffledBatches(src, 8, seed=5).indices(7), b.indices(7))
    halves = [ShuffledBatches(src, 8, 5, process_index=p, process_count=2)(3)["x"] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), b(3)["x"])


@pytest.mark.parametrize("processes,accum", [(2, 2), (2, 4), (4, 2), (3, 2)])
def test_each_process_gets_its_share_of_every_micro_batch(processes, accum):
    """With several processes, accumulation micro-batch i must hold the examples it holds with
    one process. The trainer splits each process's local batch into `accum` micro-batches of
    consecutive rows and joins the processes' i-th micro-batches side by side (`shard_batch`
    along the micro-batch axis); reassembled that way, the processes' batches must give one
    process's micro-batches exactly."""
    src = [{"i": np.array(k)} for k in range(48)]
    batch = accum * processes * 2

    def micro_batches(count):
        parts = [
            ShuffledBatches(
                src, batch, seed=0, process_index=p, process_count=count, grad_accum_steps=accum
            )(1)["i"].reshape(accum, -1)  # Trainer.train_step's split
            for p in range(count)
        ]
        return np.concatenate(parts, axis=1)  # shard_batch's global [accum, batch / accum]

    np.testing.assert_array_equal(micro_batches(processes), micro_batches(1))
    assert sorted(micro_batches(processes).ravel()) == sorted(
        ShuffledBatches(src, batch, seed=0).indices(1)
    )
    with pytest.raises(ValueError, match="not divisible"):
        ShuffledBatches(src, 6, process_index=0, process_count=2, grad_accum_steps=2)


def test_micro_batch_that_does_not_split_over_the_devices_is_a_config_error():
    """RMMD's GenCast setting (batch 16, accumulation 8) has micro-batches of 2: on 4 devices
    that is one `ConfigError` naming the keys and a setting that works, not an internal error
    (the CLIs check it before writing into --out: test_distill_gencast, test_training_teacher)."""
    cfg = LoopConfig(num_steps=1, batch_size=16, grad_accum_steps=8)
    cfg.check_devices(2)
    with pytest.raises(ConfigError) as e:
        cfg.check_devices(4, "mmd.loop.")
    msg = str(e.value)
    assert "mmd.loop.batch_size 16 / mmd.loop.grad_accum_steps 8" in msg
    assert "micro-batches of 2" in msg and "--set mmd.loop.grad_accum_steps=4" in msg
    with pytest.raises(ConfigError, match="batch_size a multiple of 4"):
        LoopConfig(num_steps=1, batch_size=6).check_devices(4)


_SHARD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {testdir!r})
    import test_training_loop as t
    tr = t._trainer({out!r}, num_steps=8, accum=2, batch=16, ckpt=100)
    assert tr.mesh.size == jax.device_count()
    s = tr.fit(tr.restore_or_init(t._init()), t.FROZEN, t.ShuffledBatches(t._Source(), 16, seed=2))
    print(json.dumps({{"n": jax.device_count(), "params": [np.asarray(x).tolist() for x in jax.tree.leaves(s["params"])],
                      "loss": tr.last_metrics["loss"]}}))
    """
)


def _run_devices(n, out, env):
    code = _SHARD_SCRIPT.format(testdir=os.path.dirname(__file__), out=str(out))
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_four_devices_match_one_device(tmp_path, host_devices_env):
    one = _run_devices(1, tmp_path / "one", host_devices_env(1))
    four = _run_devices(4, tmp_path / "four", host_devices_env(4))
    assert (one["n"], four["n"]) == (1, 4)
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5)
    for a, b in zip(one["params"], four["params"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_run_resumes_exactly(
    tmp_path, signum, capfd
):
    """SIGTERM (a preempted VM) or Ctrl-C mid-run: the loop finishes its step, saves a checkpoint
    at that step (13, between the every-5 ones) and raises `StoppedBySignal`; the same run then
    resumes from step 13 to the parameters and losses of an uninterrupted run. The handlers are
    put back afterwards."""
    src = _Source()
    full = _trainer(tmp_path / "a", num_steps=23, ckpt=5, log_every=1)
    s_full = full.fit(full.restore_or_init(_init()), FROZEN, ShuffledBatches(src, 16, seed=3))

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    tr = _trainer(tmp_path / "b", num_steps=23, ckpt=5, log_every=1)

    def on_log(step, rec):
        if step == 13:
            os.kill(os.getpid(), signum)

    with pytest.raises(StoppedBySignal) as e:
        tr.fit(tr.restore_or_init(_init()), FROZEN, ShuffledBatches(src, 16, seed=3), on_log=on_log)
    assert e.value.signum == signum
    name = signal.Signals(signum).name
    assert f"stopped by {name} after step 13 of 23" in str(e.value)
    assert f"{name} received: stopping after this step" in capfd.readouterr().err
    assert tr.ckpt.all_steps()[-2:] == [10, 13]
    assert {s: signal.getsignal(s) for s in before} == before
    resumed = _trainer(tmp_path / "b", num_steps=23, ckpt=5, log_every=1)
    s2 = resumed.restore_or_init(_init())
    assert resumed.step_of(s2) == 13
    s2 = resumed.fit(s2, FROZEN, ShuffledBatches(src, 16, seed=3))
    assert len(_assert_same_run(s_full, s2, tmp_path / "a", tmp_path / "b")) == 23


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    tr = _trainer(tmp_path, num_steps=23, ckpt=5, log_every=1)

    def on_log(step, rec):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        tr.fit(tr.restore_or_init(_init()), FROZEN, ShuffledBatches(_Source(), 16, seed=3),
               on_log=on_log)  # fmt: skip
    assert tr.ckpt.all_steps()[-1] == 5  # no checkpoint taken on the way out


def test_a_signal_at_the_last_step_still_stops_before_what_follows(tmp_path):
    """The run is complete, but a distillation would go on to its next phase and a teacher to its
    export: the stop asked for is kept (the re-run finds the run complete and goes on)."""
    tr = _trainer(tmp_path, num_steps=12, ckpt=5, log_every=1)

    def on_log(step, rec):
        if step == 12:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(StoppedBySignal, match="after step 12 of 12"):
        tr.fit(tr.restore_or_init(_init()), FROZEN, ShuffledBatches(_Source(), 16, seed=3),
               on_log=on_log)  # fmt: skip
    assert tr.ckpt.latest_step() == 12
