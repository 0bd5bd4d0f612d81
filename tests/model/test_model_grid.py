"""Grid rules and the grid/channel loss weights (reference notes §2.6, §2.7)."""

from __future__ import annotations

import numpy as np
import pytest

from gencast_rmmd.data.task import TaskConfig, gencast_task
from gencast_rmmd.errors import ConfigError, DataError
from gencast_rmmd.model import grid


def test_infer_spacing_three_rules():
    assert grid.infer_latitude_spacing(grid.equiangular_latitudes(32, False)) == "equiangular"
    assert (
        grid.infer_latitude_spacing(grid.equiangular_latitudes(181, True))
        == "equiangular_with_poles"
    )
    assert grid.infer_latitude_spacing(grid.gauss_latitudes(32)) == "gauss"
    lat = -87.1875 + 5.625 * np.arange(32)  # the embedded grid, as documented
    np.testing.assert_allclose(lat, grid.equiangular_latitudes(32, False))
    spec = grid.grid_spec(lat, 5.625 * np.arange(64))
    assert spec.max_wavenumber == 31 and spec.nlat == 32 and spec.nlon == 64
    spec = grid.grid_spec(np.linspace(-90, 90, 181), np.arange(360.0))
    assert spec.spacing == "equiangular_with_poles" and spec.max_wavenumber == 179


def test_grid_errors_name_expected_and_found():
    with pytest.raises(DataError, match="ascending"):
        grid.infer_latitude_spacing(np.linspace(90, -90, 181))
    with pytest.raises(DataError, match="needs 360 longitudes"):
        grid.grid_spec(np.linspace(-90, 90, 181), np.arange(0, 360, 0.5))
    with pytest.raises(DataError, match="match none"):
        grid.infer_latitude_spacing(np.array([-80.0, -10.0, 0.0, 30.0]))


def _cell_area_fractions(lat):
    """Brute force: area of each latitude band between midpoints (clipped at the poles)."""
    lat = np.deg2rad(lat)
    edges = np.concatenate([[-np.pi / 2], (lat[1:] + lat[:-1]) / 2, [np.pi / 2]])
    area = np.sin(edges[1:]) - np.sin(edges[:-1])
    return area / area.sum()


@pytest.mark.parametrize(
    "lat",
    [
        grid.equiangular_latitudes(32, False),
        grid.equiangular_latitudes(181, True),
        grid.equiangular_latitudes(19, True),
    ],
)
def test_latitude_weights_are_mean_one_cell_areas(lat):
    w = grid.latitude_weights(lat)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w / w.sum(), _cell_area_fractions(lat), rtol=1e-5, atol=1e-9)


def test_pole_rows_get_polar_caps():
    lat = grid.equiangular_latitudes(19, True)
    d = np.deg2rad(10.0)
    w = grid.latitude_weights(lat)
    raw_pole = np.sin(d / 4) ** 2
    raw_next = np.cos(np.deg2rad(lat[1])) * np.sin(d / 2)
    np.testing.assert_allclose(w[0] / w[1], raw_pole / raw_next, rtol=1e-5)
    np.testing.assert_allclose(w[0], w[-1])
    # No poles: plain cos(lat), normalised.
    lat = grid.equiangular_latitudes(32, False)
    c = np.cos(np.deg2rad(lat))
    np.testing.assert_allclose(grid.latitude_weights(lat), c / c.mean(), rtol=1e-6)


def test_level_weights():
    w = grid.level_weights((50, 500, 1000))
    np.testing.assert_allclose(w, np.array([50, 500, 1000]) / (1550 / 3), rtol=1e-6)
    np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-6)


def test_channel_weights_reproduce_gencast_variable_sum():
    """sum_c w_c mse_c equals GenCast's sum_v w_v mean_level(level_w * mse) (brute force)."""
    task = gencast_task()
    lay = task.layout
    w = grid.channel_weights(lay)
    assert w.shape == (84,)
    rng = np.random.default_rng(0)
    mse = rng.uniform(0.5, 2.0, size=84)
    lw = np.array(task.pressure_levels, float) / np.mean(task.pressure_levels)
    expected = 0.0
    for v, sl in lay.target_slices().items():
        wv = grid.GENCAST_VARIABLE_WEIGHTS.get(v, 1.0)
        if sl.stop - sl.start == 13:
            expected += wv * np.mean(lw * mse[sl])
        else:
            expected += wv * mse[sl][0]
    np.testing.assert_allclose(np.sum(w * mse), expected, rtol=1e-5)
    # Per variable the weights sum to the variable weight (level weights have mean 1).
    for v, sl in lay.target_slices().items():
        np.testing.assert_allclose(
            w[sl].sum(), grid.GENCAST_VARIABLE_WEIGHTS.get(v, 1.0), rtol=1e-5
        )
    # 6 surface (2m_t 1.0 + five at 0.1) + 6 atmospheric at 1.0
    np.testing.assert_allclose(w.sum(), 1.0 + 5 * 0.1 + 6.0, rtol=1e-5)


def test_channel_weights_options_and_errors():
    task = TaskConfig(
        input_variables=("2m_temperature", "temperature", "land_sea_mask"),
        target_variables=("2m_temperature", "temperature"),
        forcing_variables=(),
        static_variables=("land_sea_mask",),
        pressure_levels=(500, 850),
    )
    w = grid.channel_weights(task.layout, {"temperature": 2.0}, per_level=False)
    # targets sorted: 2m_temperature, temperature@500, temperature@850
    np.testing.assert_allclose(w, [1.0, 1.0, 1.0])
    w = grid.channel_weights(task.layout)
    np.testing.assert_allclose(w, [1.0, 500 / 675 / 2, 850 / 675 / 2], rtol=1e-6)
    with pytest.raises(ConfigError, match="not target variables"):
        grid.channel_weights(task.layout, {"geopotential": 1.0})
    # A negative weight would reward error in that variable; NaN poisons the loss.
    with pytest.raises(ConfigError, match=r"finite and >= 0, found temperature: -1"):
        grid.channel_weights(task.layout, {"temperature": -1.0})
    with pytest.raises(ConfigError, match=r"finite and >= 0, found 2m_temperature: nan"):
        grid.channel_weights(task.layout, {"2m_temperature": float("nan")})
    with pytest.raises(ConfigError, match="every target variable weighs 0"):
        grid.channel_weights(task.layout, {"temperature": 0.0, "2m_temperature": 0.0})
    np.testing.assert_allclose(grid.channel_weights(task.layout, {"temperature": 0.0})[1:], 0)
