"""Opening and aligning stores: names, latitude order, common variables/levels, valid times."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gencast_rmmd.errors import DataError
from gencast_rmmd.evaluation.crps import fair_crps
from gencast_rmmd.evaluation.stores import align, canonical_grid, check_same_grid, scored_pairs
from gencast_rmmd.evaluation.synthetic import synthetic_pair


def test_scored_pairs_and_alignment():
    fc, tr = synthetic_pair(n_init=3, n_lead=2, members=2, levels=(500, 850))
    tr = canonical_grid(tr)
    assert np.all(np.diff(tr["latitude"].values) > 0)
    check_same_grid(fc, tr)
    assert scored_pairs(fc, tr, "realization") == [
        ("2m_temperature", None),
        ("temperature", 500),
        ("temperature", 850),
    ]
    # Only levels both stores have; only variables both stores have.
    assert scored_pairs(fc, tr.sel(level=[850]), "realization") == [
        ("2m_temperature", None),
        ("temperature", 850),
    ]
    assert scored_pairs(fc, tr.drop_vars("2m_temperature"), "realization") == [
        ("temperature", 500),
        ("temperature", 850),
    ]
    with pytest.raises(DataError, match="not in both"):
        scored_pairs(fc, tr, "realization", variables=["geopotential"])
    # `--variables temperature temperature` scored each level twice (96 entries for 48)
    assert scored_pairs(fc, tr, "realization", variables=["temperature", "temperature"]) == [
        ("temperature", 500),
        ("temperature", 850),
    ]
    # Valid time = init + lead: dropping the last truth time drops the last init time.
    al = align(fc, tr.isel(time=slice(0, -1)))
    assert len(al.init_times) == 2 and len(al.dropped) == 1
    al = align(fc, tr, training_period=("2019-01-01", "2020-01-01T12:00"))
    np.testing.assert_array_equal(al.overlapping, fc["time"].values[:1])
    with pytest.raises(DataError, match="grids differ"):
        check_same_grid(fc, tr.isel(longitude=slice(0, 8)))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=8),
    st.floats(-60, 60, allow_nan=False),
)
def test_fair_crps_pair_formula_property(members, y):
    ens = np.array(members)
    m = len(ens)
    pairs = np.abs(ens[:, None] - ens[None, :]).sum() / (m * (m - 1))
    want = np.abs(ens - y).mean() - 0.5 * pairs
    assert fair_crps(ens, np.array(y)) == pytest.approx(want, abs=1e-9)
