"""The `gencast-rmmd data` commands end to end on small stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from data_synthetic import SMALL_TASK, arco_style_ds, canonical_store_ds

from gencast_rmmd.cli import main
from gencast_rmmd.config import to_dict
from gencast_rmmd.data.stats import load_stats


def _config_file(tmp_path, **extra):
    data = {"task": to_dict(SMALL_TASK), "source": "unused", **extra}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_validate_ok_and_errors(tmp_path, capsys):
    cfg = _config_file(tmp_path)
    good = tmp_path / "good.zarr"
    canonical_store_ds().to_zarr(good, consolidated=False)
    assert main(["data", "validate", "--data", str(good), "--config", cfg]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["problems"] == 0
    bad = tmp_path / "bad.zarr"
    canonical_store_ds().drop_vars("temperature").to_zarr(bad, consolidated=False)
    assert main(["data", "validate", "--data", str(bad), "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert "missing-variable" in err and "'temperature'" in err and "Traceback" not in err
    assert main(["data", "validate", "--data", str(tmp_path / "none.zarr"), "--config", cfg]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_validate_describes_the_store_by_split(tmp_path, capsys):
    """A valid store is described: 12 times 12 h apart from 2020-01-01T00, so 10 examples (each
    needs the frame before and the target after); a split counts the examples whose whole span
    lies in it; a split with none, or a time_stop past the store's end, is a note, not a failure."""
    splits = {
        "train": ["2020-01-01T00", "2020-01-03T00"],  # inits 01T12, 02T00, 02T12
        "eval": ["2020-01-05T00", "2020-01-09T00"],  # inits 05T12, 06T00 (the last has no target)
        "old": ["2019-01-01", "2019-02-01"],
    }
    cfg = _config_file(tmp_path, splits=splits, time_stop="2020-02-01T00")
    good = tmp_path / "good.zarr"
    canonical_store_ds().to_zarr(good, consolidated=False)
    assert main(["data", "validate", "--data", str(good), "--config", cfg, "--no-values"]) == 0
    res = capsys.readouterr()
    info = json.loads(res.out.splitlines()[-1])
    assert info["times"] == 12 and info["examples"] == 10
    assert info["first"] == "2020-01-01T00:00:00" and info["last"] == "2020-01-06T12:00:00"
    assert info["splits"] == {"train": 3, "eval": 2, "old": 0}
    assert "10 examples (by split: eval 2, old 0, train 3)" in res.out  # as the YAML lists them
    notes = [s for s in res.err.splitlines() if s.startswith("note: ")]
    assert len(notes) == 2, res.err
    assert "split 'old'" in notes[0] and "holds no example" in notes[0]
    assert "before the config's time_stop 2020-02-01T00" in notes[1]


def test_prepare_then_stats_then_validate(tmp_path, capsys):
    src = tmp_path / "arco.zarr"
    arco_style_ds(hours=48).chunk({"time": 24}).to_zarr(src, consolidated=False)
    cfg = _config_file(tmp_path)
    out = tmp_path / "canon.zarr"
    rc = main(
        [
            "data",
            "prepare",
            "--source",
            str(src),
            "--config",
            cfg,
            "--out",
            str(out),
            "--",
            "--direct_num_workers=1",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["status"] == "complete"
    assert main(["data", "stats", "--data", str(out), "--out", str(tmp_path / "stats")]) == 0
    stats = load_stats(tmp_path / "stats")
    assert stats["mean"]["temperature"].level.values.tolist() == [500, 850]
    assert np.all(stats["diffs_stddev"]["temperature"].values > 0)
    assert main(["data", "validate", "--data", str(out), "--config", cfg]) == 0


@pytest.mark.slow
def test_nature_run_command(tmp_path, capsys):
    out = tmp_path / "nr.zarr"
    args = [
        "data",
        "nature-run",
        "--out",
        str(out),
        "--spinup-days",
        "3",
        "--days",
        "1",
        "--seed",
        "2",
    ]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["times"] == 2 and summary["simulated_days"] == 4
    assert main(["data", "validate", "--data", str(out), "--config", "embedded"]) == 0
    assert main(args) == 2  # exists: refuses without --overwrite
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["nature-run", "--days", "0"], "days >= 1, found 200, 0"),
        (["nature-run", "--spinup-days", "-1"], "spinup_days must be >= 0"),
        (["stats", "--block", "0"], "--block: expected an integer >= 1, found 0"),
        (["stats", "--block", "-4"], "--block: expected an integer >= 1, found -4"),
        (["stats", "--step-hours", "0"], "--step-hours: expected an integer >= 1, found 0"),
        (["prepare", "--config", "CFG", "--steps-per-item", "0"], "--steps-per-item"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, monkeypatch, args, fragment):
    """Out-of-range numbers given on the command line are named, not internal errors."""
    monkeypatch.setenv("GENCAST_RMMD_CACHE", str(tmp_path / "cache"))
    args = [_config_file(tmp_path) if a == "CFG" else a for a in args]
    out = ["--out", str(tmp_path / "out")]
    data = ["--data", str(tmp_path / "none.zarr")] if args[0] == "stats" else []
    assert main(["data", *args, *out, *data]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "out").exists()
