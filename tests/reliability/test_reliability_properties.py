"""Property-based tests (hypothesis) of the config loader on the real project configs, and of the
store validator under random, combined corruptions.

They complement `tests/test_config.py` (a toy dataclass) and `tests/data/test_data_validate.py`
(one corruption at a time): here every shipped config and the real config classes are fuzzed, and
several corruptions are applied at once (no problem may mask another), NaN/Inf are planted at
random places and must be counted exactly.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import REPO, tiny_canonical_ds, tiny_task

from gencast_rmmd.config import apply_overrides, dump_yaml, from_dict, load_config, to_dict
from gencast_rmmd.errors import ConfigError


def _config_classes() -> dict[str, type]:
    """configs/<kind>/ -> the dataclass its files load into (kinds whose class exists)."""
    from gencast_rmmd.data.config import DataConfig
    from gencast_rmmd.model.configs import ModelConfig

    out: dict[str, type] = {"data": DataConfig, "model": ModelConfig}
    try:  # areas built in parallel: fuzz their configs once they exist
        from gencast_rmmd.distill.gencast import DistillConfig

        out["distill"] = DistillConfig
    except ImportError:
        pass
    try:
        from gencast_rmmd.image.config import ImageConfig

        out["image"] = ImageConfig
    except ImportError:
        pass
    return out


def _shipped_configs() -> list[tuple[str, pathlib.Path]]:
    classes = _config_classes()
    return [
        (kind, p)
        for kind in sorted(classes)
        for p in sorted((REPO / "configs" / kind).glob("*.yaml"))
    ]


SHIPPED = _shipped_configs()
# Shipped configs that need a value only the user can give (a local file), as on the CLI.
NEEDS = {"image/imagenet64.yaml": ["data.path=/data/imagenet64/train.npz"]}


def _needs(path: pathlib.Path) -> list[str]:
    return NEEDS.get(f"{path.parent.name}/{path.name}", [])


@pytest.mark.parametrize("kind, path", SHIPPED, ids=[f"{k}/{p.name}" for k, p in SHIPPED])
def test_every_shipped_config_loads_and_round_trips(kind, path, tmp_path):
    cls = _config_classes()[kind]
    cfg = load_config(cls, path, _needs(path))
    again = tmp_path / "again.yaml"
    again.write_text(dump_yaml(cfg))
    assert load_config(cls, again) == cfg


def _leaves(tree: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, value) of every leaf of a plain dict tree (lists are leaves)."""
    if isinstance(tree, dict):
        out = []
        for k, v in tree.items():
            out += _leaves(v, prefix + (k,))
        return out
    return [(prefix, tree)]


def _in_free_mapping(cls: type, path: tuple) -> bool:
    """True if the leaf at `path` lies inside a `dict[str, T]` field (any key is allowed there)."""
    import dataclasses
    import typing

    tp: Any = cls
    for k in path[:-1]:
        if typing.get_origin(tp) is dict:
            return True
        if not dataclasses.is_dataclass(tp):
            return False
        tp = typing.get_type_hints(tp)[k]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) and args:
            tp = args[0]
    return typing.get_origin(tp) is dict


def _set(tree: dict, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value


def _del(tree: dict, path: tuple) -> None:
    for k in path[:-1]:
        tree = tree[k]
    del tree[path[-1]]


WRONG_TYPED = st.one_of(
    st.text(min_size=1, max_size=6).filter(lambda s: s.strip().lower() not in {"inf", "nan"}),
    st.lists(st.integers(), min_size=1, max_size=2),
    st.dictionaries(st.text(min_size=1, max_size=3), st.integers(), min_size=1, max_size=2),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_configs_fail_cleanly(data):
    """A random mutation of a shipped config either loads or raises ConfigError naming the key:
    unknown keys and wrong types are always rejected, never a crash or a silent accept."""
    kind, path = data.draw(st.sampled_from(SHIPPED), label="config")
    cls = _config_classes()[kind]
    base = apply_overrides(yaml.safe_load(path.read_text()), _needs(path))
    leaves = [lp for lp in _leaves(base) if lp[0]]
    mutation = data.draw(st.sampled_from(["unknown", "wrong-type", "delete", "garbage"]))
    tree = copy.deepcopy(base)
    where, old = data.draw(st.sampled_from(leaves), label="leaf")
    dotted = ".".join(map(str, where))
    if mutation == "unknown" and not _in_free_mapping(cls, where):
        suffix = data.draw(st.text("abcxyz_", min_size=1, max_size=4))
        bad_key = str(where[-1]) + "_" + suffix
        _set(tree, where[:-1] + (bad_key,), old)
        with pytest.raises(ConfigError, match="unknown key"):
            from_dict(cls, tree, str(path))
        return
    if mutation == "wrong-type" and not _in_free_mapping(cls, where):
        value = data.draw(WRONG_TYPED)
        if isinstance(old, str) and isinstance(value, str):
            value = [1]  # a string field accepts any string
        if isinstance(old, list) and isinstance(value, list):
            value = {"x": 1}
        if isinstance(value, dict) and _in_free_mapping(cls, (*where, "_")):
            value = [1]  # the field itself is a dict[str, T] (e.g. null by default): any dict
        _set(tree, where, value)
        with pytest.raises(ConfigError) as e:
            from_dict(cls, tree, str(path))
        assert dotted.split(".")[0] in str(e.value), (dotted, str(e.value))
        return
    if mutation in ("delete", "unknown", "wrong-type"):
        _del(tree, where)
    else:
        _set(
            tree,
            where,
            data.draw(
                st.recursive(
                    st.none() | st.integers() | st.text(max_size=3),
                    lambda c: st.lists(c, max_size=2),
                    max_leaves=3,
                )
            ),
        )
    try:
        cfg = from_dict(cls, tree, str(path))
    except ConfigError as e:
        assert str(path) in str(e)
        return
    assert isinstance(cfg, cls)
    assert from_dict(cls, to_dict(cfg)) == cfg


@settings(max_examples=60, deadline=None)
@given(
    key=st.lists(
        st.sampled_from(["task", "grid", "method", "nature_run", "days", "x", "token"]),
        min_size=1,
        max_size=3,
    ),
    value=st.text(max_size=8),
)
def test_random_overrides_fail_cleanly(key, value):
    """`--set key=value` with random keys and YAML text: a valid config or one ConfigError."""
    from gencast_rmmd.data.config import DataConfig

    base = yaml.safe_load((REPO / "configs" / "data" / "embedded.yaml").read_text())
    try:
        cfg = from_dict(DataConfig, base, "embedded.yaml", [".".join(key) + "=" + value])
    except ConfigError:
        return
    assert isinstance(cfg, DataConfig)


# ------------------------------------------------------------------------------------------------
# Store validator.

validate = pytest.importorskip(
    "gencast_rmmd.data.validate", reason="gencast_rmmd.data.validate (data area) not landed yet"
)

BASE = tiny_canonical_ds(n_times=6)


def _c_missing_var(ds, rng):
    return ds.drop_vars("mean_sea_level_pressure"), "missing-variable"


def _c_missing_level(ds, rng):
    return ds.sel(level=[500]), "missing-level"


def _c_time_gap(ds, rng):
    t = ds["time"].values.copy()
    t[-1] = t[-1] + np.timedelta64(24, "h")
    return ds.assign_coords(time=t), "time-gaps"


def _c_duplicate_time(ds, rng):
    t = ds["time"].values.copy()
    t[2] = t[1]
    return ds.assign_coords(time=t), "duplicate-times"


def _c_dtype(ds, rng):
    return ds.assign(land_sea_mask=ds["land_sea_mask"].astype(np.int32)), "dtype"


def _c_static_varies(ds, rng):
    z = ds["geopotential_at_surface"].expand_dims(time=ds["time"]).copy(deep=True)
    z[-1] = z[-1] + 1.0
    return ds.assign(geopotential_at_surface=z), "static-varies"


CORRUPTIONS = {
    "missing-variable": _c_missing_var,
    "missing-level": _c_missing_level,
    "time-gaps": _c_time_gap,
    "duplicate-times": _c_duplicate_time,
    "dtype": _c_dtype,
    "static-varies": _c_static_varies,
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chosen=st.sets(st.sampled_from(sorted(CORRUPTIONS)), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_combined_corruptions_are_all_reported(chosen, seed):
    """Several problems at once: each is reported with its own code (none masks another)."""
    rng = np.random.default_rng(seed)
    ds = BASE.copy(deep=True)
    codes = set()
    for name in sorted(chosen):
        ds, code = CORRUPTIONS[name](ds, rng)
        codes.add(code)
    got = {p.code for p in validate.check_store(ds, tiny_task())}
    assert codes <= got, (sorted(codes), sorted(got))


@settings(max_examples=40, deadline=None)
@given(
    var=st.sampled_from(["2m_temperature", "mean_sea_level_pressure", "temperature"]),
    n_bad=st.integers(1, 6),
    kind=st.sampled_from([np.nan, np.inf, -np.inf]),
    seed=st.integers(0, 2**16),
)
def test_planted_nonfinite_values_are_counted_exactly(var, n_bad, kind, seed):
    """NaN/Inf planted at random points of one variable: one non-finite problem for exactly that
    variable, with the exact count and the time of the first bad value."""
    rng = np.random.default_rng(seed)
    ds = BASE.copy(deep=True)
    x = ds[var].values
    flat = rng.choice(x.size, size=n_bad, replace=False)
    x.reshape(-1)[flat] = kind
    ds[var].values = x
    problems = [p for p in validate.check_store(ds, tiny_task()) if p.code == "non-finite"]
    assert len(problems) == 1, problems
    msg = problems[0].message
    assert repr(var) in msg and f"found {n_bad} NaN/Inf" in msg, msg
    first_t = np.unravel_index(flat.min(), x.shape)[0]
    assert str(ds["time"].values[first_t])[:19] in msg, msg


def test_clean_tiny_store_has_no_problems():
    assert validate.check_store(BASE, tiny_task()) == []
