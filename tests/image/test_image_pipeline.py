"""Pareto bookkeeping (fronts, dominance, CSV schema) and the image configs."""

from __future__ import annotations

import csv

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
    s = pipeline.summarize(rows, ("rmmd", "draft", "refl", "dipp"), ("bw",))
    assert s["rewards"]["bw"]["rmmd_dominates_draft_share"] == 1.0
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


def test_cli_bad_data_leaves_no_run_directory(tmp_path):
    from gencast_rmmd.cli import main

    out = tmp_path / "run"
    rc = main(
        ["image", "teacher", "--config", "imagenet64", "--out", str(out),
         "--data", str(tmp_path / "missing.npz")]
    )  # fmt: skip
    assert rc == 2
    assert not out.exists()
