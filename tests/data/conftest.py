"""Fixtures for the data tests: small synthetic stores and one short nature run per session."""

from __future__ import annotations

import dataclasses

import pytest
from data_synthetic import canonical_store_ds

from gencast_rmmd.data.config import load_data_config


@pytest.fixture
def small_store(tmp_path):
    ds = canonical_store_ds()
    path = tmp_path / "small.zarr"
    ds.to_zarr(path, consolidated=False)
    return path, ds


# One short nature run per test session (T21, enough spin-up for jets and eddies to form).
SHORT_SPINUP_DAYS = 120
SHORT_DAYS = 40


@pytest.fixture(scope="session")
def short_nature_run(tmp_path_factory):
    from gencast_rmmd.data import nature_run

    cfg = load_data_config("embedded")
    nr_cfg = dataclasses.replace(cfg.nature_run, spinup_days=SHORT_SPINUP_DAYS, days=SHORT_DAYS)
    cache = tmp_path_factory.mktemp("nature_cache")
    path = nature_run.embedded_store(cache, nr_cfg, cfg.task.pressure_levels, progress=False)
    return path, dataclasses.replace(cfg, nature_run=nr_cfg)
