"""Small shared helpers for safe outputs and reads (one implementation of each idea).

- `current_umask()` and `publish_mode(path)`: files and directories made with
  `tempfile.mkstemp` / `mkdtemp` are private (0600 / 0700). Outputs written under a temporary
  name and renamed into place must end up with the permissions a plain `open()` / `mkdir()` would
  give (0666 / 0777 minus the umask), or a team sharing a run directory cannot read exported
  checkpoints, statistics or scorecards. Files are written through `remote.written` (or
  `remote.write_text`), which does this; a directory renamed into place calls `publish_mode(tmp)`
  before `os.replace`.
- `load_or_data_error(obj, store, where)`: load a lazy xarray object; a chunk that cannot be
  decoded (truncated or corrupt file: zarr/numcodecs raise RuntimeError, ValueError, OSError, ...)
  becomes one `DataError` naming the store, the variable and where, instead of an internal error.
- `file_sha256(path)`: the hex SHA-256 of a file's bytes, remembered per (device, inode, size,
  mtime) so that the checks of a long chain hash a 1 GB checkpoint once, not once per stage.
- `changed_digests(recorded, current)`, `changed_inputs_phrase(...)` and
  `refuse_changed_inputs(...)`: which of the inputs a run or checkpoint recorded by content
  (SHA-256) or store id now differ at the same paths, so that a trained state is never
  continued, nor counted as done, against inputs it never saw.
- `current_record(path, current)`: a JSON output whose recorded `inputs` match the current ones
  (a stage's "done and made from these files" check).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Mapping
from typing import Any

from gencast_rmmd.errors import DataError

_UMASK_LOCK = threading.Lock()
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()
_SETTLED_NS = 2_000_000_000  # see file_sha256


def current_umask() -> int:
    """The process umask (read from /proc on Linux; elsewhere set and restored under a lock)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike) -> None:
    """Give `path` (a file or a directory tree made private by tempfile) the default permissions
    of a plain file (0666 & ~umask) or directory (0777 & ~umask)."""
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    if not os.path.isdir(path):
        os.chmod(path, file_mode)
        return
    for root, dirs, files in os.walk(path):
        for d in dirs:
            p = os.path.join(root, d)
            if stat.S_IMODE(os.stat(p).st_mode) == 0o700:
                os.chmod(p, dir_mode)
        for f in files:
            p = os.path.join(root, f)
            if stat.S_IMODE(os.stat(p).st_mode) == 0o600:
                os.chmod(p, file_mode)
    os.chmod(path, dir_mode)


def load_or_data_error(
    obj: Any, store: str | os.PathLike, where: str = "", threads: int = 1
) -> Any:
    """`obj.load()` for a lazy xarray Dataset/DataArray read from `store`; an undecodable chunk
    raises `DataError` naming the store, the variable (a Dataset is loaded variable by variable)
    and `where` (e.g. "time 2020-01-01T00"). `threads` > 1 loads up to that many variables at
    once (a store by URL, where each read is a round trip)."""
    import xarray as xr

    at = f" at {where}" if where else ""

    def one(da: xr.DataArray, name: str) -> xr.DataArray:
        try:
            return da.load()
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:  # codecs and stores raise many types for a bad chunk
            raise DataError(
                f"store {os.fspath(store)!r}: cannot read variable {name!r}{at}: a chunk is "
                f"corrupt or unreadable ({type(e).__name__}: {e}); re-create or re-download "
                "the store"
            ) from None

    if isinstance(obj, xr.Dataset):
        names = list(obj.data_vars)
        if threads > 1 and len(names) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(threads, len(names))) as pool:
                loaded = list(pool.map(lambda v: one(obj[v], str(v)), names))
            return obj.assign(dict(zip(names, loaded)))
        return obj.assign({v: one(obj[v], str(v)) for v in names})
    return one(obj, str(obj.name))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes.

    Remembered per (path, device, inode, size, mtime in ns): a file rewritten in place or replaced
    by a rename (what every writer here does) changes at least one of them, so the digest is
    recomputed then; an unchanged file is read once per process. File timestamps tick coarsely
    (milliseconds), so a file modified less than `_SETTLED_NS` before it was hashed is not
    remembered (git's "racily clean" rule): a same-size rewrite within one tick cannot hide.
    """
    import hashlib
    import time

    from gencast_rmmd.remote import is_url, local_file

    path = os.fspath(path)
    if is_url(path):  # the digest of its bytes, read from the local copy
        path = local_file(path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _DIGESTS_LOCK:
        found = _DIGESTS.get(key)
    if found is not None:
        return found
    settled = time.time_ns() - st.st_mtime_ns > _SETTLED_NS
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if settled:
        with _DIGESTS_LOCK:
            _DIGESTS[key] = digest
    return digest


def changed_digests(recorded: Mapping[str, Any], current: Mapping[str, str]) -> list[str]:
    """The keys of `current` whose digest `recorded` holds with another value. A key `recorded`
    lacks (a record written before that input was keyed) counts as unchanged."""
    return [k for k in current if k in recorded and str(recorded[k]) != current[k]]


def current_record(
    path: str | os.PathLike, current: Mapping[str, str], *, require_record: bool = False
) -> dict | None:
    """The JSON object in the file `path` when it was made from the inputs `current`: its
    `inputs` hold no other digest for them (`changed_digests`). None when the file is missing,
    unreadable or not an object, when an input changed, or, with `require_record`, when it has no
    `inputs` record (written before records were kept; without `require_record` such a file is
    taken as current)."""
    import json
    import pathlib

    p = pathlib.Path(path)
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):  # unreadable, or not JSON
        return None
    if not isinstance(rec, dict):
        return None
    inputs = rec.get("inputs")
    if not isinstance(inputs, dict):
        return None if require_record else rec
    return None if changed_digests(inputs, current) else rec


def changed_inputs_phrase(
    recorded: Mapping[str, Any], current: Mapping[str, str], names: Mapping[str, str]
) -> str | None:
    """None when no input changed (`changed_digests`), else a phrase naming each changed one by
    `names[key]`, e.g. "another teacher (SHA-256 3f2a9c01b7e4..., now 9d0e11aa4c52...)" (keys
    ending in `_sha256` are digests; others, such as `data_store_id`, store ids)."""
    changed = changed_digests(recorded, current)
    if not changed:
        return None

    def short(value: Any) -> str:
        text = str(value)
        if text == "None":
            return "none"
        return text.removeprefix("sha256:")[:12] + "..."

    return " and ".join(
        f"{names[k]} ({'SHA-256' if k.endswith('_sha256') else 'store id'} "
        f"{short(recorded[k])}, now {short(current[k])})"
        for k in changed
    )


def refuse_changed_inputs(
    out: str | os.PathLike,
    record: str | os.PathLike,
    current: Mapping[str, str],
    inputs: Mapping[str, tuple[str, str]],
    kind: str,
    redo: str,
) -> None:
    """Refuse to resume the run in `out` when its JSON `record` of input digests (written when
    it began) differs from `current` for some input: its trained state would be continued
    against inputs it never saw. `inputs[key]` = (what to call another such input, its path).
    No record (a run from before records were kept) takes the current inputs."""
    import json

    from gencast_rmmd.errors import OutputError

    if not os.path.isfile(record):
        return
    with open(record) as f:
        old = json.load(f)
    what = changed_inputs_phrase(old, current, {k: name for k, (name, _) in inputs.items()})
    if what:
        paths = ", ".join(inputs[k][1] for k in changed_digests(old, current))
        raise OutputError(
            f"{os.fspath(out)} holds {kind} begun from {what} at the same path ({paths}); "
            f"delete {os.fspath(out)} to {redo}, or use another --out"
        )
