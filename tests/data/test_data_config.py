"""DataConfig and the configs/data YAML files."""

from __future__ import annotations

import pytest

from gencast_rmmd.config import dump_yaml, from_dict
from gencast_rmmd.data.config import ARCO_ERA5, DataConfig, load_data_config
from gencast_rmmd.errors import ConfigError


def test_gencast_1p0deg_is_the_full_task():
    cfg = load_data_config("gencast_1p0deg")
    # No token: FSSPEC_GS_TOKEN applies where set, else an anonymous read of the public bucket.
    assert cfg.source == ARCO_ERA5 and cfg.token is None
    assert cfg.grid.method == "subsample" and cfg.grid.subsample_factor == 4
    lay = cfg.task.layout
    assert lay.n_inputs + lay.n_targets + lay.n_forcings == 264
    assert len(cfg.task.pressure_levels) == 13


def test_embedded_config():
    cfg = load_data_config("embedded")
    assert cfg.is_embedded
    assert {500, 850} <= set(cfg.task.pressure_levels)
    assert 6 <= len(cfg.task.pressure_levels) <= 8
    a, b = cfg.split("train")
    assert a < b


def test_roundtrip_yaml(tmp_path):
    cfg = load_data_config("embedded", overrides=["nature_run.seed=3", "grid.method=conservative"])
    assert cfg.nature_run.seed == 3 and cfg.grid.method == "conservative"
    p = tmp_path / "c.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_data_config(str(p)) == cfg


@pytest.mark.parametrize(
    "override, fragment",
    [
        (
            "task.target_variables=[2m_temperature, bogus_variable]",
            "unknown variable 'bogus_variable'",
        ),
        ("grid.method=bilinear", "grid.method"),
        ("time_start=notadate", "time_start"),
        ('splits.train=["2001-01-01", "2000-01-01"]', "after stop"),
        ("nature_run.dt_minutes=7", "dt_minutes"),
        ("nature_run.output_hours=0", "output_hours: must divide 24"),
        ("nature_run.output_hours=5", "output_hours: must divide 24"),
        ("nature_run.output_hours=36", "output_hours: must divide 24"),
        ("nature_run.output_hours=-12", "output_hours: must divide 24"),
        ("nature_run.colour=1", "unknown key"),
    ],
)
def test_bad_values_are_named(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_data_config("embedded", overrides=[override])


def test_missing_task_is_an_error():
    with pytest.raises(ConfigError, match="task"):
        from_dict(DataConfig, {"source": "x.zarr"})
