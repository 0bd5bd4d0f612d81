"""Channel layout of GenCast's task (reference notes §3.4)."""

from __future__ import annotations

import numpy as np
import pytest

from gencast_rmmd.config import from_dict
from gencast_rmmd.data import normalization as nz
from gencast_rmmd.data.task import TaskConfig, gencast_task
from gencast_rmmd.errors import ConfigError


def test_full_gencast_channel_counts_and_order():
    lay = gencast_task().layout
    assert lay.n_inputs == 176 and lay.n_targets == 84 and lay.n_forcings == 4
    assert lay.n_denoiser_grid_features == 264
    names = [lay.inputs[i][0] for i in range(lay.n_inputs)]
    # sorted names, digits before letters; each variable contiguous
    order = list(dict.fromkeys(names))
    assert order == sorted(order)
    assert order[:3] == ["10m_u_component_of_wind", "10m_v_component_of_wind", "2m_temperature"]
    sl = lay.input_slices()
    assert sl["geopotential"].stop - sl["geopotential"].start == 26
    assert sl["land_sea_mask"].stop - sl["land_sea_mask"].start == 1
    # time-major then level within a variable
    g = lay.inputs[sl["geopotential"]]
    assert [c[1] for c in g] == [0] * 13 + [1] * 13
    assert [c[2] for c in g[:13]] == sorted(c[2] for c in g[:13])
    merged = [(lay.targets + lay.forcings)[i][0] for i in lay.noisy_block_index]
    assert list(dict.fromkeys(merged)) == sorted(set(merged)) and len(merged) == 88


def test_residual_and_next_inputs_roundtrip():
    task = TaskConfig(
        input_variables=("2m_temperature", "temperature", "year_progress_sin", "land_sea_mask"),
        target_variables=("2m_temperature", "temperature", "total_precipitation_12hr"),
        forcing_variables=("year_progress_sin",),
        static_variables=("land_sea_mask",),
        pressure_levels=(500, 850),
    )
    lay = task.layout
    rng = np.random.default_rng(0)
    stats = {
        k: {
            v: (rng.uniform(1, 2, size=()) if not v.startswith("temperature") else None) for v in []
        }
        for k in ("mean", "stddev", "diffs_stddev")
    }
    import xarray as xr

    def ds():
        return xr.Dataset(
            {
                "2m_temperature": rng.uniform(1, 2),
                "temperature": ("level", rng.uniform(1, 2, 2)),
                "total_precipitation_12hr": rng.uniform(1, 2),
                "year_progress_sin": rng.uniform(1, 2),
                "land_sea_mask": rng.uniform(1, 2),
            },
            coords={"level": [500, 850]},
        )

    stats = {"mean": ds(), "stddev": ds(), "diffs_stddev": ds()}
    norm = nz.NormalizationArrays.from_stats(stats, lay)
    x_in = rng.normal(size=(3, lay.n_inputs)).astype(np.float32)
    y = rng.normal(size=(3, lay.n_targets)).astype(np.float32)
    res = nz.residual_targets(norm, y, x_in)
    np.testing.assert_allclose(nz.targets_from_residuals(norm, res, x_in), y, rtol=1e-5, atol=1e-5)
    f = rng.normal(size=(3, lay.n_forcings)).astype(np.float32)
    nxt = nz.next_inputs(lay, x_in, y, f)
    isl = lay.input_slices()
    # newest frame of 2m_temperature is the new state; oldest frame is the old newest frame
    t2 = isl["2m_temperature"]
    assert nxt[0, t2.start] == x_in[0, t2.start + 1]
    assert nxt[0, t2.start + 1] == y[0, lay.target_slices()["2m_temperature"].start]
    assert nxt[0, isl["land_sea_mask"].start] == x_in[0, isl["land_sea_mask"].start]
    assert nxt[0, isl["year_progress_sin"].start + 1] == f[0, 0]


def test_unknown_variable_is_config_error():
    with pytest.raises(ConfigError, match="unknown variable 'tempreature'"):
        from_dict(
            TaskConfig,
            {"input_variables": ["tempreature"], "target_variables": ["temperature"]},
            source="t.yaml",
        )
