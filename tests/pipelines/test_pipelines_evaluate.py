"""Evaluation pipeline: Beam (in-process runner) == in-memory for two chunkings, outputs, guards,
CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from gencast_rmmd.errors import DataError, OutputError
from gencast_rmmd.evaluation.netcdf_io import read_netcdf
from gencast_rmmd.evaluation.statistics import VL_DIM
from gencast_rmmd.evaluation.synthetic import synthetic_pair, write_synthetic_pair
from pipelines.evaluate import evaluate, load_summary


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    f, t = str(d / "f.zarr"), str(d / "t.zarr")
    b, tb = str(d / "b.zarr"), str(d / "tb.zarr")
    write_synthetic_pair(
        f, t, n_init=4, n_lead=3, members=5, n_lat=8, n_lon=16, spread_factor=1.0, seed=1
    )
    # Baseline: same truth (same seed for the truth draw), under-dispersed members, `number` dim.
    write_synthetic_pair(
        b,
        tb,
        n_init=4,
        n_lead=3,
        members=5,
        n_lat=8,
        n_lon=16,
        spread_factor=0.5,
        seed=1,
        ensemble_dim="number",
    )
    return {"dir": d, "f": f, "t": t, "b": b}


def test_beam_equals_memory_for_two_chunkings(stores):
    d = stores["dir"]
    ref = evaluate(
        stores["f"],
        stores["t"],
        str(d / "mem"),
        baseline_path=stores["b"],
        engine="memory",
        plots=False,
    )
    for lead_chunk in (1, 2):
        res = evaluate(
            stores["f"],
            stores["t"],
            str(d / f"beam{lead_chunk}"),
            baseline_path=stores["b"],
            engine="beam",
            lead_chunk=lead_chunk,
            plots=False,
        )
        xr.testing.assert_allclose(res.scorecard, ref.scorecard, rtol=1e-12, atol=1e-12)
        xr.testing.assert_allclose(res.rank_histograms, ref.rank_histograms, rtol=1e-12, atol=1e-12)
        assert res.summary == ref.summary


def test_init_times_without_a_valid_point_are_left_out_alike_by_both_engines(tmp_path):
    """A NaN-filled truth time (or an all-NaN member) leaves a statistic NaN at one init time.
    The in-memory engine summed it as 0 (CRPS of 2m_temperature 0.44 instead of 0.59), Beam
    propagated NaN to the whole entry. Both now average each entry over the init times where
    it has a value, say so in the notes, and test significance on those init times; with one
    member the debiased MSE (undefined) is NaN in both, where memory gave 0."""
    kw = dict(n_init=4, n_lead=2, n_lat=8, n_lon=16, seed=1)
    fc, tr = synthetic_pair(members=5, **kw)
    base, _ = synthetic_pair(members=1, **kw)  # same seed: the same truth
    tr["2m_temperature"][2] = np.nan  # valid time of (init 0, +24 h) and (init 1, +12 h)
    fc["temperature"][3, 1, 0] = np.nan  # a member all-NaN at (init 3, +24 h)
    paths = {k: str(tmp_path / f"{k}.zarr") for k in ("f", "b", "t")}
    for k, ds in (("f", fc), ("b", base)):
        ds.chunk({"time": 1, "prediction_timedelta": 1}).to_zarr(paths[k], zarr_format=2)
    tr.chunk({"time": 1}).to_zarr(paths["t"], zarr_format=2)
    res = {
        engine: evaluate(
            paths["f"],
            paths["t"],
            str(tmp_path / engine),
            baseline_path=paths["b"],
            engine=engine,
            lead_chunk=2,
            plots=False,
        )
        for engine in ("memory", "beam")
    }
    mem, beam = res["memory"], res["beam"]
    xr.testing.assert_allclose(beam.scorecard, mem.scorecard, rtol=1e-12, atol=1e-12)
    xr.testing.assert_allclose(beam.rank_histograms, mem.rank_histograms, rtol=1e-12, atol=1e-12)
    assert beam.summary == mem.summary
    for label in ("forecast", "baseline"):
        means = [read_netcdf(str(tmp_path / e / "stats" / f"mean_{label}.nc")) for e in res]
        xr.testing.assert_allclose(means[0], means[1], rtol=1e-12, atol=1e-12)
    assert means[0]["debiased_ensemble_mean_se"].isnull().all()  # the 1-member baseline
    # The scorecard's CRPS is the mean of the per-init CRPS over the init times that have one.
    per = read_netcdf(str(tmp_path / "memory" / "stats" / "per_init_forecast.nc"))
    crps = (per["crps_skill"] - 0.5 * per["crps_spread"]).sel(region="global")
    assert int(crps.isnull().sum()) == 4  # 2 x 2m_temperature, 2 x temperature levels
    np.testing.assert_allclose(
        mem.scorecard["value"].sel(metric="crps", region="global").transpose(VL_DIM, "lead_time"),
        crps.mean("time", skipna=True).transpose(VL_DIM, "prediction_timedelta"),
        rtol=1e-12,
    )
    assert np.isfinite(mem.scorecard["value"]).all()
    # Each entry keeps at least 3 init times: all get a significance test.
    assert np.isfinite(mem.scorecard["p_value"].sel(metric=["crps", "rmse"])).all()
    notes = json.load(open(tmp_path / "beam" / "evaluation.json"))["notes"]
    assert notes == json.load(open(tmp_path / "memory" / "evaluation.json"))["notes"]
    assert any(n.startswith("forecast: 4 of 24 ") for n in notes), notes
    assert any(n.startswith("baseline: 2 of 24 ") for n in notes), notes
    assert "2m_temperature +12 h at init 2020-01-01T12:00:00" in " ".join(notes)


def test_members_nan_where_the_truth_has_a_value_are_reported(stores, tmp_path, capsys):
    """A forecast that failed at some points (NaN members where the truth has a value) was
    scored on the other points without a word: its scorecard did not count the failure. Both
    engines now warn, in the notes and on stderr, naming the fields and the share of the globe;
    a complete forecast gets no such warning."""
    fc, tr = synthetic_pair(n_init=4, n_lead=2, members=5, n_lat=8, n_lon=16, seed=1)
    fc["2m_temperature"][1, 0, 2, 3, :4] = np.nan  # (init 1, +12 h), member 2, 4 points
    paths = {k: str(tmp_path / f"{k}.zarr") for k in ("f", "t")}
    fc.chunk({"time": 1, "prediction_timedelta": 1}).to_zarr(paths["f"], zarr_format=2)
    tr.chunk({"time": 1}).to_zarr(paths["t"], zarr_format=2)
    capsys.readouterr()
    warned = []
    for engine in ("memory", "beam"):
        res = evaluate(paths["f"], paths["t"], str(tmp_path / engine), engine=engine, plots=False)
        (note,) = [n for n in res.notes if n.startswith("WARNING (missing values)")]
        assert note == json.load(open(tmp_path / engine / "evaluation.json"))["notes"][0]
        assert note in capsys.readouterr().err
        warned.append(note)
    assert warned[0] == warned[1]
    assert "in 1 of 24 (init time, lead time, variable-level) fields" in warned[0]
    assert "2m_temperature +12 h at init 2020-01-01T12:00:00 (" in warned[0]
    clean = evaluate(
        stores["f"], stores["t"], str(tmp_path / "clean"), engine="memory", plots=False
    )
    assert not [n for n in clean.notes if n.startswith("WARNING")]
    assert "WARNING" not in capsys.readouterr().err


def test_a_forecast_in_other_units_is_flagged(stores, tmp_path, capsys):
    """A forecast in other units than the truth (degC against K, geopotential height against
    geopotential) was scored as it was, its CRPS in the hundreds, without a word. A variable
    whose values at the first (init, lead) are far from the truth's in mean or spread is now
    named in a warning (notes, stderr) with both stores' units; the baseline, in range, is not."""
    fc, tr = synthetic_pair(n_init=4, n_lead=2, members=5, n_lat=8, n_lon=16, seed=1)
    fc["2m_temperature"] = (fc["2m_temperature"] - 273.15).assign_attrs(units="degC")
    fc["temperature"] = fc["temperature"] * 100  # a spread 100 times the truth's
    paths = {k: str(tmp_path / f"{k}.zarr") for k in ("f", "t")}
    fc.chunk({"time": 1, "prediction_timedelta": 1}).to_zarr(paths["f"], zarr_format=2)
    tr.chunk({"time": 1}).to_zarr(paths["t"], zarr_format=2)
    capsys.readouterr()
    res = evaluate(paths["f"], paths["t"], str(tmp_path / "ev"), baseline_path=stores["b"],
                   engine="memory", plots=False)  # fmt: skip
    (note,) = [n for n in res.notes if n.startswith("WARNING (scale)")]
    assert note.startswith("WARNING (scale): forecast: at init 2020-01-01T00:00:00 +12 h")
    assert "2m_temperature (mean " in note and "units 'degC'; truth mean 2" in note
    assert "temperature/500 (mean " in note and "temperature/850 (mean " in note
    assert note in capsys.readouterr().err
    assert not [n for n in res.notes if n.startswith("WARNING (scale): baseline")]


@pytest.mark.parametrize("shift, scale, flagged", [(4.0, 1.0, False), (6.0, 1.0, True),
                                                   (0.0, 4.0, False), (0.0, 6.0, True),
                                                   (0.0, 0.1, True)])  # fmt: skip
def test_scale_note_thresholds(shift, scale, flagged):
    """Flagged: a mean more than 5 truth standard deviations (spatial, at the first init and
    lead) from the truth's, or a spread more than 5 times larger or smaller."""
    from gencast_rmmd.evaluation.stores import canonical_grid
    from pipelines.evaluate import scale_note

    fc, tr = synthetic_pair(n_init=1, n_lead=1, members=3, n_lat=8, n_lon=16, seed=2)
    tr = canonical_grid(tr).copy(deep=True)
    init, lead = fc["time"].values[0], fc["prediction_timedelta"].values[0]
    t = tr["2m_temperature"].sel(time=init + lead)
    fc["2m_temperature"] = (
        (float(t.mean()) + scale * (t - float(t.mean())) + shift * float(t.std()))
        .expand_dims(time=[init], prediction_timedelta=[lead], realization=range(3))
        .copy()
    )
    pairs = [("2m_temperature", None)]
    note = scale_note("forecast", fc, tr, pairs, init, lead, ("f", "t"), "realization")
    assert (note is not None) == flagged
    # Points without a truth value (SST over land) are left out: a fill value there is no sign.
    tr["2m_temperature"].loc[dict(time=init + lead, latitude=slice(-90, 0))] = np.nan
    fc["2m_temperature"].loc[dict(latitude=slice(-90, 0))] = 1e6
    note = scale_note("forecast", fc, tr, pairs, init, lead, ("f", "t"), "realization")
    assert (note is not None) == flagged


def _fails_after(real, n: int, error: Exception):
    """`real` that raises `error` from its (n + 1)-th call on, and the list its calls append to."""
    calls: list[int] = []

    def wrapper(*a, **k):
        calls.append(1)
        if len(calls) > n:
            raise error
        return real(*a, **k)

    return wrapper, calls


@pytest.mark.parametrize("engine", ["memory", "beam"])
def test_a_crashed_evaluation_resumes_from_its_scored_items(stores, tmp_path, monkeypatch, capsys,
                                                            engine):  # fmt: skip
    """A crash (kill, power loss) lost every work item scored so far. Each item's statistics
    are now kept beside --out until the outputs are written: the re-run scores only the rest,
    says so, gives the scorecard of an uninterrupted run, and removes the kept items."""
    from pipelines import evaluate as eval_pipe

    kw = dict(baseline_path=stores["b"], engine=engine, plots=False)
    ref = evaluate(stores["f"], stores["t"], str(tmp_path / "ref"), **kw)
    real = eval_pipe.chunk_statistics  # one call per (model, init, lead): 2 x 4 x 3
    crashing, calls = _fails_after(real, 7, RuntimeError("simulated crash"))
    monkeypatch.setattr(eval_pipe, "chunk_statistics", crashing)
    with pytest.raises(Exception, match="simulated crash"):
        evaluate(stores["f"], stores["t"], str(tmp_path / "ev"), **kw)
    kept = [n for n in os.listdir(tmp_path) if ".ev.eval-items-" in n]
    assert len(kept) == 1 and not (tmp_path / "ev").exists()
    done = sum(len(files) for _, _, files in os.walk(tmp_path / kept[0]))
    assert 1 <= done <= 7  # (Beam may run items in any order; those before the crash are kept)
    calls.clear()
    monkeypatch.setattr(
        eval_pipe, "chunk_statistics", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    capsys.readouterr()
    res = evaluate(stores["f"], stores["t"], str(tmp_path / "ev"), **kw)
    assert len(calls) == 24 - done
    assert "work items already scored" in capsys.readouterr().err
    xr.testing.assert_allclose(res.scorecard, ref.scorecard, rtol=1e-12, atol=1e-12)
    xr.testing.assert_allclose(res.rank_histograms, ref.rank_histograms, rtol=1e-12, atol=1e-12)
    assert res.summary == ref.summary
    assert not [n for n in os.listdir(tmp_path) if ".eval-items-" in n]


def test_an_input_error_mid_run_says_what_is_kept(stores, tmp_path, monkeypatch):
    """A user error mid-run (a corrupt chunk) says how many scored items the re-run will find."""
    from pipelines import evaluate as eval_pipe

    failing, _ = _fails_after(eval_pipe.chunk_statistics, 7, DataError("chunk 8 cannot be decoded"))
    monkeypatch.setattr(eval_pipe, "chunk_statistics", failing)
    with pytest.raises(DataError) as e:
        evaluate(stores["f"], stores["t"], str(tmp_path / "ev"), engine="memory", plots=False)
    assert str(e.value).startswith("chunk 8 cannot be decoded (7 work items done so far are kept ")
    assert ".ev.eval-items-" in str(e.value)


def test_kept_items_of_a_store_remade_since_are_not_reused(tmp_path, monkeypatch):
    """A forecast store without a store id, re-made at the same path after a crash: the kept
    items were scored on the old one, so the re-run scores everything afresh."""
    import shutil

    from pipelines import evaluate as eval_pipe

    f, t = str(tmp_path / "f.zarr"), str(tmp_path / "t.zarr")
    kw = dict(n_init=4, n_lead=3, members=3, n_lat=8, n_lon=16)
    write_synthetic_pair(f, t, seed=1, **kw)
    real = eval_pipe.chunk_statistics
    crashing, calls = _fails_after(real, 5, RuntimeError("simulated crash"))
    monkeypatch.setattr(eval_pipe, "chunk_statistics", crashing)
    with pytest.raises(RuntimeError):
        evaluate(f, t, str(tmp_path / "ev"), engine="memory", plots=False)
    shutil.rmtree(f)
    new, _ = synthetic_pair(seed=2, **kw)  # another forecast (against the seed-1 truth)
    new.chunk({"time": 1, "prediction_timedelta": 1}).to_zarr(f, zarr_format=2)
    calls.clear()
    monkeypatch.setattr(
        eval_pipe, "chunk_statistics", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    res = evaluate(f, t, str(tmp_path / "ev"), engine="memory", plots=False)
    assert len(calls) == 12
    monkeypatch.setattr(eval_pipe, "chunk_statistics", real)
    ref = evaluate(f, t, str(tmp_path / "ref"), engine="memory", plots=False)
    xr.testing.assert_identical(res.scorecard.drop_attrs(), ref.scorecard.drop_attrs())


def test_beam_workers_write_to_a_shared_work_dir(stores, tmp_path, capsys, monkeypatch):
    """On Dataflow the workers share no disk with the launcher: the Beam evaluation's statistics
    go through a URL (`--work-dir`, else the pipeline's `--temp_location`; memory:// here), give
    the same scorecard, are kept beside the report, and the URL is left clean."""
    import fsspec

    from gencast_rmmd.cli import main
    from gencast_rmmd.errors import ConfigError
    from pipelines import evaluate as eval_pipe
    from pipelines.evaluate import beam_work_dir

    fs = fsspec.filesystem("memory")
    shared = "memory://gencast_rmmd_eval_work"
    kw = dict(baseline_path=stores["b"], plots=False)
    ref = evaluate(stores["f"], stores["t"], str(tmp_path / "local"), engine="beam", **kw)
    written, real_run_beam = [], eval_pipe.run_beam

    def spy(specs, work_dir, *a, **k):
        out = real_run_beam(specs, work_dir, *a, **k)
        written.append(
            (work_dir, sorted(p.rsplit("/", 1)[-1] for p in fs.ls(work_dir, detail=False)))
        )
        return out

    monkeypatch.setattr(eval_pipe, "run_beam", spy)
    via_flag = evaluate(
        stores["f"], stores["t"], str(tmp_path / "flag"), engine="beam", work_dir=shared, **kw
    )
    xr.testing.assert_identical(via_flag.scorecard, ref.scorecard)
    assert written[0][0].startswith(f"{shared}/gencast_rmmd_evaluate-")
    assert written[0][1] == sorted(os.listdir(tmp_path / "local" / "stats"))
    assert not fs.exists(shared) or not fs.ls(shared)
    names = sorted(os.listdir(tmp_path / "local" / "stats"))
    assert sorted(os.listdir(tmp_path / "flag" / "stats")) == names and len(names) == 4
    temp = ["--temp_location", f"{shared}/tmp"]
    assert beam_work_dir(temp) == f"{shared}/tmp" and beam_work_dir() is None
    assert beam_work_dir(["--temp_location=/tmp/x"]) is None
    with pytest.raises(ConfigError, match="must be a URL"):
        beam_work_dir([], "/tmp/local-dir")
    flink = ["--runner=FlinkRunner"]  # workers elsewhere: a URL they share, or a refusal
    assert beam_work_dir(flink + temp) == f"{shared}/tmp"
    assert beam_work_dir(flink, shared) == shared
    with pytest.raises(ConfigError, match="FlinkRunner runs its workers elsewhere.*'/tmp/x'"):
        beam_work_dir(flink + ["--temp_location=/tmp/x"])
    argv = ["evaluate", "--forecast", stores["f"], "--truth", stores["t"], "--no-plots"]
    assert main(argv + ["--out", str(tmp_path / "cli"), "--", *temp]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert (
        summary
        == evaluate(
            stores["f"], stores["t"], str(tmp_path / "m"), engine="memory", plots=False
        ).summary
    )
    assert written[1][0].startswith(f"{shared}/tmp/gencast_rmmd_evaluate-")
    assert not fs.exists(f"{shared}/tmp") or not fs.ls(f"{shared}/tmp")


def test_outputs_hold_what_they_claim(stores):
    out = str(stores["dir"] / "full")
    res = evaluate(stores["f"], stores["t"], out, baseline_path=stores["b"], engine="memory")
    for name in (
        "scorecard.nc",
        "scorecard.csv",
        "rank_histograms.nc",
        "report.html",
        "evaluation.json",
        "scorecard_crps.png",
        "scorecard_rmse.png",
        "spread_skill.png",
        "rank_histograms.png",
    ):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    card = read_netcdf(os.path.join(out, "scorecard.nc"))
    assert set(card["value"].dims) == {"metric", "variable-level", "lead_time", "region"}
    for attr in (
        "estimator",
        "ensemble_size",
        "grid",
        "time_window",
        "forecast_model",
        "baseline_model",
    ):
        assert attr in card.attrs, attr
    assert card.attrs["ensemble_size"] == 5
    xr.testing.assert_allclose(card["value"], res.scorecard["value"])
    table = pd.read_csv(os.path.join(out, "scorecard.csv"), keep_default_na=False)
    assert list(table.columns) == [
        "metric",
        "variable",
        "level",
        "lead_time_hours",
        "region",
        "value",
        "baseline_value",
        "relative_change",
        "significant",
    ]
    assert len(table) == 3 * 3 * 3 * 4  # metrics x (t2m, t500, t850) x leads x regions
    row = table[
        (table.metric == "crps")
        & (table.variable == "temperature")
        & (table.level == "850")
        & (table.lead_time_hours == 24)
        & (table.region == "global")
    ]
    want = float(
        card["value"]
        .sel(metric="crps", lead_time=24, region="global")
        .sel({"variable-level": "temperature/850"})
    )
    np.testing.assert_allclose(float(row.value.iloc[0]), want)
    hist = read_netcdf(os.path.join(out, "rank_histograms.nc"))
    np.testing.assert_allclose(hist["rank_histogram"].sum("bin"), 1.0)
    assert hist.sizes["bin"] == 6
    # The calibrated forecast has spread/skill near 1 and beats the under-dispersed baseline on CRPS.
    summ = load_summary(out)
    assert summ.keys() == res.summary.keys()
    for k, v in summ.items():
        w = res.summary[k]
        if isinstance(v, dict):
            assert v.keys() == w.keys()
            if k != "models":
                assert list(v.values()) == pytest.approx(list(w.values()), rel=1e-12), k
        elif isinstance(v, float):
            assert v == pytest.approx(w, rel=1e-12), k
        else:
            assert v == w, k
    html = open(os.path.join(out, "report.html")).read()
    assert "scorecard_crps.png" in html and "win_rate_crps" in html
    meta = json.load(open(os.path.join(out, "evaluation.json")))
    assert meta["n_init_times"] == 4 and meta["lead_times_hours"] == [12, 24, 36]


def test_leakage_guard(stores, tmp_path):
    fc = xr.open_zarr(stores["f"])
    fc.attrs.update(
        training_period_start="2019-06-01T00:00:00", training_period_end="2020-01-02T00:00:00"
    )
    leaky = str(tmp_path / "leaky.zarr")
    fc.to_zarr(leaky, zarr_format=2)
    with pytest.raises(DataError, match="training period"):
        evaluate(leaky, stores["t"], str(tmp_path / "e1"), engine="memory", plots=False)
    res = evaluate(
        leaky, stores["t"], str(tmp_path / "e2"), engine="memory", plots=False, allow_overlap=True
    )
    meta = json.load(open(tmp_path / "e2" / "evaluation.json"))
    # Inits Jan 1 00Z and 12Z have valid times (init + 12..36 h) up to Jan 2 00Z: overlap; the
    # Jan 2 inits' first valid time is Jan 2 12Z, after the training period.
    assert meta["overlapping_init_times"] == ["2020-01-01T00:00:00", "2020-01-01T12:00:00"]
    assert "leakage" in open(tmp_path / "e2" / "report.html").read()
    assert res.scorecard.attrs["overlapping_init_times"]


def test_user_errors(stores, tmp_path):
    other = tmp_path / "busy"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="other files"):
        evaluate(stores["f"], stores["t"], str(other), engine="memory")
    (tmp_path / "file").write_text("precious")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        evaluate(stores["f"], stores["t"], str(tmp_path / "file"), engine="memory")
    assert (tmp_path / "file").read_text() == "precious"
    with pytest.raises(DataError, match="ensemble dim 'sample'"):
        evaluate(
            stores["f"], stores["t"], str(tmp_path / "x"), ensemble_dim="sample", engine="memory"
        )
    with pytest.raises(DataError, match="does not exist"):
        evaluate(str(tmp_path / "nope.zarr"), stores["t"], str(tmp_path / "y"), engine="memory")
    # Truth that covers no valid time of the forecast.
    tr = xr.open_zarr(stores["t"]).isel(time=slice(0, 1))
    short = str(tmp_path / "short.zarr")
    tr.to_zarr(short, zarr_format=2)
    with pytest.raises(DataError, match="valid times"):
        evaluate(stores["f"], short, str(tmp_path / "z"), engine="memory")


def test_cli_ensemble_dim_number(stores, tmp_path, capsys):
    from gencast_rmmd.cli import main

    out = str(tmp_path / "cli")
    rc = main(
        [
            "evaluate",
            "--forecast",
            stores["b"],
            "--truth",
            stores["t"],
            "--out",
            out,
            "--ensemble-dim",
            "number",
            "--engine",
            "memory",
            "--no-plots",
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["summary"]["spread_skill"]  # under-dispersed baseline scored alone
    assert printed["summary"]["spread_skill"]["forecast"] < 0.8
    rc = main(
        [
            "evaluate",
            "--forecast",
            stores["b"],
            "--truth",
            stores["t"],
            "--out",
            str(tmp_path / "c2"),
            "--engine",
            "memory",
        ]
    )
    assert rc == 2  # default ensemble dim 'realization' is absent: one-line user error


def test_corrupt_chunk_is_a_clear_error(stores, tmp_path):
    import shutil

    f = str(tmp_path / "f.zarr")
    shutil.copytree(stores["f"], f)
    chunk = sorted(
        p for p in (tmp_path / "f.zarr" / "temperature").iterdir() if not p.name.startswith(".")
    )[0]
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(DataError, match="cannot read variable 'temperature'.*corrupt"):
        evaluate(f, stores["t"], str(tmp_path / "e"), engine="memory", plots=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.zarr"]  # nothing half-written


def test_is_current_follows_the_truth_store(stores, tmp_path):
    """An evaluation is current only for the truth store it scored against: a truth store
    re-made at the same path (another creation id) makes it stale; one written before the
    truth's id was recorded is taken as current."""
    import shutil

    import zarr

    from gencast_rmmd.data.era5 import STORE_ID_ATTR, store_id
    from pipelines.evaluate import MARKER, is_current

    truth = str(tmp_path / "t.zarr")
    shutil.copytree(stores["t"], truth)
    zarr.open_group(truth, mode="r+").attrs[STORE_ID_ATTR] = "first"
    out = str(tmp_path / "ev")
    evaluate(stores["f"], truth, out, baseline_path=stores["b"], engine="memory", plots=False)
    meta = json.loads((tmp_path / "ev" / MARKER).read_text())
    assert meta["truth_store_id"] == store_id(truth) == "first"
    assert is_current(out, stores["f"], stores["b"])
    zarr.open_group(truth, mode="r+").attrs[STORE_ID_ATTR] = "re-made"
    assert not is_current(out, stores["f"], stores["b"])
    del meta["truth_store_id"]  # an evaluation from before the key existed
    (tmp_path / "ev" / MARKER).write_text(json.dumps(meta))
    assert is_current(out, stores["f"], stores["b"])


def test_one_member_forecast_is_scored_and_said_to_have_no_spread(stores, tmp_path):
    """A one-member forecast scores with zero spread (its CRPS is its mean absolute error, at
    most its RMSE), and the report's notes say so: spread/skill 0 is a property of M = 1, not a
    finding. The 5-member baseline gets no such note."""
    f1 = str(tmp_path / "f1.zarr")
    one = xr.open_zarr(stores["f"]).isel(realization=[0])
    for v in one.variables.values():
        v.encoding = {}
    one.to_zarr(f1, consolidated=False)
    evaluate(
        f1,
        stores["t"],
        str(tmp_path / "e"),
        baseline_path=stores["b"],
        engine="memory",
        plots=False,
    )
    meta = json.load(open(tmp_path / "e" / "evaluation.json"))
    assert meta["ensemble_size"] == 1 and meta["baseline_ensemble_size"] == 5
    said = [n for n in meta["notes"] if "1 member" in n]
    assert len(said) == 1 and said[0].startswith("the forecast store has 1 member"), meta["notes"]
    card = xr.open_dataset(tmp_path / "e" / "scorecard.nc")["value"]
    assert (card.sel(metric="spread_skill") == 0).all()
    crps, rmse = card.sel(metric="crps"), card.sel(metric="rmse")
    assert (crps > 0).all() and (crps <= rmse + 1e-12).all()


def test_what_the_baseline_lacks_is_said_not_left_out_silently(stores, tmp_path, capsys):
    """Scored against a baseline, only the init times, lead times and variables both stores hold
    are scored: the notes (report and stderr) name what of the forecast was left out."""
    b = str(tmp_path / "b.zarr")
    part = xr.open_zarr(stores["b"]).isel(time=slice(0, 3), prediction_timedelta=slice(0, 2))
    levels = part["level"].values
    part["temperature"] = part["temperature"].where(part["level"] != levels[-1])
    part = part.sel(level=levels[:-1])  # the baseline lacks temperature at the last level
    for v in part.variables.values():
        v.encoding = {}
    part.to_zarr(b, consolidated=False)
    res = evaluate(
        stores["f"], stores["t"], str(tmp_path / "e"), baseline_path=b, engine="memory", plots=False
    )
    fc = xr.open_zarr(stores["f"])
    last_init = str(np.datetime_as_string(fc["time"].values[3], unit="s"))
    last_lead = int(fc["prediction_timedelta"].values[2] // np.timedelta64(1, "h"))
    want = [
        f"1 of the forecast's 3 variable/levels not scored: the baseline lacks them "
        f"(temperature/{int(levels[-1])})",
        f"1 of the forecast's 4 init times not scored: the baseline lacks them ({last_init})",
        f"1 of the forecast's 3 lead times not scored: the baseline lacks them ({last_lead} h)",
    ]
    assert [n for n in res.notes if "the baseline lacks" in n] == want
    err = capsys.readouterr().err
    assert all(f"note: {w}" in err for w in want), err
    meta = json.load(open(tmp_path / "e" / "evaluation.json"))
    assert meta["n_init_times"] == 3 and len(meta["lead_times_hours"]) == 2


def test_gencasts_own_prediction_layout_scores_as_the_wb2_store(stores, tmp_path):
    """GenCast's rollout output (`sample`, a `batch` of one, `time` = lead times, valid times in
    a `datetime` coordinate) is one init time's forecast: scored like the same members in
    WeatherBench 2's schema (it was refused: no 'prediction_timedelta')."""
    one = xr.open_zarr(stores["f"]).isel(time=[1]).load()
    for v in one.variables.values():
        v.encoding = {}
    wb2 = str(tmp_path / "wb2.zarr")
    one.to_zarr(wb2, consolidated=False)
    init = one["time"].values[0]
    gc = one.isel(time=0, drop=True).rename(
        {"realization": "sample", "prediction_timedelta": "time"}
    )
    gc = gc.expand_dims(batch=1).assign_coords(
        datetime=(("batch", "time"), (init + gc["time"].values)[None])
    )
    native = str(tmp_path / "gencast.nc")
    gc.to_netcdf(native, engine="h5netcdf")
    common = dict(engine="memory", plots=False)
    a = evaluate(wb2, stores["t"], str(tmp_path / "a"), **common)
    b = evaluate(native, stores["t"], str(tmp_path / "b"), ensemble_dim="sample", **common)
    xr.testing.assert_allclose(a.scorecard, b.scorecard, rtol=1e-12)
    two = gc.isel(batch=[0, 0])
    two.to_netcdf(tmp_path / "two.nc", engine="h5netcdf")
    with pytest.raises(DataError, match=r"store .* has 2 batches .* expected one"):
        evaluate(str(tmp_path / "two.nc"), stores["t"], str(tmp_path / "c"), **common)
    with pytest.raises(DataError, match=r"truth store .* has a 'sample' dim .* not analyses"):
        evaluate(wb2, native, str(tmp_path / "d"), **common)  # predictions given as the truth
