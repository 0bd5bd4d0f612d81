"""Forecast pipeline: WB2-schema store, resume after a crash, Beam == local, user errors,
and the end-to-end chain forecast -> evaluate."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import xarray as xr

from gencast_rmmd.data.config import load_data_config
from gencast_rmmd.data.stats import compute_stats, save_stats
from gencast_rmmd.errors import ConfigError, DataError, OutputError
from gencast_rmmd.evaluation.synthetic import synthetic_canonical_store
from pipelines import forecast as fc_pipe
from pipelines.evaluate import evaluate

INITS = ["2021-01-01T12/2021-01-02T12"]  # 3 init times


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("fc")
    task = load_data_config("embedded").task
    ds = synthetic_canonical_store(str(d / "data.zarr"), task, n_times=12)
    save_stats(compute_stats(ds), str(d / "stats"))
    return {
        "dir": d,
        "data": str(d / "data.zarr"),
        "stats": str(d / "stats"),
        "ds": ds,
        "task": task,
    }


def _run(data, out, **kw):
    args = dict(
        model="persistence:0.3",
        stats_dir=data["stats"],
        data=kw.pop("store", data["data"]),
        out=str(out),
        init_times=INITS,
        members=3,
        lead_steps=2,
        member_block=2,
        progress=False,
    )
    args.update(kw)
    return fc_pipe.run_forecast(**args)


def test_store_schema_and_values(data):
    out = data["dir"] / "det.zarr"
    summary = _run(data, out, model="persistence")  # deterministic persistence
    assert summary["complete"] and summary["regions_written"] == 3 * 2
    assert os.path.exists(out / ".zmetadata")  # zarr format 2, consolidated: WB2 / zarr 2 readers
    log = [json.loads(x) for x in open(str(out) + ".metrics.jsonl")]
    assert len(log) == 6 and all(r["seconds"] > 0 and r["member_steps_per_s"] > 0 for r in log)
    ds = xr.open_zarr(out)
    assert ds.attrs["gencast_rmmd_status"] == "complete"
    for k in ("model", "checkpoint", "sampler", "nfe_per_step", "seed", "ensemble_size"):
        assert k in ds.attrs, k
    t = ds["temperature"]
    assert t.dims == (
        "time",
        "prediction_timedelta",
        "realization",
        "level",
        "latitude",
        "longitude",
    )
    assert ds["2m_temperature"].dims == (
        "time",
        "prediction_timedelta",
        "realization",
        "latitude",
        "longitude",
    )
    assert t.attrs["units"] == "K"
    assert ds["time"].dtype.kind == "M" and ds["prediction_timedelta"].dtype.kind == "m"
    np.testing.assert_array_equal(
        ds["prediction_timedelta"].values // np.timedelta64(1, "h"), [12, 24]
    )
    np.testing.assert_array_equal(ds["realization"].values, [0, 1, 2])
    assert np.all(np.diff(ds["latitude"].values) > 0)
    # Persistence without noise: every member at every lead equals the state at the init time,
    # in physical units.
    truth = data["ds"]["temperature"].sel(time=ds["time"].values)  # (time, level, lat, lon)
    got = t.isel(prediction_timedelta=1, realization=2).values
    np.testing.assert_allclose(got, truth.values, rtol=1e-6)


def test_data_store_by_url(data, tmp_path):
    """`--data` and `--out` may be URLs (fsspec's memory:// here): the forecast reads the data
    as given, records the URL and the store's id, writes the store at the URL (with the Beam
    engine, as on Dataflow), equals the forecast from the same store on disk, and the
    evaluation scores it from the URL as from disk."""
    import zarr

    from gencast_rmmd.data.era5 import STORE_ID_ATTR
    from gencast_rmmd.forecast.store import SPEC_ATTR

    url = "memory://gencast_rmmd_forecast_test/data.zarr"
    out_url = "memory://gencast_rmmd_forecast_test/out.zarr"
    data["ds"].drop_encoding().to_zarr(url, consolidated=False, mode="w")
    zarr.open_group(url, mode="r+").attrs[STORE_ID_ATTR] = "by-url"
    _run(data, tmp_path / "local.zarr", model="persistence")
    _run(data, out_url, model="persistence", store=url, engine="beam")
    a, b = xr.open_zarr(tmp_path / "local.zarr"), xr.open_zarr(out_url)
    assert b.attrs["data"] == url and a.attrs["data"] == data["data"]
    assert b.attrs["gencast_rmmd_status"] == "complete"
    xr.testing.assert_identical(a.load().drop_attrs(), b.load().drop_attrs())
    assert json.loads(b.attrs[SPEC_ATTR])["data_store_id"] == "by-url"
    assert _run(data, out_url, model="persistence", store=url)["regions_written"] == 0
    kw = dict(engine="memory", plots=False)
    e_local = evaluate(str(tmp_path / "local.zarr"), url, str(tmp_path / "e1"), **kw)
    e_url = evaluate(out_url, url, str(tmp_path / "e2"), **kw)
    assert e_url.scorecard.attrs["forecast"] == out_url
    xr.testing.assert_identical(e_local.scorecard.drop_attrs(), e_url.scorecard.drop_attrs())


def test_resume_after_crash_fills_only_missing_regions(data, monkeypatch):
    ref_out = data["dir"] / "ref.zarr"
    _run(data, ref_out)
    out = data["dir"] / "crash.zarr"
    real_run = fc_pipe._Worker.run
    calls = {"n": 0}

    def flaky(self, item):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("worker died")
        return real_run(self, item)

    monkeypatch.setattr(fc_pipe._Worker, "run", flaky)
    with pytest.raises(RuntimeError, match="worker died"):
        _run(data, out)
    monkeypatch.setattr(fc_pipe._Worker, "run", real_run)
    assert xr.open_zarr(out).attrs["gencast_rmmd_status"] == "incomplete"
    with pytest.raises(DataError, match="incomplete"):
        evaluate(str(out), data["data"], str(data["dir"] / "e_incomplete"), engine="memory")
    summary = _run(data, out)
    assert summary["regions_written"] == 3  # 6 regions, 3 were done before the crash
    a, b = xr.open_zarr(out).load(), xr.open_zarr(ref_out).load()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    # A second re-run has nothing to do.
    assert _run(data, out)["regions_written"] == 0


@pytest.mark.slow
def test_beam_engine_equals_local(data):
    a = data["dir"] / "local.zarr"
    b = data["dir"] / "beam.zarr"
    _run(data, a, members=2, init_times=["2021-01-01T12", "2021-01-02T00"])
    _run(data, b, members=2, init_times=["2021-01-01T12", "2021-01-02T00"], engine="beam")
    xr.testing.assert_identical(
        xr.open_zarr(a).load().drop_attrs(), xr.open_zarr(b).load().drop_attrs()
    )


def test_user_errors(data, tmp_path):
    with pytest.raises(ConfigError, match="members"):
        _run(data, tmp_path / "a.zarr", members=0)
    with pytest.raises(ConfigError, match="members"):
        _run(data, tmp_path / "a.zarr", members=-2)
    with pytest.raises(DataError, match="lack input frames in the data"):
        _run(data, tmp_path / "a.zarr", init_times=["2020-06-01T00"])
    with pytest.raises(DataError, match="lack input frames in the data"):
        _run(data, tmp_path / "a.zarr", init_times=["2021-01-01T00"])  # needs the -12 h frame
    # inside the data's range but off its 12 h axis: the spacing says why
    with pytest.raises(DataError, match=r"2021-01-02T18.*\(time spacing: 12 h\)$"):
        _run(data, tmp_path / "a.zarr", init_times=["2021-01-02T18"])
    with pytest.raises(ConfigError, match="multiple"):
        _run(data, tmp_path / "a.zarr", lead_steps=None, lead_time="18h")
    assert (
        _run(
            data,
            tmp_path / "ok.zarr",
            lead_steps=None,
            lead_time="24h",
            members=1,
            init_times=["2021-01-01T12"],
        )["lead_steps"]
        == 2
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("other content")
    with pytest.raises(OutputError, match="not a forecast store|another"):
        _run(data, busy)
    with pytest.raises(OutputError, match="other settings"):
        _run(data, tmp_path / "ok.zarr", members=2, init_times=["2021-01-01T12"], lead_steps=2)
    with pytest.raises(ConfigError, match="parse"):
        _run(data, tmp_path / "b.zarr", init_times=["yesterday-ish"])
    # NaN in an input frame: refused before any store is created, naming variable and time.
    bad = data["ds"].copy(deep=True)
    bad["temperature"].loc[{"time": np.datetime64("2021-01-02T00")}] = np.nan
    bad_path = str(tmp_path / "nan.zarr")
    bad.to_zarr(bad_path, zarr_format=2)
    with pytest.raises(DataError, match="NaN/Inf in 'temperature'.*2021-01-02T00"):
        _run(data, tmp_path / "c.zarr", store=bad_path)
    assert not (tmp_path / "c.zarr").exists()


def test_init_time_range_step_needs_a_unit():
    """A range STEP without a unit ('.../12') was read by pandas as 12 ns and the range asked
    for ~7e13 times (a MemoryError of hundreds of TiB); it is now one ConfigError naming the
    expected form, as are non-positive or sub-hour steps and ranges of absurd length."""
    parse = fc_pipe.parse_init_times
    assert len(parse(["2001-10-01T00/2001-10-10T12"])) == 20  # default: the model step
    assert len(parse(["2001-10-01T00/2001-10-10T12/12h"])) == 20
    assert len(parse(["2001-10-01T00/2001-10-10T12/1D"])) == 10
    for step in ("12", "0h", "-12h", "90min"):
        with pytest.raises(ConfigError, match=r"positive whole number of hours.*START/END/12h"):
            parse([f"2001-10-01T00/2001-10-10T12/{step}"])
    with pytest.raises(ConfigError, match=f"more than {fc_pipe.MAX_INIT_TIMES}"):
        parse(["2001-10-01T00/2201-10-01T00/1h"])
    # END before START was an empty range, reported as "no init time given"
    with pytest.raises(ConfigError, match=r"ends before it starts \(END 2001-10-01 00:00:00 is"):
        parse(["2001-10-10T12/2001-10-01T00"])
    assert len(parse(["2001-10-01T00/2001-10-01T00"])) == 1  # START == END: one init time
    # a time that a range also covers: named (was "duplicate init times")
    with pytest.raises(
        ConfigError, match=r"1 init time\(s\) given more than once \(e.g. 2001-10-01T12:00"
    ):
        parse(["2001-10-01T00/2001-10-02T00", "2001-10-01T12"])


def test_init_times_with_an_offset_are_taken_in_utc():
    """`2001-10-02T00:00+12:00` is 2001-10-01T12 UTC: it was read as 2001-10-02T00 (the wall
    time, offset dropped), a forecast 12 h off without a word."""
    parse = fc_pipe.parse_init_times
    want = [np.datetime64("2001-10-01T12", "ns")]
    for text in ("2001-10-02T00:00+12:00", "2001-10-01T07:00-05:00", "2001-10-01T12Z"):
        assert parse([text]) == want, text
    assert parse(["2001-10-01T17:00+05:00/2001-10-02T05:00+05:00"]) == [
        np.datetime64("2001-10-01T12", "ns"),
        np.datetime64("2001-10-02T00", "ns"),
    ]


def test_a_lead_time_without_a_unit_is_refused():
    """`--lead-time 12` was read by pandas as 12 ns and refused as '3.33333e-12 h' not a multiple
    of the step; it now says the unit is missing."""
    steps = fc_pipe.lead_steps_from
    assert steps(None, "240h", 12) == 20 and steps(None, "10D", 12) == 20
    for bare in ("12", "240", " 36 ", "1.5", ".5"):
        with pytest.raises(ConfigError, match=rf"--lead-time '{bare}' has no unit; use e\.g\. "):
            steps(None, bare, 12)


def test_persistence_spec_and_data_config(data, tmp_path):
    """`persistence[:NOISE]` parses to its noise scale (None for a checkpoint path); a NOISE that
    is no finite number >= 0 is one ConfigError (it was read as a checkpoint path that 'does not
    exist', and '1.2.3' an internal ValueError). --data-config only sets the persistence task: with
    a checkpoint it is refused before the checkpoint is read (it was silently ignored)."""
    noise = fc_pipe.persistence_noise
    assert noise("persistence") == 0.0
    assert noise("persistence:0.3") == 0.3
    assert noise("persistence:1e-1") == 0.1
    assert noise("runs/teacher.npz") is None and noise("persistence.npz") is None
    for text in ("abc", "-1", "nan", "inf", "", "1.2.3"):
        with pytest.raises(ConfigError, match=rf"finite number >= 0 .*found '{re.escape(text)}'"):
            noise(f"persistence:{text}")
    with pytest.raises(ConfigError, match="--data-config applies to --model persistence only"):
        _run(data, tmp_path / "a.zarr", model=str(tmp_path / "no.npz"), data_config="embedded")
    assert not (tmp_path / "a.zarr").exists()


def test_forecast_then_evaluate_end_to_end(data, tmp_path, capsys):
    from gencast_rmmd.cli import main

    f = str(tmp_path / "f.zarr")
    b = str(tmp_path / "b.zarr")
    common = [
        "--stats",
        data["stats"],
        "--data",
        data["data"],
        "--init-times",
        "2021-01-01T12/2021-01-03T00",
        "--lead-steps",
        "2",
        "--member-block",
        "4",
    ]
    assert (
        main(["forecast", "--model", "persistence:0.3", "--members", "4", "--out", f, *common]) == 0
    )
    shown = capsys.readouterr()
    s = json.loads(shown.out.strip().splitlines()[-1])
    assert s["complete"] and s["members"] == 4
    assert "forecast regions" in shown.err  # the progress bar
    argv = ["forecast", "--model", "persistence", "--members", "1", "--out", b, "--no-progress"]
    assert main([*argv, *common]) == 0
    assert "forecast regions" not in capsys.readouterr().err
    out = str(tmp_path / "eval")
    assert (
        main(
            [
                "evaluate",
                "--forecast",
                f,
                "--baseline",
                b,
                "--truth",
                data["data"],
                "--out",
                out,
                "--engine",
                "memory",
            ]
        )
        == 0
    )
    card = pd_read(os.path.join(out, "scorecard.csv"))
    assert set(card["metric"]) == {"crps", "rmse", "spread_skill"}
    assert {"temperature", "2m_temperature"} <= set(card["variable"])
    assert set(card["lead_time_hours"]) == {12, 24}
    # Persistence truth at lead 0 is exact, so errors are finite and positive at 12 and 24 h.
    crps = card[card.metric == "crps"]
    assert np.isfinite(crps["value"]).all() and (crps["value"] > 0).all()
    for name in ("scorecard.nc", "rank_histograms.nc", "report.html", "scorecard_crps.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    summ = json.load(open(os.path.join(out, "evaluation.json")))["summary"]
    assert summ["models"] == {"forecast": "persistence(noise=0.3)", "baseline": "persistence"}
    assert 0 <= summ["win_rate_crps"] <= 1


def pd_read(path):
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False)


def test_local_engine_opens_the_data_once(data, tmp_path, monkeypatch):
    """Every open of a store by URL costs round trips: the local engine opens it once (the
    check before the store id is read, the store's creation and the worker share it)."""
    opened = []
    real = fc_pipe.open_data
    monkeypatch.setattr(fc_pipe, "open_data", lambda p: opened.append(p) or real(p))
    assert _run(data, tmp_path / "once.zarr")["regions_written"] == 6
    assert opened == [data["data"]]


def test_a_work_item_that_cannot_fit_in_memory_is_refused_before_the_store(
    data, tmp_path, monkeypatch
):
    """`item_bytes` is exactly what a work item gathers (its block's states and the forcings at
    its lead times, measured on a real run); with one byte less available the run is refused
    before any store is made, naming --member-block; with exactly that much it runs. Without
    the check XLA:CPU's failed allocation aborted the process (exit 134) after a minute."""
    held = []
    real_states, real_ic = fc_pipe.store_lib.states_dataset, fc_pipe.initial_conditions

    def states(s, *a):
        held.append(("states", s.nbytes))
        return real_states(s, *a)

    def conditions(*a):
        inputs, forcings = real_ic(*a)
        held.append(("forcings", forcings.nbytes))
        return inputs, forcings

    monkeypatch.setattr(fc_pipe.store_lib, "states_dataset", states)
    monkeypatch.setattr(fc_pipe, "initial_conditions", conditions)
    kw = dict(init_times=["2021-01-01T12"], members=2, lead_steps=3, member_block=2)
    _run(data, tmp_path / "measured.zarr", **kw)
    assert [k for k, _ in held] == ["forcings", "states"]  # one item: the whole block
    spec = fc_pipe.ForecastSpec(
        "persistence", data["stats"], data["data"], "x", ("2021-01-01T12",), 2, 3, 0, 2
    )
    n_lat, n_lon = data["ds"].sizes["lat"], data["ds"].sizes["lon"]
    need = fc_pipe.item_bytes(spec, data["task"], n_lat, n_lon)
    assert need == sum(n for _, n in held)

    monkeypatch.setattr(fc_pipe, "available_memory", lambda: need - 1)
    with pytest.raises(ConfigError, match=r"lower --member-block \(now 2\) or the lead time$"):
        _run(data, tmp_path / "refused.zarr", **kw)
    assert not (tmp_path / "refused.zarr").exists()
    monkeypatch.setattr(fc_pipe, "available_memory", lambda: need)
    assert _run(data, tmp_path / "fits.zarr", **kw)["complete"]
    # On a remote runner the workers' memory is not this machine's: not checked here.
    monkeypatch.setattr(fc_pipe, "runs_here", lambda beam_args: False)
    monkeypatch.setattr(fc_pipe, "available_memory", lambda: 0)
    assert _run(data, tmp_path / "remote.zarr", **kw, engine="beam")["complete"]


def test_a_store_that_cannot_fit_on_the_disk_is_refused_before_it_is_made(
    data, tmp_path, monkeypatch
):
    """A new store is refused when even half its raw size (`store_bytes`; the written stores
    measured 81% of it) exceeds the free space; a store being resumed is not checked (it holds
    part of its data already)."""
    import shutil

    kw = dict(init_times=INITS, members=3, lead_steps=2)
    out = tmp_path / "f.zarr"
    spec = fc_pipe.ForecastSpec(
        "persistence", data["stats"], data["data"], str(out), ("a", "b", "c"), 3, 2, 0, 3
    )
    raw = fc_pipe.store_bytes(spec, data["task"], data["ds"].sizes["lat"], data["ds"].sizes["lon"])
    _run(data, tmp_path / "measured.zarr", **kw)
    written = sum(f.stat().st_size for f in (tmp_path / "measured.zarr").rglob("*") if f.is_file())
    assert raw // 2 < written  # half the raw size is a lower bound of the store on disk

    real = shutil.disk_usage
    free = raw // 2 - 1
    monkeypatch.setattr(
        "gencast_rmmd.remote.shutil.disk_usage", lambda p: real(p)._replace(free=free)
    )
    with pytest.raises(OutputError, match=r"no space left on the device writing .*f\.zarr"):
        _run(data, out, **kw)
    assert not out.exists()
    monkeypatch.setattr(
        "gencast_rmmd.remote.shutil.disk_usage", lambda p: real(p)._replace(free=raw // 2)
    )
    assert _run(data, out, **kw)["complete"]
