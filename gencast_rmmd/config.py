"""One strict loader for every YAML config: frozen dataclasses, typed, validated.

Configs are frozen dataclasses. `load_config(cls, path, overrides)` reads a YAML file, applies
`--set a.b=value` overrides and converts the nested mapping to `cls`:

- an unknown key, a missing required key, a value of the wrong type, or a value that the class's
  `validate()` rejects raises `ConfigError` naming the file, the dotted key and what is allowed
  (a value a `--set` override gave names the override; a `validate()` error names the file with
  the overrides of that part of the config);
- supported field types: `int`, `float`, `str`, `bool`, `X | None`, `Literal[...]`,
  `tuple[T, ...]`, `tuple[T1, T2]`, `dict[str, T]` and nested config dataclasses;
- NaN is refused for every field (a range check in `validate()` never sees it: every comparison
  with NaN is False), and so is an infinite float field unless the class names it in its
  `UNBOUNDED` class attribute (GenCast's `churn_max_noise_level: .inf`);
- a field named `seed` or `*_seed` must be in [0, 2**32) (`seed_problem`: NumPy refuses
  negative seeds, and JAX keys keep a seed's low 32 bits only);
- a dataclass may define `validate(self) -> None` raising `ValueError("...")` for value checks
  (ranges, cross-field rules); the loader reports it with the file and the key prefix.

`to_dict` turns a config back into plain YAML-able data (used to record configs in checkpoints and
run directories).
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import pathlib
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from gencast_rmmd.errors import ConfigError

T = TypeVar("T")

# The named configs ship inside the package (package data), so a plain or wheel install (a
# Dataflow worker, a container) finds them; the repository's `configs/` is a link to them.
CONFIG_ROOT = pathlib.Path(__file__).resolve().parent / "configs"


_FLOAT_LITERAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def resolve_config_path(path: str | pathlib.Path, kind: str | None = None) -> pathlib.Path:
    """Find a config file: an existing path, or a name under `configs/<kind>/` (".yaml" optional).
    A URL (`gs://bucket/configs/model.yaml`, as on a pod whose configs sit in a bucket) gives the
    local copy of its object (`remote.local_file`)."""
    from gencast_rmmd.remote import is_url, local_file

    if is_url(path):
        return pathlib.Path(local_file(str(path), ConfigError))
    p = pathlib.Path(path)
    candidates = [p]
    if kind is not None:
        candidates += [CONFIG_ROOT / kind / p, CONFIG_ROOT / kind / f"{p}.yaml"]
    candidates += [CONFIG_ROOT / p, CONFIG_ROOT / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    if p.exists():  # a directory, a device: not a config, and no name under configs/ either
        from gencast_rmmd.remote import check_input_file

        check_input_file(p, "config", "a YAML file", ConfigError, suffix=".yaml")
    where = f"configs/{kind}/" if kind else "configs/"
    raise ConfigError(
        f"config file {str(path)!r} not found (looked for it as a path and in {where})"
    )


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} items ({', '.join(_type_name(a) for a in args)})"
    if origin is dict:
        return f"a mapping of {_type_name(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, file: str) -> Any:
    file = _source_of(re.sub(r"\[\d+\]", "", key), file)  # an entry an override set (a dict's)

    def fail(extra: str = "") -> typing.NoReturn:
        raise ConfigError(
            f"{file}: key {key!r}: expected {_type_name(tp)}, found {value!r}"
            f" ({type(value).__name__}){extra}"
        )

    origin = get_origin(tp)
    if tp is Any:
        return value
    if _is_nan(value):  # every comparison with NaN is False, so no validate() range check sees it
        raise ConfigError(
            f"{file}: key {key!r}: expected a number, found NaN (no setting takes it)"
        )
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
            return value
        fail()
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            fail()
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, file)
            except ConfigError as e:
                errors.append(e)
        fail()
    if tp is type(None):
        if value is None:
            return None
        fail()
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            fail()
        return _build(tp, value, key, file)
    if origin is tuple:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            fail()
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", file) for i, v in enumerate(value))
        if len(value) != len(args):
            fail(f": expected exactly {len(args)} items")
        return tuple(
            _convert(v, a, f"{key}[{i}]", file) for i, (v, a) in enumerate(zip(value, args))
        )
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        kt, vt = get_args(tp)
        return {
            _convert(k, kt, f"{key}.<key>", file): _convert(v, vt, f"{key}.{k}", file)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in {
            "inf",
            "+inf",
            "-inf",
            ".inf",
            "-.inf",
        }:
            return float(value.strip().lower().replace(".inf", "inf"))
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            # PyYAML (YAML 1.1) reads `1e-4` (no dot) as a string; it is a float to any user.
            return float(value)
        fail()
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    raise TypeError(f"unsupported config field type {tp!r} at {key!r}")


def float_problem(cls: type, name: str, value: Any) -> str | None:
    """What is wrong with `value` as field `name` of config class `cls`, or None: NaN is no
    setting's value, and infinity only that of the fields `cls.UNBOUNDED` lists. (Every
    comparison with NaN is False, so a `validate()` range check would let it through.) Shared by
    this loader and the checkpoint reader (`model.checkpoint`)."""
    if not isinstance(value, float) or math.isfinite(value):
        return None
    if value != value:
        return "expected a number, found NaN (no setting takes it)"
    free = ", ".join(getattr(cls, "UNBOUNDED", ()))
    if name in getattr(cls, "UNBOUNDED", ()):
        return None
    return f"expected a finite number, found {value} (" + (
        f"only {free} of {cls.__name__} may be infinite)"
        if free
        else f"no key of {cls.__name__} may be infinite)"
    )


def _is_nan(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"nan", ".nan"}
    return isinstance(value, float) and value != value


def _is_seed(name: str) -> bool:
    return name == "seed" or name.endswith("_seed")


# Seeds go to JAX keys and NumPy generators. With 32-bit JAX (its default) a key keeps a seed's
# low 32 bits only: seed s and s + 2**32 give the same numbers (`jax.random.PRNGKey(2**32 + 5)`
# equals `PRNGKey(5)`), 2**63 and beyond is an OverflowError, and NumPy takes no negative seed.
SEED_LIMIT = 2**32


def seed_problem(value: int) -> str | None:
    """What is wrong with `value` as a seed, or None (every seed: config keys `seed` and
    `*_seed`, and the commands' `--seed`)."""
    if 0 <= value < SEED_LIMIT:
        return None
    return (
        f"a seed must be in [0, 2**32) (NumPy takes no negative seed; JAX keeps a seed's low 32 "
        f"bits, so larger seeds repeat smaller ones' numbers), found {value}"
    )


# The `--set` overrides of the config being built, by dotted key (as the user typed them):
# an error about a key an override set names the override, not the YAML file that does not
# hold that value, and a `validate()` error names the file with the overrides below it.
_OVERRIDDEN: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "overridden", default=None
)


def _source_of(key: str, file: str) -> str:
    """What to name as the origin of `key`'s value: its override, else the file."""
    overridden = _OVERRIDDEN.get() or {}
    parts = key.split(".")
    for i in range(len(parts), 0, -1):  # `--set a.b={c: 1}` set a.b.c too
        text = overridden.get(".".join(parts[:i]))
        if text is not None:
            return f"override {text!r}"
    return file


def _build(cls: type[T], data: dict, prefix: str, file: str) -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    where = f"{prefix}." if prefix else ""
    below = [t for k, t in (_OVERRIDDEN.get() or {}).items() if k.startswith(where)]
    shown_file = file + (f" with --set {', '.join(below)}" if below else "")
    if unknown:
        raise ConfigError(
            f"{file}: unknown key {where + unknown[0]!r} in {cls.__name__}; "
            f"allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}{name}"
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key, file)
            problem = float_problem(cls, name, kwargs[name])
            if _is_seed(name) and isinstance(kwargs[name], int):
                problem = problem or seed_problem(kwargs[name])
            if problem:
                raise ConfigError(f"{_source_of(key, file)}: key {key!r}: {problem}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{file}: missing required key {key!r} ({_type_name(hints[name])})")
    try:
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if validate is not None:
            validate()
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{shown_file}: {prefix or cls.__name__}: {e}") from None
    return obj


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader less its timestamp rule: config dates and times stay the strings they
    were written as (`time_stop: 2019-12-31` is "2019-12-31", and `2019-13-01` is refused by the
    config's own check with its key, not by the YAML parser's calendar)."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in rules if tag != "tag:yaml.org,2002:timestamp"]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> Any:
    """`yaml.safe_load(text)` with dates and times kept as strings (what every config reader
    uses: files, `--set` values, recorded run configs)."""
    return yaml.load(text, Loader=_ConfigLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `a.b=value` override; the value is read as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Return a copy of `data` with each `a.b=value` override set (creating nested mappings)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {p!r} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return data


def from_dict(
    cls: type[T],
    data: dict,
    source: str = "<dict>",
    overrides: typing.Iterable[str] = (),
    shown_prefix: str = "",
) -> T:
    """Build config `cls` from a plain mapping (strictly), after applying overrides. An
    override's unknown key is named with the override (`{shown_prefix}key=value`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, found {type(data).__name__}"
        )
    overrides = list(overrides)
    for text in overrides:
        _check_override_key(cls, text, shown_prefix)
    data = apply_overrides(data, overrides)
    shown = {".".join(parse_override(t)[0]): shown_prefix + t for t in overrides}
    token = _OVERRIDDEN.set(shown)
    try:
        return _build(cls, data, "", source)
    finally:
        _OVERRIDDEN.reset(token)


def _check_override_key(cls: type, text: str, shown_prefix: str = "") -> None:
    """`ConfigError` naming the override `text` (`--set`) when its key is not a key of config
    class `cls` (before it is applied: the loader's own unknown-key error would name the YAML
    file, which holds no such key). Keys below a field that is not a config class (a `dict`
    field's entries) are left to the loader."""
    parts, _ = parse_override(text)
    node: Any = cls
    for i, part in enumerate(parts):
        node = _dataclass_of(node)
        if node is None:
            return
        fields = {f.name: f for f in dataclasses.fields(node) if f.init}
        if part not in fields:
            key = ".".join(parts[: i + 1])
            raise ConfigError(
                f"override {shown_prefix + text!r}: unknown key {shown_prefix + key!r} in "
                f"{node.__name__}; allowed keys: {', '.join(sorted(fields))}"
            )
        node = get_type_hints(node)[part]


def _dataclass_of(tp: Any) -> type | None:
    """The config class that a field of type `tp` holds (`X` or `X | None`), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if get_origin(tp) in (Union, types.UnionType):
        classes = [a for a in get_args(tp) if dataclasses.is_dataclass(a)]
        if len(classes) == 1:
            return classes[0]
    return None


def as_current(data: Any, build: typing.Callable[[Any], Any]) -> Any:
    """A config saved by an earlier run (its plain dict), as the current code reads it, for a
    resumed run's comparison of old and new settings: keys added to the config classes since then
    take their defaults (the behaviour of the code that made the run), so they do not count as
    changes. `build(data)` loads the dict and returns the loaded config's dict form. `data`
    itself when it no longer loads (a key removed or renamed since, a value now refused): every
    difference then counts. Anything but a dict is returned as it is."""
    if not isinstance(data, dict):  # e.g. an empty or damaged file: not a config to complete
        return data
    try:
        return build(data)
    except (ConfigError, KeyError, TypeError, ValueError):
        return data


def load_config(
    cls: type[T],
    path: str | pathlib.Path,
    overrides: typing.Iterable[str] = (),
    kind: str | None = None,
) -> T:
    """Load a YAML file into the frozen dataclass `cls`, strictly. See the module docstring."""
    from gencast_rmmd.remote import is_url

    p = resolve_config_path(path, kind)
    return from_dict(cls, load_yaml_file(p), str(path) if is_url(path) else str(p), overrides)


def load_yaml_file(path: pathlib.Path) -> Any:
    """`load_yaml` of a file's text; `ConfigError` naming the file when it is not valid YAML."""
    try:
        return load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


# A time's UTC offset at its end (`...T05:00+05:00`, `...T05Z`): the stores' times are naive UTC.
_UTC_OFFSET = re.compile(r"T[\d:.]*(Z|[+-]\d{2}(:?\d{2})?)$", re.IGNORECASE)


def iso_time(value: str, name: str):
    """`value` (a config's ISO date/time) as numpy datetime64; ValueError naming `name` when
    it is none, or when it carries a UTC offset: the stores' times are naive UTC, and xarray
    refused to compare the two (an internal error once the store was open)."""
    import numpy as np

    if isinstance(value, str) and _UTC_OFFSET.search(value.strip()):
        raise ValueError(
            f"{name}: {value!r} has a UTC offset; give the time in UTC without one "
            f"(e.g. {value.strip()[:10]}T00:00)"
        )
    try:
        return np.datetime64(value)
    except ValueError:
        raise ValueError(f"{name}: not an ISO date/time: {value!r}") from None


def check_time_window(cfg: Any, start: str, end: str) -> None:
    """For a `validate()`: raise ValueError naming the field when `cfg`'s field `start` or `end`
    is set (not None) and is not an ISO date/time that numpy reads, or when both are set and
    the window ends before it starts (it would hold no time)."""
    times = {}
    for name in (start, end):
        value = getattr(cfg, name)
        if value is not None:
            times[name] = iso_time(value, name)
    if len(times) == 2 and times[start] > times[end]:
        raise ValueError(
            f"{start} {getattr(cfg, start)} is after {end} {getattr(cfg, end)} (an empty window)"
        )


def to_dict(cfg: Any) -> Any:
    """Config dataclass -> plain dict/list/scalars (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple | list):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_yaml(cfg: Any) -> str:
    """Config dataclass -> YAML text that `load_config` reads back to an equal object."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
