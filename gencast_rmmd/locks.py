"""File locks (`flock`): the caches' build locks and the lock every writing command holds on its
`--out`.

Two processes writing one output mix their work: measured with two `teacher train` runs started
a second apart into one run directory, one stopped with an internal error from orbax (its
checkpoint's temporary directory removed under it) and the other finished with steps 1-3 logged
twice in `metrics.jsonl`. `output_lock` makes the second command refuse before it writes
anything. The kernel drops a lock when its holder dies (even by SIGKILL), so a crashed run never
blocks the next one; the lock file itself, beside the output, is removed when the command ends.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
from collections.abc import Iterator

from gencast_rmmd import remote
from gencast_rmmd.errors import OutputError

# Lock files this process holds through `output_lock`: a command run inside another (the
# quickstart's stages) may name the same output again.
_HELD: set[str] = set()


@contextlib.contextmanager
def file_lock(path: pathlib.Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive `flock` on `path` for the block. Yields True; with `blocking=False` it
    yields False at once (and holds nothing) when another process holds the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def output_lock_path(out: str | os.PathLike, process_index: int = 0) -> pathlib.Path | None:
    """The lock file of output `out`: `.NAME.lock` beside it (its real path, so that a symlink
    or another spelling of the same output finds the same lock); `.NAME.pI.lock` for process
    I > 0 of a multi-process job, whose processes all write the same `--out`. None for a URL
    (no lock: buckets have none) and for a path with no name (`/`)."""
    if remote.is_url(out):
        return None
    real = pathlib.Path(os.path.realpath(os.fspath(out)))
    if not real.name:
        return None
    suffix = f".p{process_index}" if process_index else ""
    return real.parent / f".{real.name}{suffix}.lock"


def _holder(path: pathlib.Path) -> str:
    """What the holder of lock file `path` wrote in it, in words ("" when unreadable)."""
    try:
        rec = json.loads(path.read_text())
        return f" ({rec['command']}, pid {rec['pid']} on {rec['host']}, since {rec['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _make_parents(parent: pathlib.Path) -> list[pathlib.Path] | None:
    """Create `parent` and its missing ancestors; return those made (deepest first), or None
    when that cannot be done (a file in the way, no permission: the command's own checks
    say so)."""
    made = []
    p = parent
    while not p.exists():
        made.append(p)
        p = p.parent
    for d in reversed(made):
        try:
            d.mkdir()
        except FileExistsError:
            pass
        except OSError:
            _remove_empty(made)
            return None
    return made


def _remove_empty(dirs: list[pathlib.Path]) -> None:
    for d in dirs:  # deepest first
        try:
            d.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, command: str, process_index: int = 0) -> Iterator[None]:
    """Hold the lock of output `out` (`output_lock_path`) while `command` (e.g. "teacher
    train") writes it. Another process holding it is an `OutputError` naming that process, raised
    before anything is written. Where no lock can be taken (a file where the output's directory
    goes, a file system without `flock`) the block runs without one; the first case is the
    command's own error to report. Directories made to hold the lock file are removed again when
    they are left empty."""
    path = output_lock_path(out, process_index)
    key = str(path)
    if path is None or key in _HELD:
        yield
        return
    made = _make_parents(path.parent)
    if made is None:
        yield
        return
    try:
        f = _acquire(path, out)
    except BaseException:
        _remove_empty(made)
        raise
    if f is None:
        try:
            yield
        finally:
            _remove_empty(made)
        return
    _HELD.add(key)
    try:
        record = {
            "command": f"gencast-rmmd {command}",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }
        with contextlib.suppress(OSError):  # only for the message of a refused run: a full
            f.write(json.dumps(record).encode())  # disk is the command's own error to report
        yield
    finally:
        _HELD.discard(key)
        with contextlib.suppress(OSError):  # while still held: see `_acquire`
            path.unlink()
        f.close()  # releases the lock
        _remove_empty(made)


def _acquire(path: pathlib.Path, out: str | os.PathLike):
    """Open and lock `path` without waiting; the open file, or None when the file system cannot
    lock (said on stderr). Loops when the file it locked was removed meanwhile by the holder
    that just ended (it removes the file before it lets go): that file no longer guards
    anything, so the lock is taken again on a fresh one."""
    while True:
        try:
            f = open(path, "a+b", buffering=0)  # unbuffered: nothing to flush at close
        except OSError:
            return None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise OutputError(
                f"--out {os.fspath(out)!r} is being written by another gencast-rmmd process"
                f"{_holder(path)}; wait for it to end or choose another --out (two runs writing "
                f"one output mix their work; lock file {path})"
            ) from None
        except OSError as e:
            f.close()
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                print(
                    f"note: {path.parent} cannot hold a lock ({e.strerror}); make sure no other "
                    f"process writes {os.fspath(out)!r} while this one runs",
                    file=sys.stderr,
                )
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            f.seek(0)
            f.truncate()
            return f
        f.close()
