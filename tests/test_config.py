"""Tests for the strict YAML config loader."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gencast_rmmd.config import dump_yaml, from_dict, load_config
from gencast_rmmd.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 1e-3
    mode: Literal["a", "b"] = "a"

    def validate(self):
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, found {self.rate}")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    steps: int = 10
    levels: tuple[int, ...] = (500, 850)
    inner: Inner = Inner()
    maybe: float | None = None


def test_loads_and_round_trips(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nsteps: 3\ninner:\n  rate: 0.5\n  mode: b\nlevels: [1, 2]\n")
    cfg = load_config(Outer, p)
    assert cfg == Outer(name="x", steps=3, levels=(1, 2), inner=Inner(rate=0.5, mode="b"))
    p2 = tmp_path / "d.yaml"
    p2.write_text(dump_yaml(cfg))
    assert load_config(Outer, p2) == cfg


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: x\nstepz: 3\n", "unknown key 'stepz'"),
        ("name: x\nsteps: three\n", "key 'steps': expected int"),
        ("steps: 3\n", "missing required key 'name'"),
        ("name: x\ninner:\n  mode: c\n", "key 'inner.mode': expected one of 'a', 'b'"),
        ("name: x\ninner:\n  rate: -1\n", "rate must be > 0"),
        ("name: x\nlevels: 5\n", "key 'levels': expected a list of int"),
        ("name: x\nsteps: true\n", "expected int"),
        ("- a\n- b\n", "expected a mapping at the top level"),
    ],
)
def test_errors_name_file_key_and_allowed(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(Outer, p)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


@dataclasses.dataclass(frozen=True)
class Seeded:
    seed: int = 0
    init_seed: int = 0
    offset: int = 0


def test_seeds_outside_32_bits_are_refused_naming_the_key():
    """Any `seed` / `*_seed` field: a negative value was an internal ValueError from NumPy once
    the run had begun (`teacher train --seed -1` left a run directory behind), and a JAX key
    keeps a seed's low 32 bits, so 2**32 + 5 gave seed 5's numbers."""
    import jax

    assert (
        jax.random.key_data(jax.random.PRNGKey(2**32 + 5))
        == jax.random.key_data(jax.random.PRNGKey(5))
    ).all()  # fmt: skip  (why the limit is there)
    assert from_dict(Seeded, {"seed": 2**32 - 1, "init_seed": 3, "offset": -1}).offset == -1
    for key in ("seed", "init_seed"):
        for bad in (-1, 2**32, 2**64):
            with pytest.raises(
                ConfigError, match=rf"key '{key}': a seed must be in \[0, 2\*\*32\) .*found {bad}"
            ):
                from_dict(Seeded, {key: bad})
    with pytest.raises(ConfigError, match=r"key 'inner.seed': a seed must be in \[0, 2\*\*32\)"):
        from_dict(Nested, {}, overrides=["inner.seed=-7"])


@dataclasses.dataclass(frozen=True)
class Nested:
    inner: Seeded = Seeded()


def test_overrides():
    cfg = from_dict(Outer, {"name": "x"}, overrides=["inner.rate=0.25", "levels=[7]", "maybe=2"])
    assert cfg.inner.rate == 0.25 and cfg.levels == (7,) and cfg.maybe == 2.0
    with pytest.raises(ConfigError, match="unknown key 'inner.nope'"):
        from_dict(Outer, {"name": "x"}, overrides=["inner.nope=1"])
    with pytest.raises(ConfigError, match="expected the form"):
        from_dict(Outer, {"name": "x"}, overrides=["novalue"])


@dataclasses.dataclass(frozen=True)
class WithMaps:
    name: str = "x"
    table: dict[str, float] = dataclasses.field(default_factory=dict)
    maybe_inner: Inner | None = None


def test_an_overrides_unknown_key_is_named_as_the_override_not_the_file(tmp_path):
    """The config file holds no such key: the error names the `--set` override, its unknown part
    and the class's allowed keys; keys inside a dict field or an optional config stay free or
    are checked like any other."""
    path = tmp_path / "cfg.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, path, ["inner.nope.deeper=1"])
    assert str(e.value).startswith("override 'inner.nope.deeper=1': unknown key 'inner.nope' in")
    assert "allowed keys: mode, rate" in str(e.value) and str(path) not in str(e.value)
    with pytest.raises(
        ConfigError, match=r"^override 'training.top=1': unknown key 'training.top'"
    ):
        from_dict(Outer, {"name": "x"}, overrides=["top=1"], shown_prefix="training.")
    with pytest.raises(ConfigError, match=r"unknown key 'maybe_inner.rat' in Inner"):
        from_dict(WithMaps, {}, overrides=["maybe_inner.rat=1"])
    cfg = from_dict(WithMaps, {}, overrides=["table.anything=2", "maybe_inner.rate=0.5"])
    assert cfg.table == {"anything": 2.0} and cfg.maybe_inner.rate == 0.5


def test_a_bad_value_from_an_override_names_the_override(tmp_path):
    """A value the file does not hold is not blamed on the file: a wrong type or seed names the
    override; a `validate()` error names the file with the overrides of that part of the config;
    a bad value in the file still names the file alone."""
    path = tmp_path / "cfg.yaml"
    path.write_text("name: x\nsteps: 3\n")
    with pytest.raises(ConfigError, match=r"^override 'steps=abc': key 'steps': expected int"):
        load_config(Outer, path, ["steps=abc"])
    with pytest.raises(ConfigError) as e:
        load_config(Outer, path, ["inner.rate=-1", "steps=4"])
    want = f"{path} with --set inner.rate=-1: inner: rate must be > 0, found -1.0"
    assert str(e.value) == want
    with pytest.raises(ConfigError, match=r"^override 'seed=-1': key 'seed': a seed must be"):
        from_dict(Seeded, {}, overrides=["seed=-1"])
    with pytest.raises(ConfigError, match=r"^override 'training.steps=x': key 'steps'"):
        from_dict(Outer, {"name": "x"}, overrides=["steps=x"], shown_prefix="training.")
    with pytest.raises(ConfigError, match=r"^override 'table.a=\[1\]': key 'table.a'"):
        from_dict(WithMaps, {"table": {"b": 1.0}}, overrides=["table.a=[1]"])
    with pytest.raises(ConfigError, match=r"^<dict>: key 'table.b'"):
        from_dict(WithMaps, {"table": {"b": "x"}}, overrides=["table.a=1"])
    path.write_text("name: x\nsteps: abc\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: key 'steps': expected int"):
        load_config(Outer, path, ["inner.rate=2"])


def test_nan_and_infinite_floats_are_refused_naming_the_key():
    """A `validate()` range check never sees NaN (every comparison with it is False): `rho=nan`
    or `mmd_weight=nan` were accepted and trained on NaN. NaN is refused for every field, in
    any spelling and behind `X | None`; so is an infinite float, except where the class lists
    the key in `UNBOUNDED` (GenCast's `churn_max_noise_level: .inf`)."""
    for over in ("inner.rate=nan", "inner.rate=.NaN", "maybe=nan"):
        with pytest.raises(
            ConfigError, match=r"key '(inner.rate|maybe)': expected a number, found NaN"
        ):
            from_dict(Outer, {"name": "x"}, overrides=[over])
    with pytest.raises(ConfigError, match=r"key 'inner.rate': expected a number, found NaN"):
        from_dict(Outer, {"name": "x", "inner": {"rate": float("nan")}})
    for over in ("inner.rate=inf", "maybe=-.inf"):
        with pytest.raises(ConfigError, match=r"expected a finite number, found -?inf .*no key of"):
            from_dict(Outer, {"name": "x"}, overrides=[over])
    from gencast_rmmd.model.configs import ModelConfig

    base = load_config(ModelConfig, "tiny", kind="model")
    assert base.sampler_config.churn_max_noise_level == float("inf")
    for key in (
        "sampler_config.rho",
        "sampler_config.max_noise_level",
        "noise_config.training_max_noise_level",
    ):
        with pytest.raises(
            ConfigError,
            match=rf"'{key}': expected a finite number, found inf \((only churn_max_noise_level|no key of NoiseConfig)",
        ):
            load_config(ModelConfig, "tiny", [f"{key}=inf"], kind="model")
        with pytest.raises(ConfigError, match=rf"'{key}': expected a number, found NaN"):
            load_config(ModelConfig, "tiny", [f"{key}=nan"], kind="model")


@pytest.mark.parametrize(
    "cls_path, name, override, message",
    [
        ("gencast_rmmd.image.config:ImageConfig", "digits", "data.num_classes=0", r"num_classes must be >= 1, found 0"),
        ("gencast_rmmd.image.config:ImageConfig", "digits", "data.label_offset=-1", r"label_offset must be >= 0"),
        ("gencast_rmmd.image.config:ImageConfig", "digits", "model.heads=-1", r"heads must be >= 1, found -1"),
        ("gencast_rmmd.image.config:ImageConfig", "digits", "model.channels=[32, 0]", r"channels must all be >= 1"),
        ("gencast_rmmd.image.config:ImageConfig", "digits", "mmd.aux_reg_weight=-1", r"aux_reg_weight must be >= 0"),
        ("gencast_rmmd.model.configs:ModelConfig", "tiny", "denoiser_architecture_config.sparse_transformer_config.block_q=0", r"block_q: must be >= 1, found 0"),
        ("gencast_rmmd.model.configs:ModelConfig", "tiny", "sampler_config.noise_level_inflation_factor=-1", r"noise_level_inflation_factor: must be > 0"),
        ("gencast_rmmd.cli.quickstart_chain:QuickstartConfig", "default", "nature_run_spinup_days=-1", r"nature_run_spinup_days: must be >= 0, found -1"),
        ("gencast_rmmd.cli.quickstart_chain:QuickstartConfig", "default", "teacher_learning_rate=-1", r"teacher_learning_rate: must be > 0"),
    ],
)  # fmt: skip
def test_counts_and_sizes_out_of_range_are_refused_at_load(cls_path, name, override, message):
    """Values that were accepted and failed later (or trained a broken model): negative layer
    and head counts of the image U-ViT, 0 classes, negative attention block sizes, a negative
    churn inflation, a negative spin-up or teacher learning rate in a quickstart profile."""
    import importlib

    module, cls = cls_path.split(":")
    kind = {"ImageConfig": "image", "ModelConfig": "model", "QuickstartConfig": "quickstart"}[cls]
    with pytest.raises(ConfigError, match=message):
        load_config(getattr(importlib.import_module(module), cls), name, [override], kind=kind)


def test_float_literal_without_dot():
    # PyYAML reads `1e-4` as a string (YAML 1.1); as a float field it is the number.
    cfg = from_dict(Outer, {"name": "x"}, overrides=["inner.rate=1e-4", "maybe=-2E3"])
    assert cfg.inner.rate == 1e-4 and cfg.maybe == -2000.0
    with pytest.raises(ConfigError, match="inner.rate"):
        from_dict(Outer, {"name": "x"}, overrides=["inner.rate=1e-4x"])


def test_missing_file_is_clear():
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, "/nonexistent/x.yaml")


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=5), max_size=4
    )
)
def test_random_mappings_never_crash_untyped(data):
    """Any mapping either loads into a valid config or raises ConfigError, never anything else."""
    data = {"name": "x", **data}
    try:
        cfg = from_dict(Outer, data)
    except ConfigError:
        return
    assert isinstance(cfg, Outer)


@pytest.mark.parametrize(
    ("cls", "kind", "name", "key"),
    [
        ("gencast_rmmd.data.config:DataConfig", "data", "embedded", "time_stop"),
        ("gencast_rmmd.distill.gencast:DistillConfig", "distill", "tiny", "data.train_start"),
    ],
)
def test_dates_that_are_not_iso_are_refused_naming_the_key(cls, kind, name, key):
    import importlib

    module, attr = cls.split(":")
    config_cls = getattr(importlib.import_module(module), attr)
    # A date YAML would read as a calendar date stays the string it was written as.
    cfg = load_config(config_cls, name, [f"{key}=2020-01-01"], kind=kind)
    for part in key.split("."):
        cfg = getattr(cfg, part)
    assert cfg == "2020-01-01"
    with pytest.raises(
        ConfigError, match=rf"{key.split('.')[-1]}: not an ISO date/time: '2020-13-01'"
    ):
        load_config(config_cls, name, [f"{key}=2020-13-01"], kind=kind)
    # A UTC offset: the stores' times are naive UTC (xarray's time selection raised on it).
    for offset in ("2020-01-01T05:00+05:00", "2020-01-01T00Z", "2020-01-01T00:00-0300"):
        with pytest.raises(ConfigError, match=rf"'{re.escape(offset)}' has a UTC offset; give"):
            load_config(config_cls, name, [f"{key}={offset}"], kind=kind)


def test_teacher_training_dates_that_are_not_iso_are_refused():
    from gencast_rmmd.training.teacher import TeacherTrainingConfig

    base = {"train_start": "2020-01-01", "train_end": None}
    assert from_dict(TeacherTrainingConfig, base).train_start == "2020-01-01"
    with pytest.raises(ConfigError, match=r"train_end: not an ISO date/time: 'last week'"):
        from_dict(TeacherTrainingConfig, dict(base, train_end="last week"))


@pytest.mark.parametrize(
    ("cls", "kind", "name", "prefix", "start", "end"),
    [
        ("gencast_rmmd.data.config:DataConfig", "data", "embedded", "", "time_start", "time_stop"),
        ("gencast_rmmd.distill.gencast:DistillConfig", "distill", "tiny", "data.", "train_start",
         "train_end"),
        ("gencast_rmmd.training.teacher:TeacherTrainingConfig", None, None, "", "train_start",
         "train_end"),
    ],
)  # fmt: skip
def test_a_window_that_ends_before_it_starts_is_refused(cls, kind, name, prefix, start, end):
    """Every configured time window (the data's, the teacher's and the student's training
    window): an end before the start was an empty window, reported only once the data was read
    ('holds 0 init times'); the same instant at both ends is one time."""
    import importlib

    module, attr = cls.split(":")
    config_cls = getattr(importlib.import_module(module), attr)

    def load(a, b):
        sets = [f"{prefix}{start}={a}", f"{prefix}{end}={b}"]
        if name is None:
            return from_dict(config_cls, {}, overrides=sets)
        return load_config(config_cls, name, sets, kind=kind)

    load("2001-01-01", "2001-01-01")
    with pytest.raises(
        ConfigError, match=rf"{start} 2001-01-01T12 is after {end} 2001-01-01 \(an empty window\)"
    ):
        load("2001-01-01T12", "2001-01-01")


def test_named_configs_ship_with_the_package():
    """The named configs (`--config tiny`, quickstart profiles, ...) are package data: a plain or
    wheel install (a Dataflow worker, a container) finds them, not only an editable checkout.
    Every file under the package's configs/ is matched by pyproject's package-data globs, and
    the repository's configs/ is the same directory."""
    import pathlib
    import tomllib

    import gencast_rmmd
    from gencast_rmmd.config import CONFIG_ROOT, resolve_config_path

    package = pathlib.Path(gencast_rmmd.__file__).resolve().parent
    repo = package.parent
    assert CONFIG_ROOT == package / "configs"
    with open(repo / "pyproject.toml", "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["gencast_rmmd"]
    files = {p for p in CONFIG_ROOT.rglob("*") if p.is_file()}
    assert len(files) >= 10 and files == {p for g in globs for p in package.glob(g)}
    assert (repo / "configs").resolve() == CONFIG_ROOT
    assert resolve_config_path("tiny", "model") == CONFIG_ROOT / "model" / "tiny.yaml"
