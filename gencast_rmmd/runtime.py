"""Process-level runtime settings: the C allocator under XLA:CPU.

XLA:CPU allocates each program's temporary buffers afresh on every execution (and, inside loops,
every iteration) with the C allocator. glibc serves large requests with `mmap` and gives them back
with `munmap` on free, so every 12 h step of a forecast touches hundreds of MB of new pages: the
kernel zero-fills and maps each 4 KiB page on first touch (a "minor page fault"). Measured on the
`make result` models (8 members, 32 x 64 grid, 2 cores): ~64,000-69,000 faults per student step,
~415,000 per teacher step and ~93,000 for eight separate denoiser calls, 15-30% of their wall time
(benchmarks/allocator.py).

`tune_allocator()` tells glibc to keep freed memory for reuse instead: no `mmap` for large
blocks (`M_MMAP_MAX = 0`) and no trimming of the heap top (`M_TRIM_THRESHOLD` at its maximum);
the "one-arena" mode also puts all threads on one malloc arena (`M_ARENA_MAX = 1`), the
process's `brk` heap, rather than per-thread `mmap`ed heaps that glibc still shrinks. The cost:
the process keeps its peak heap mapped until it exits (it does not return freed memory to the OS).

Measured (benchmarks/allocator.py; docs/distill.md, "Speed"): `keep` removes the forecast steps'
faults (teacher step ~415,000 -> 0, student ~64,000 -> 1) and speeds them up by ~1.2x; it leaves
the training steps' (in per-thread arenas, which glibc still shrinks). `one-arena` removes all of
them and makes a bare training step 5-11% faster, but the forecast steps slower than `keep`, and
whole distillation runs (data-loader threads, checkpoint writer) timed slower under it in earlier,
noisier runs, so it is not the default.

The mode comes from the environment variable `GENCAST_RMMD_MALLOC` (read once, at process
start, by the CLI and the benchmarks): `keep` (the default), `one-arena` or `off` (glibc's
defaults). Outside glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "GENCAST_RMMD_MALLOC"
MODES = ("keep", "one-arena", "off")
DEFAULT_MODE = "keep"

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_applied: str | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):  # only glibc has it (musl does not)
            return None
        return libc
    except OSError:
        return None


def allocator_mode(env: dict[str, str] | None = None) -> str:
    """The requested mode (`GENCAST_RMMD_MALLOC`, default `keep`); ValueError if unknown."""
    mode = (os.environ if env is None else env).get(ENV, DEFAULT_MODE).strip() or DEFAULT_MODE
    if mode not in MODES:
        raise ValueError(f"{ENV}: expected one of {', '.join(MODES)}, found {mode!r}")
    return mode


def tune_allocator(mode: str | None = None) -> str:
    """Apply `mode` (default: `allocator_mode()`) to this process's glibc allocator, once.

    Returns the mode in effect: the one applied, "off", or "unavailable" (not glibc). Call it
    before the first large allocation (the arena setting only affects arenas created later);
    later calls return the first call's result.
    """
    global _applied
    if _applied is not None:
        return _applied
    mode = allocator_mode() if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"allocator mode: expected one of {', '.join(MODES)}, found {mode!r}")
    libc = _glibc() if mode != "off" else None
    if mode == "off":
        _applied = "off"
    elif libc is None:
        _applied = "unavailable"
    else:
        settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX)]
        if mode == "one-arena":
            settings.append((_M_ARENA_MAX, 1))
        ok = all(libc.mallopt(param, value) == 1 for param, value in settings)
        _applied = mode if ok else "unavailable"
    return _applied


def available_memory(meminfo: str = "/proc/meminfo") -> int | None:
    """Bytes of memory a new allocation can get without swapping (Linux's `MemAvailable`), or
    None where it is not reported (other systems)."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(need: int, available: int | None, subject: str, what: str, advice: str) -> None:
    """`ConfigError` ("`subject` holds at least NEED `what`, more than the AVAILABLE available
    here; `advice`") when `need` bytes exceed `available` (None: not known, not checked), so a
    job that cannot fit is refused before it starts instead of failing in an allocation."""
    if available is None or need <= available:
        return
    from gencast_rmmd.errors import ConfigError
    from gencast_rmmd.remote import mib

    raise ConfigError(
        f"{subject} holds at least {mib(need)} {what}, more than the {mib(available)} available "
        f"here; {advice}"
    )
