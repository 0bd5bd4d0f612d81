"""GenCast checkpoints in the official `.npz` layout: read, validate, write.

Layout (reference notes §4): one `np.savez` archive whose keys are the paths of a tree joined with
`:`. Dataclass fields become path segments (fields that are None are omitted), lists/tuples
become "0", "1", ..., every leaf is a numpy array (strings and scalars are 0-d arrays), so the file
loads with `np.load(allow_pickle=False)`. Sections:

- `description`, `license` (kept verbatim; the license string is authoritative for the weights);
- `params:<haiku module path>:<w|b>`;
- `task_config:*` (GenCast's 5 task fields), `denoiser_architecture_config:*` (with
  `sparse_transformer_config:*`), `sampler_config:*`, `noise_config:*`, `noise_encoder_config:*`;
- `extra:*`: ours, absent from official files: `extra:student_sampler_config:*` (a distilled
  student), `extra:provenance:*` (teacher, config, data store, `train_start`, `train_end`),
  `extra:task:step_hours` when the step is not 12 h.

Reading collects every problem (pickled entries, unknown or missing keys, bad types, parameter
names/shapes/dtypes that differ from what the model expects) and raises one `CheckpointError`
listing all of them.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import types
import typing
import zipfile
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import numpy as np

from gencast_rmmd.config import float_problem
from gencast_rmmd.data.task import TaskConfig, variable_kind
from gencast_rmmd.errors import CheckpointError
from gencast_rmmd.model.configs import (
    DenoiserArchitectureConfig,
    ModelConfig,
    NoiseConfig,
    NoiseEncoderConfig,
    SamplerConfig,
)
from gencast_rmmd.remote import written

T = TypeVar("T")
SEP = ":"

# The sections of GenCast's `CheckPoint` plus our `extra`.
SECTIONS = (
    "description",
    "license",
    "params",
    "task_config",
    "denoiser_architecture_config",
    "sampler_config",
    "noise_config",
    "noise_encoder_config",
    "extra",
)
OFFICIAL_TASK_FIELDS = (
    "input_variables",
    "target_variables",
    "forcing_variables",
    "pressure_levels",
    "input_duration",
)


@dataclasses.dataclass(frozen=True, eq=False)
class GenCastCheckpoint:
    """The contents of a GenCast checkpoint (GenCast's `CheckPoint`, plus `extra`).

    params: {haiku module path: {"w"|"b": np.ndarray}}. extra: a nested mapping of plain values
    (str, int, float, bool, numpy arrays, lists, mappings), written under `extra:`.
    """

    params: dict[str, dict[str, np.ndarray]]
    task_config: TaskConfig
    denoiser_architecture_config: DenoiserArchitectureConfig
    sampler_config: SamplerConfig = SamplerConfig()
    noise_config: NoiseConfig = NoiseConfig()
    noise_encoder_config: NoiseEncoderConfig = NoiseEncoderConfig()
    description: str = ""
    license: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(
            denoiser_architecture_config=self.denoiser_architecture_config,
            noise_encoder_config=self.noise_encoder_config,
            sampler_config=self.sampler_config,
            noise_config=self.noise_config,
            description=self.description,
        )

    def num_params(self) -> tuple[int, int]:
        """(number of scalars, number of tensors)."""
        leaves = [a for m in self.params.values() for a in m.values()]
        return int(sum(a.size for a in leaves)), len(leaves)


# ------------------------------------------------------------------------------------------------
# Flattening.


def _leaf(value: Any, key: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object:
        raise CheckpointError(f"cannot write {key!r}: value {value!r} is not a plain array/scalar")
    return arr


def flatten_tree(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten dataclasses / mappings / lists to {':'-joined key: np.ndarray} (None omitted)."""
    out: dict[str, np.ndarray] = {}

    def join(k: str) -> str:
        if SEP in k:
            raise CheckpointError(f"key segment {k!r} must not contain {SEP!r}")
        return f"{prefix}{SEP}{k}" if prefix else k

    if tree is None:
        return out
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        for f in dataclasses.fields(tree):
            out.update(flatten_tree(getattr(tree, f.name), join(f.name)))
    elif isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten_tree(v, join(str(k))))
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            out.update(flatten_tree(v, join(str(i))))
    else:
        out[prefix] = _leaf(tree, prefix)
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{':'-joined key: value} -> nested dicts."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        node = root
        parts = key.split(SEP)
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise CheckpointError(f"key {key!r} nests under a leaf")
            node = nxt
        if isinstance(node.get(parts[-1]), dict):
            raise CheckpointError(f"key {key!r} is both a leaf and a section")
        node[parts[-1]] = value
    return root


# ------------------------------------------------------------------------------------------------
# Typed conversion (tree of numpy leaves -> config dataclasses), collecting errors.


def _scalar(value: Any) -> Any:
    arr = np.asarray(value)
    if arr.ndim != 0:
        raise TypeError(f"expected a scalar, found an array of shape {arr.shape}")
    return arr.item()


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        last: Exception | None = None
        for a in args:
            try:
                return _convert(value, a, key)
            except (TypeError, ValueError) as e:
                last = e
        raise TypeError(str(last))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError("expected a section, found a single value")
        return _build(tp, value, key)
    if origin is tuple:
        if not isinstance(value, dict):
            raise TypeError("expected a list (keys 0, 1, ...), found a single value")
        idx = sorted(value, key=lambda k: int(k) if k.isdigit() else -1)
        if idx != [str(i) for i in range(len(value))]:
            raise TypeError(f"expected list keys 0..{len(value) - 1}, found {sorted(value)}")
        elem = get_args(tp)[0]
        return tuple(_convert(value[i], elem, f"{key}{SEP}{i}") for i in idx)
    if isinstance(value, dict):
        raise TypeError(f"expected a single value, found a section with keys {sorted(value)}")
    v = _scalar(value)
    if tp is bool:
        if isinstance(v, bool):
            return v
        raise TypeError(f"expected a bool, found {v!r}")
    if tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise TypeError(f"expected an int, found {v!r}")
    if tp is float:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        raise TypeError(f"expected a float, found {v!r}")
    if tp is str:
        if isinstance(v, str):
            return v
        if isinstance(v, bytes):
            return v.decode()
        raise TypeError(f"expected a string, found {v!r}")
    raise TypeError(f"unsupported field type {tp!r}")


class _Errors(Exception):
    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = messages


def _build(cls: type[T], tree: dict[str, Any], prefix: str) -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    errors: list[str] = []
    for k in sorted(set(tree) - set(fields)):
        errors.append(f"unknown key {prefix}{SEP}{k} (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}{SEP}{name}"
        if name not in tree:
            optional = type(None) in get_args(hints[name])
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if optional:
                    kwargs[name] = None
                else:
                    errors.append(f"missing key {key}")
            elif optional:
                kwargs[name] = None  # None fields are omitted on write.
            continue
        try:
            kwargs[name] = _convert(tree[name], hints[name], key)
            problem = float_problem(cls, name, kwargs[name])
            if problem:
                errors.append(f"{key}: {problem}")
        except _Errors as e:
            errors.extend(e.messages)
        except (TypeError, ValueError) as e:
            errors.append(f"{key}: {e}")
    if errors:
        raise _Errors(errors)
    try:
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if validate is not None:
            validate()
    except (TypeError, ValueError) as e:
        raise _Errors([f"{prefix}: {e}"]) from None
    return obj


def config_to_tree(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a nested dict of plain values (for `extra:` sections)."""
    return unflatten(flatten_tree(cfg)) if flatten_tree(cfg) else {}


def config_from_tree(cls: type[T], tree: dict[str, Any], where: str = "extra") -> T:
    """Rebuild config dataclass `cls` from a tree read from a checkpoint (e.g. `ckpt.extra[...]`).

    Raises CheckpointError listing every bad key.
    """
    try:
        return _build(cls, _as_arrays(tree), where)
    except _Errors as e:
        raise CheckpointError(f"bad {where} in checkpoint: " + "; ".join(e.messages)) from None


def _as_arrays(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _as_arrays(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return {str(i): _as_arrays(v) for i, v in enumerate(tree)}
    return np.asarray(tree)


def _plain(tree: Any) -> Any:
    """numpy leaves -> Python scalars/strings (0-d) or arrays; {"0":..,"1":..} -> lists."""
    if isinstance(tree, dict):
        out = {k: _plain(v) for k, v in tree.items()}
        if out and sorted(out, key=lambda k: int(k) if k.isdigit() else -1) == [
            str(i) for i in range(len(out))
        ]:
            return [out[str(i)] for i in range(len(out))]
        return out
    arr = np.asarray(tree)
    return arr.item() if arr.ndim == 0 else arr


# ------------------------------------------------------------------------------------------------
# Task conversion: GenCast's TaskConfig has 5 fields; ours derives statics and frames from them.


def _duration_hours(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*(h|hours?|d|days?)\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"input_duration: expected e.g. '24h', found {text!r}")
    n = int(m.group(1))
    return n * 24 if m.group(2).lower().startswith("d") else n


def task_to_tree(task: TaskConfig) -> dict[str, Any]:
    """Our TaskConfig as GenCast's 5 task fields."""
    return {
        "input_variables": list(task.input_variables),
        "target_variables": list(task.target_variables),
        "forcing_variables": list(task.forcing_variables),
        "pressure_levels": [int(x) for x in task.pressure_levels],
        "input_duration": task.input_duration,
    }


def task_from_tree(tree: dict[str, Any], step_hours: int = 12) -> TaskConfig:
    """GenCast's task fields -> our TaskConfig (statics = the static variables among inputs)."""
    errors: list[str] = []
    hints = {
        "input_variables": tuple[str, ...],
        "target_variables": tuple[str, ...],
        "forcing_variables": tuple[str, ...],
        "pressure_levels": tuple[int, ...],
        "input_duration": str,
    }
    vals: dict[str, Any] = {}
    for k in sorted(set(tree) - set(hints)):
        errors.append(f"unknown key task_config{SEP}{k} (allowed: {', '.join(hints)})")
    for k, tp in hints.items():
        if k not in tree:
            if k in ("forcing_variables", "pressure_levels"):
                vals[k] = ()  # an empty list writes no keys
                continue
            errors.append(f"missing key task_config{SEP}{k}")
            continue
        try:
            vals[k] = _convert(tree[k], tp, f"task_config{SEP}{k}")
        except (TypeError, ValueError) as e:
            errors.append(f"task_config{SEP}{k}: {e}")
    if errors:
        raise _Errors(errors)
    try:
        hours = _duration_hours(vals["input_duration"])
        if hours % step_hours:
            raise ValueError(
                f"input_duration {vals['input_duration']!r} is not a multiple of {step_hours} h"
            )
        inputs = vals["input_variables"]
        statics = tuple(v for v in inputs if _kind_or_none(v) == "static")
        task = TaskConfig(
            input_variables=inputs,
            target_variables=vals["target_variables"],
            forcing_variables=vals["forcing_variables"],
            static_variables=statics,
            pressure_levels=vals["pressure_levels"],
            input_frames=hours // step_hours,
            step_hours=step_hours,
        )
        task.validate()
    except (ValueError, KeyError) as e:
        raise _Errors([f"task_config: {e}"]) from None
    return task


def _kind_or_none(name: str) -> str | None:
    try:
        return variable_kind(name)
    except KeyError:
        return None


# ------------------------------------------------------------------------------------------------
# Reading and writing.


def checkpoint_to_flat(ckpt: GenCastCheckpoint) -> dict[str, np.ndarray]:
    """The flat {key: array} dict written by `save_checkpoint`."""
    extra = dict(ckpt.extra)
    if ckpt.task_config.step_hours != 12:
        extra["task"] = {**extra.get("task", {}), "step_hours": ckpt.task_config.step_hours}
    tree = {
        "description": ckpt.description,
        "license": ckpt.license,
        "params": {m: {n: np.asarray(a) for n, a in p.items()} for m, p in ckpt.params.items()},
        "task_config": task_to_tree(ckpt.task_config),
        "denoiser_architecture_config": ckpt.denoiser_architecture_config,
        "sampler_config": ckpt.sampler_config,
        "noise_config": ckpt.noise_config,
        "noise_encoder_config": ckpt.noise_encoder_config,
    }
    if extra:
        tree["extra"] = extra
    return flatten_tree(tree)


def save_checkpoint(path: str | os.PathLike, ckpt: GenCastCheckpoint) -> pathlib.Path:
    """Write `ckpt` in the official flat npz layout (atomically: temp file, then rename)."""
    path = pathlib.Path(path)
    flat = checkpoint_to_flat(ckpt)
    with written(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **flat)
    return path


def read_flat(path: str | os.PathLike, prefix: str = "") -> dict[str, np.ndarray]:
    """The arrays of an npz (those whose key starts with `prefix`; the others are not read)
    without unpickling anything; CheckpointError lists every pickled key."""
    flat, errors = _read_flat(path, prefix)
    if errors:
        raise CheckpointError(f"{path}: {len(errors)} problem(s): " + "; ".join(errors))
    return flat


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's `extra:provenance` (what it was made from: scalars as plain Python values;
    {} when it records none), read without its parameters."""
    prefix = "extra:provenance:"
    flat = read_flat(path, prefix)
    return {k[len(prefix) :]: v.item() if v.ndim == 0 else v for k, v in flat.items()}


def _read_flat(
    path: str | os.PathLike, prefix: str = ""
) -> tuple[dict[str, np.ndarray], list[str]]:
    from gencast_rmmd.remote import check_input_file, local_file

    source = os.fspath(path)  # a URL (e.g. the official weights on GCS) is read from a local copy
    path = pathlib.Path(local_file(source, CheckpointError))
    check_input_file(
        path, "checkpoint", "an .npz file (e.g. teacher.npz)", CheckpointError, suffix=".npz"
    )
    with open(path, "rb") as f:
        head = f.read(6)
    if not head.startswith(b"PK") and head != b"\x93NUMPY":
        # np.load would call anything else a pickle, which says nothing useful here
        raise CheckpointError(
            f"{source}: not an .npz archive (expected a zip file, found a file starting {head!r})"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{source}: not a readable .npz archive ({e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{source}: expected an .npz archive, found a single .npy array")
    flat, errors = {}, []
    with data:
        for key in data.files:
            if not key.startswith(prefix):
                continue
            try:
                flat[key] = data[key]
            except ValueError:
                errors.append(f"{key}: holds a pickled Python object (refused, allow_pickle=False)")
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                errors.append(f"{key}: unreadable ({e})")
    return flat, errors


def load_checkpoint(
    path: str | os.PathLike,
    attention_type: str | None = "auto",
    validate_params: bool = True,
) -> GenCastCheckpoint:
    """Read a GenCast checkpoint (official or ours) into typed configs and numpy params.

    attention_type: "auto" (default) replaces a `splash_mha` backend by `triblockdiag_mha`
    (mask_type "full") when not running on a TPU, as GenCast's GPU recipe does; None keeps the
    stored backend; any backend name forces that backend. Raises CheckpointError listing every
    problem found (pickled entries, unknown/missing keys, bad values, non-numeric params and,
    with `validate_params`, every parameter name/shape/dtype that differs from `jax.eval_shape`
    of the model the configs describe).
    """
    from gencast_rmmd.model import configs as configs_lib
    from gencast_rmmd.model import transformer as transformer_lib

    path = os.fspath(path)  # a local path or a URL (`_read_flat` fetches a local copy)
    flat, errors = _read_flat(path)
    tree = unflatten(flat)
    for k in sorted(set(tree) - set(SECTIONS)):
        errors.append(f"unknown section {k!r} (allowed: {', '.join(SECTIONS)})")

    params: dict[str, dict[str, np.ndarray]] = {}
    raw_params = tree.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        errors.append("missing section 'params'")
    else:
        for module, entries in raw_params.items():
            if not isinstance(entries, dict):
                errors.append(f"params{SEP}{module}: expected {{name: array}}, found one array")
                continue
            for name, arr in entries.items():
                if isinstance(arr, dict) or not np.issubdtype(np.asarray(arr).dtype, np.number):
                    errors.append(f"params{SEP}{module}{SEP}{name}: not a numeric array")
                    continue
                params.setdefault(module, {})[name] = np.asarray(arr)

    extra = tree.get("extra", {})
    step_hours = 12
    if isinstance(extra, dict) and isinstance(extra.get("task"), dict):
        try:
            step_hours = int(_scalar(extra["task"].get("step_hours", 12)))
        except (TypeError, ValueError) as e:
            errors.append(f"extra{SEP}task{SEP}step_hours: {e}")

    def section(name: str, build: typing.Callable[[Any], Any], required: bool) -> Any:
        if name not in tree:
            if required:
                errors.append(f"missing section {name!r}")
            return None
        try:
            return build(tree[name])
        except _Errors as e:
            errors.extend(e.messages)
        except (TypeError, ValueError) as e:
            errors.append(f"{name}: {e}")
        return None

    def typed(cls: type) -> typing.Callable[[Any], Any]:
        def build(t: Any) -> Any:
            if not isinstance(t, dict):
                raise TypeError("expected a section, found a single value")
            return _build(cls, t, name_of[cls])

        return build

    name_of = {
        DenoiserArchitectureConfig: "denoiser_architecture_config",
        SamplerConfig: "sampler_config",
        NoiseConfig: "noise_config",
        NoiseEncoderConfig: "noise_encoder_config",
    }

    def build_task(t: Any) -> TaskConfig:
        if not isinstance(t, dict):
            raise TypeError("expected a section, found a single value")
        return task_from_tree(t, step_hours)

    task = section("task_config", build_task, True)
    arch = section("denoiser_architecture_config", typed(DenoiserArchitectureConfig), True)
    sampler = section("sampler_config", typed(SamplerConfig), False) or SamplerConfig()
    noise = section("noise_config", typed(NoiseConfig), False) or NoiseConfig()
    enc = section("noise_encoder_config", typed(NoiseEncoderConfig), False) or NoiseEncoderConfig()
    description = section("description", lambda v: _convert(v, str, "description"), False) or ""
    license_ = section("license", lambda v: _convert(v, str, "license"), False) or ""

    n_param_errors = 0
    if validate_params and task is not None and arch is not None and params:
        try:
            bad = param_mismatches(params, expected_param_shapes(arch, task, enc))
        except (ValueError, KeyError) as e:
            bad = []
            errors.append(f"configs do not describe a buildable model: {e}")
        n_param_errors = len(bad)
        errors.extend(bad)
    if errors:
        detail = (
            f" ({n_param_errors} parameter mismatch(es) with the model)" if n_param_errors else ""
        )
        raise CheckpointError(
            f"{path}: {len(errors)} problem(s) in checkpoint{detail}: " + "; ".join(errors)
        )
    if arch is not None and attention_type is not None:
        if attention_type == "auto":
            run = transformer_lib.resolve_attention_type(arch.sparse_transformer_config)
        else:
            run = attention_type
        if run != arch.sparse_transformer_config.attention_type:
            arch = configs_lib.with_attention_type(
                arch, run, "full" if run != "splash_mha" else None
            )
            arch.validate()
    extra_plain = _plain(extra) if isinstance(extra, dict) else {}
    if isinstance(extra_plain, dict) and isinstance(extra_plain.get("task"), dict):
        extra_plain["task"].pop("step_hours", None)
        if not extra_plain["task"]:
            extra_plain.pop("task")
    return GenCastCheckpoint(
        params=params,
        task_config=task,
        denoiser_architecture_config=arch,
        sampler_config=sampler,
        noise_config=noise,
        noise_encoder_config=enc,
        description=description,
        license=license_,
        extra=extra_plain if isinstance(extra_plain, dict) else {},
    )


# ------------------------------------------------------------------------------------------------
# Validation against the model.


def param_mismatches(params: Any, expected: Any) -> list[str]:
    """Every difference between two {module: {name: array-like}} trees: missing and unexpected
    names, shapes and dtypes (`expected` may hold jax.ShapeDtypeStructs from `jax.eval_shape`)."""

    def flat(t: Any) -> dict[str, Any]:
        return {f"{m}{SEP}{n}": a for m, p in t.items() for n, a in p.items()}

    got, want = flat(params), flat(expected)
    out = [f"missing parameter {k} {tuple(want[k].shape)}" for k in sorted(set(want) - set(got))]
    out += [
        f"unexpected parameter {k} {tuple(np.shape(got[k]))}" for k in sorted(set(got) - set(want))
    ]
    for k in sorted(set(got) & set(want)):
        gs, ws = tuple(np.shape(got[k])), tuple(want[k].shape)
        if gs != ws:
            out.append(f"parameter {k}: expected shape {ws}, found {gs}")
        gd, wd = np.dtype(got[k].dtype), np.dtype(want[k].dtype)
        if gd != wd:
            out.append(f"parameter {k}: expected dtype {wd}, found {gd}")
    return out


def expected_param_shapes(
    arch: DenoiserArchitectureConfig, task: TaskConfig, noise_encoder: NoiseEncoderConfig
) -> dict[str, dict[str, Any]]:
    """{module: {name: ShapeDtypeStruct}} of the model `arch` describes, by `jax.eval_shape`.

    Parameter shapes do not depend on the grid, the mesh level, the k-hop or the attention
    backend, so this evaluates the model on a small grid and a level-1 mesh (cheap even for the
    0.25 deg configs).
    """
    from gencast_rmmd.model.configs import with_attention_type
    from gencast_rmmd.model.denoiser import build_denoiser

    small = with_attention_type(dataclasses.replace(arch, mesh_size=min(arch.mesh_size, 1)), "mha")
    small = dataclasses.replace(
        small,
        sparse_transformer_config=dataclasses.replace(
            small.sparse_transformer_config, attention_k_hop=1
        ),
    )
    lat = -84.375 + 11.25 * np.arange(16)
    lon = 11.25 * np.arange(32)
    return build_denoiser(small, task, lat, lon, noise_encoder).param_shapes()


def check_params(params: Any, expected: Any, source: str = "checkpoint") -> None:
    """Raise CheckpointError listing all mismatches between `params` and `expected`."""
    bad = param_mismatches(params, expected)
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} parameter mismatch(es) with the model: " + "; ".join(bad)
        )


def denoiser_from_checkpoint(
    ckpt: GenCastCheckpoint, lat: np.ndarray, lon: np.ndarray, source: str = "checkpoint"
):
    """(Denoiser, params as jax arrays) for `ckpt` on a lat/lon grid, after checking every
    parameter name, shape and dtype against `jax.eval_shape` of the model."""
    import jax.numpy as jnp

    from gencast_rmmd.model.denoiser import build_denoiser

    try:
        den = build_denoiser(
            ckpt.denoiser_architecture_config, ckpt.task_config, lat, lon, ckpt.noise_encoder_config
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: configs do not describe a buildable model: {e}") from None
    check_params(ckpt.params, den.param_shapes(), source)
    params = {m: {n: jnp.asarray(a) for n, a in p.items()} for m, p in ckpt.params.items()}
    return den, params


def make_checkpoint(
    params: Any,
    task: TaskConfig,
    model: ModelConfig,
    *,
    license: str,
    description: str | None = None,
    extra: dict[str, Any] | None = None,
) -> GenCastCheckpoint:
    """A checkpoint from trained params (jax or numpy) and configs; `node_output_size` is filled
    in explicitly (the official files carry it) without mutating `model`."""
    arch = model.denoiser_architecture_config
    if arch.node_output_size is None:
        arch = dataclasses.replace(arch, node_output_size=task.layout.n_targets)
    np_params = {m: {n: np.asarray(a) for n, a in p.items()} for m, p in params.items()}
    return GenCastCheckpoint(
        params=np_params,
        task_config=task,
        denoiser_architecture_config=arch,
        sampler_config=model.sampler_config,
        noise_config=model.noise_config,
        noise_encoder_config=model.noise_encoder_config,
        description=model.description if description is None else description,
        license=license,
        extra=dict(extra or {}),
    )


# A checkpoint's training grid: ours record it (`extra:provenance:grid`, "LATxLON"); the official
# files, which record no provenance, name their resolution ("GenCast 1p0deg <2019.npz",
# "GenCast 0p25deg Operational <2022.npz").
_DESCRIBED_RESOLUTION = re.compile(r"\b(\d+)p(\d+)deg\b")


def grid_record(lat: Any, lon: Any) -> str:
    """The grid a model is trained on, as its checkpoint records it: "LATxLON" points."""
    return f"{np.size(lat)}x{np.size(lon)}"


def trained_grid_problem(provenance: dict, names: str, lat: Any, lon: Any) -> str | None:
    """What is wrong with running a checkpoint on the grid (`lat`, `lon`), or None: another grid
    than the one its provenance records, or, for a checkpoint without provenance (the official
    files), another spacing than the resolution `names` (its description and file name) gives.
    The network builds on any grid, so a model trained at one resolution ran at another without
    a word, out of its training distribution. Our checkpoints made before grids were recorded
    are not checked."""
    recorded = provenance.get("grid")
    if recorded is not None:
        recorded = str(np.asarray(recorded))
        found = grid_record(lat, lon)
        if recorded != found:
            return f"it was trained on a {recorded} (lat x lon) grid, the data are {found}"
        return None
    if provenance:
        return None
    named = _DESCRIBED_RESOLUTION.search(names or "")
    lat = np.asarray(lat, np.float64)
    if named is None or lat.size < 2:
        return None
    resolution = float(f"{named.group(1)}.{named.group(2)}")
    spacing = float(np.abs(np.diff(lat)).mean())
    if abs(spacing - resolution) > 1e-3 * resolution:
        return (
            f"it is named {named.group(0)} ({resolution:g} deg), the data are on a {spacing:g} "
            f"deg grid ({grid_record(lat, lon)})"
        )
    return None
