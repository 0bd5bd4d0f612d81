"""Stopping a training loop cleanly on SIGTERM or Ctrl-C.

A preempted VM or a batch system's time limit sends SIGTERM some seconds before SIGKILL; by
default Python ends at once and the steps since the last checkpoint are lost. Inside
`graceful_stop()` SIGTERM and SIGINT only ask the loop to stop (`requested()`): the loop finishes
its step, saves a checkpoint there and raises `stopped(...)` (`StoppedBySignal`), which the CLI
prints and turns into exit status 143 / 130. A second Ctrl-C stops at once (`KeyboardInterrupt`).

Only the main thread of a process can own signal handlers; elsewhere, and where the caller says
so (the processes of a multi-process run, which would have to agree on the step), the block runs
with the default handling. Blocks nest: an inner one changes nothing.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from gencast_rmmd.errors import StoppedBySignal

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_state: dict = {"depth": 0, "signum": None}


def _handle(signum: int, frame) -> None:
    if _state["signum"] is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt
    _state["signum"] = signum
    print(
        f"\ngencast-rmmd: {signal.Signals(signum).name} received: stopping after this step with a "
        "checkpoint (Ctrl-C again stops at once)",
        file=sys.stderr,
        flush=True,
    )


@contextlib.contextmanager
def graceful_stop(enabled: bool = True) -> Iterator[None]:
    """SIGTERM / SIGINT ask to stop (`requested`) while the block runs; the handlers in place
    before are put back after it."""
    if _state["depth"]:  # nested: the outer block owns the handlers
        _state["depth"] += 1
        try:
            yield
        finally:
            _state["depth"] -= 1
        return
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    _state.update(depth=1, signum=None)
    try:
        yield
    finally:
        _state.update(depth=0, signum=None)
        for s, handler in previous.items():
            signal.signal(s, handler)


def requested() -> int | None:
    """The signal that asked the running loop to stop, or None."""
    return _state["signum"]


def stopped(signum: int, what: str, where: str) -> StoppedBySignal:
    """The exception a loop raises once it has saved its checkpoint (`where`: "after step 37 of
    100; checkpoint RUN/checkpoints/37 saved")."""
    return StoppedBySignal(
        signum,
        f"{what}: stopped by {signal.Signals(signum).name} {where}: run the same command again "
        "to resume from it",
    )
