"""What the local caches hold, and which of it can go (`gencast-rmmd data cache [--prune]`).

Three caches, each at its own place (environment variables as in docs/data.md):
- nature runs: `$GENCAST_RMMD_CACHE` (default `~/.cache/gencast_rmmd`), one Zarr store per set
  of settings (`nature_run-<key>.zarr`), built once;
- examples: `$GENCAST_RMMD_EXAMPLES_CACHE` (default `<that>/examples`), the trainers' memory-mapped
  copies of a store's per-example variables (`examples-<key>/`);
- remote: `$GENCAST_RMMD_REMOTE_CACHE` (default `<that>/remote`), local copies of checkpoints and
  statistics given by URL.

The code that writes each cache already deletes what a newer copy supersedes. What is left over
and listed as stale here: an example copy whose store is gone or was re-made (or that was made
before copies recorded their store), a nature run (or its temporary directory) or copy left
incomplete by a crash (and not being written now), files of an older cache layout, interrupted
fetches. Nothing is checked over the network: a copy of a URL is stale only once a newer copy of
it replaced it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time

from gencast_rmmd import remote
from gencast_rmmd.data import examples, nature_run
from gencast_rmmd.locks import file_lock


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One item of a cache: `kind` ("nature run", "examples" or "remote"), its `path`, what it
    is a copy of (`source`), its size on disk (`bytes`), and `stale`: why it can be deleted, or
    None while it may still be used."""

    kind: str
    path: pathlib.Path
    source: str
    bytes: int
    stale: str | None = None


def cache_roots() -> dict[str, pathlib.Path]:
    """kind -> the directory of that cache."""
    return {
        "nature run": nature_run.cache_dir(),
        "examples": examples.examples_cache_dir(),
        "remote": remote.remote_cache_dir(),
    }


def disk_bytes(path: pathlib.Path, seen: set | None = None) -> int:
    """Bytes `path` (a file or a directory tree) takes on disk. A file hard-linked more than once
    counts once: `seen` (inode numbers) carries that over calls, as `cache_entries` scans."""
    seen = set() if seen is None else seen
    total = 0
    paths = [path] if path.is_file() else [path, *path.rglob("*")]
    for p in paths:
        try:
            st = p.lstat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
    return total


def _busy(lock: pathlib.Path) -> bool:
    """Whether another process holds the lock file `lock` (a build or copy in progress)."""
    if not lock.exists():
        return False
    with file_lock(lock, blocking=False) as got:
        return not got


# A temporary file or directory of the remote cache (a fetch's `.part`, a directory being linked)
# untouched for this long belongs to a fetch that was interrupted.
TEMP_STALE_SECONDS = 3600


def _temp_state(path: pathlib.Path) -> str | None:
    try:
        age = time.time() - path.lstat().st_mtime
    except OSError:
        return None
    return "interrupted fetch" if age > TEMP_STALE_SECONDS else None


class _Scan:
    def __init__(self) -> None:
        self.seen: set = set()
        self.entries: list[CacheEntry] = []

    def add(self, kind: str, path: pathlib.Path, source: str, stale: str | None) -> None:
        self.entries.append(CacheEntry(kind, path, source, disk_bytes(path, self.seen), stale))

    def nature_runs(self, root: pathlib.Path) -> None:
        for path in sorted(root.glob("nature_run-*.zarr")):
            if (path / "zarr.json").exists():
                source, stale = _nature_run_state(path)
            else:
                source = "embedded nature run"
                stale = None if _busy(root / f".{path.name}.lock") else "incomplete build"
            self.add("nature run", path, source, stale)
        # `nature_run.write_store`'s temporary directories (`.<store name>.<random>.tmp`): a build
        # killed before its final rename leaves one behind, the size of the store.
        for path in sorted(root.glob(".nature_run-*.zarr.*.tmp")):
            store = path.name[1:].split(".zarr.", 1)[0] + ".zarr"
            stale = None if _busy(root / f".{store}.lock") else "incomplete build"
            self.add("nature run", path, "embedded nature run", stale)

    def example_copies(self, root: pathlib.Path) -> None:
        for path in sorted(root.glob(f"{examples.EXAMPLES_COPY_PREFIX}*")):
            if not path.is_dir():
                continue
            try:
                rec = json.loads((path / examples.EXAMPLES_RECORD).read_text())
            except (OSError, ValueError):
                rec = None
            source = "?" if rec is None else str(rec.get("store"))
            if _busy(root / f".{path.name}.lock"):  # being written now: current
                stale = None
            elif not (path / "complete").exists():
                stale = "incomplete copy"
            elif rec is None:
                stale = "made before copies recorded their store (made again when needed)"
            else:  # a copy of a URL is stale only once a newer copy replaced it
                stale = None if remote.is_url(source) else _example_store_state(rec, source)
            self.add("examples", path, source, stale)

    def remote(self, root: pathlib.Path, note: str = "") -> None:
        """URL groups (`<sha(URL)>/`: `.source` and version directories) under `root`; anything
        else there is an older cache layout or an interrupted fetch."""
        for group in sorted(root.iterdir()) if root.is_dir() else []:
            if group.name == remote.DIRS and not note:
                self.remote(group, " (directory)")
                continue
            if group.name.startswith("."):
                self.add("remote", group, "?", _temp_state(group))
                continue
            try:
                url = (group / remote.SOURCE_FILE).read_text() + note
            except OSError:
                self.add("remote", group, "?", "older cache layout")
                continue
            versions = [v for v in group.iterdir() if not v.name.startswith(".")]
            newest = max(versions, key=lambda v: v.stat().st_mtime_ns, default=None)
            for v in sorted(versions):
                for part in sorted(v.glob(".*")):  # first: the version's size leaves them out
                    self.add("remote", part, url, _temp_state(part))
                self.add("remote", v, url, None if v == newest else "an older version of it")
            for tmp in sorted(group.glob(".*")):
                if tmp.name != remote.SOURCE_FILE:
                    self.add("remote", tmp, url, _temp_state(tmp))


def _nature_run_state(path: pathlib.Path) -> tuple[str, str | None]:
    """What the complete nature run at `path` was built with (from its attributes, as
    `nature_run.simulate` records them), and why it is stale, or None. A store built by another
    `NATURE_RUN_VERSION` is never read again: its cache key names the version."""
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
        cfg = json.loads(attrs[nature_run.CONFIG_ATTR])
        version = attrs.get(nature_run.VERSION_ATTR)
        source = (
            f"embedded nature run: {cfg['days']} days after {cfg['spinup_days']} of spin-up, "
            f"T{cfg['truncation']}, seed {cfg['seed']}"
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "embedded nature run (settings not recorded)", None
    if version != nature_run.NATURE_RUN_VERSION:
        return source, (
            f"built by nature-run version {version}, this code builds version "
            f"{nature_run.NATURE_RUN_VERSION} (never read again)"
        )
    return source, None


def _example_store_state(rec: dict, store: str) -> str | None:
    """Why the example copy recorded by `rec` of the local store `store` is stale, or None."""
    path = pathlib.Path(store)
    if not path.exists():
        return "its store is gone"
    if any(k not in rec for k in examples.STORE_STATE_KEYS):
        return "recorded by an earlier version (made again when needed)"
    if examples.copy_superseded_by(rec, store, examples.store_state(store)):
        return "its store was re-made or rewritten since"
    return None


def cache_entries() -> list[CacheEntry]:
    """Every entry of the three caches (`cache_roots`), in order: nature runs, example copies,
    remote copies. A file hard-linked into several entries counts in the first one only."""
    roots = cache_roots()
    scan = _Scan()
    if roots["nature run"].is_dir():
        scan.nature_runs(roots["nature run"])
    if roots["examples"].is_dir():
        scan.example_copies(roots["examples"])
    scan.remote(roots["remote"])
    return scan.entries


def prune(entries: list[CacheEntry]) -> int:
    """Delete the stale entries; returns the bytes freed (as `disk_bytes` counted them)."""
    freed = 0
    for e in entries:
        if e.stale is None or not e.path.exists():
            continue
        if e.path.is_dir():
            shutil.rmtree(e.path, ignore_errors=True)
        else:
            e.path.unlink(missing_ok=True)
        freed += e.bytes
    return freed
