"""Multi-process (multi-host) training: the CLI run as two JAX processes of one CPU device each,
joined through `jax.distributed` (gloo collectives on CPU), as on a pod with one process per
host. Each process feeds its slice of the global batch; checkpoints are written (and restored,
on a resume) together by orbax in the shared run directory. Losses and weights must match one
process with the same global batch (up to float summation order), for the teacher (resumed once
on the way) and for both distillation phases (with gradient accumulation: each process feeds its
share of every micro-batch)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml
from test_training_teacher import MODEL, TASK, _flat_params, _store

from gencast_rmmd.config import to_dict
from gencast_rmmd.training.sharding import NUM_PROCESSES_ENV, PROCESS_ID_ENV

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], env: dict, processes: int) -> list[str]:
    """`gencast-rmmd ARGV` in `processes` processes at once (one process: no distributed
    set-up); returns their stdout, after checking every one succeeded."""
    base = dict(env, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "gencast_rmmd", *argv]
    if processes == 1:
        res = subprocess.run(cmd, env=base, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        return [res.stdout]
    base.update(
        GENCAST_RMMD_DISTRIBUTED="1",
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
        **{NUM_PROCESSES_ENV: str(processes)},
    )
    procs = [
        subprocess.Popen(
            cmd,
            env=dict(base, **{PROCESS_ID_ENV: str(i)}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outs = []
    try:
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, f"process {i}: {err[-3000:]}"
            outs.append(out)
    finally:
        for p in procs:
            p.kill()
    return outs


def _losses(path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def _assert_same_weights(a, b, rtol=1e-3, atol=1e-5):
    pa, pb = _flat_params(a), _flat_params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], rtol=rtol, atol=atol, err_msg=k)


def test_two_processes_match_one_process(tmp_path_factory, host_devices_env):
    store, stats = _store(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("multiprocess")
    model = tmp / "model.yaml"
    model.write_text(yaml.safe_dump(to_dict(MODEL)))
    task = tmp / "task.yaml"
    task.write_text(yaml.safe_dump({"task": to_dict(TASK)}))
    env = host_devices_env(1)
    data = ["--data", str(store), "--stats", str(stats), "--no-progress"]

    # The teacher: 3 steps, global batch 4 (2 per process), a checkpoint after every step. The
    # two processes stop after 2 steps and are started again: they restore the checkpoint
    # together (onto the two-process mesh) and take the third step from the data position saved.
    teacher = {}
    for n in (1, 2):
        out = tmp / f"teacher{n}"
        argv = ["teacher", "train", "--config", str(model), "--task", str(task), *data]
        argv += ["--out", str(out), "--batch-size", "4"]
        argv += ["--set", "training.log_every=1", "--set", "training.checkpoint_every=1"]
        for steps in (2, 3) if n == 2 else (3,):
            stdout = _run([*argv, "--steps", str(steps)], env, n)
            assert len(stdout) == n and all(f'"steps": {steps}' in s for s in stdout)
        teacher[n] = out
    np.testing.assert_allclose(
        _losses(teacher[2] / "metrics.jsonl"), _losses(teacher[1] / "metrics.jsonl"), rtol=1e-4
    )
    assert len(_losses(teacher[2] / "metrics.jsonl")) == 3  # process 0 alone logs
    assert sorted(os.listdir(teacher[2] / "checkpoints")) == ["1", "2", "3"]
    _assert_same_weights(teacher[1] / "teacher.npz", teacher[2] / "teacher.npz")

    # Both distillation phases from the one-process teacher (phase 2 on-policy, with the reward),
    # in 2 accumulation micro-batches of 2: micro-batch i must hold the same examples with one
    # process and with two (a contiguous half of the batch per process did not).
    sets = ["student_sampler.num_steps=2"]
    for ph in ("mmd", "rmmd"):
        sets += [f"{ph}.loop.num_steps=2", f"{ph}.loop.batch_size=4", f"{ph}.loop.log_every=1"]
        sets += [f"{ph}.loop.grad_accum_steps=2"]
    runs = {}
    for n in (1, 2):
        out = tmp / f"distill{n}"
        argv = ["distill", "--config", "tiny", "--teacher", str(teacher[1] / "teacher.npz")]
        argv += [*data, "--out", str(out), "--phase", "both"]
        for s in sets:
            argv += ["--set", s]
        _run(argv, env, n)
        runs[n] = out
    for ph in ("mmd", "rmmd"):
        one, two = _losses(runs[1] / ph / "metrics.jsonl"), _losses(runs[2] / ph / "metrics.jsonl")
        np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6)
        _assert_same_weights(runs[1] / ph / "student.npz", runs[2] / ph / "student.npz")
    summary = json.loads((runs[2] / "summary.json").read_text())
    assert summary["rmmd"]["complete"] and summary["rmmd"]["steps"] == 2
