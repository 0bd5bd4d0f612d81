"""The `gencast-rmmd` command: parses arguments and calls the library / pipelines.

The CLI is the top layer (it may import `pipelines/`; nothing in the library imports it). Each
area registers its own sub-commands in `gencast_rmmd/cli/<area>.py` through `register(subparsers)`;
a handler is a function `(args) -> int | None` stored as `func` on the parser. A command that
writes an `--out` also stores `out_lock` (its name) and runs holding that output's lock
(`locks.output_lock`), so that a second run into the same output refuses instead of mixing its
work in; a trainer that may run as several JAX processes (`distributed=True`) sets up
`jax.distributed` first, and each process holds a lock of its own.

Errors the user can fix (`UserError`) are printed as one line and exit with status 2; `--debug`
shows the traceback of any error.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import errno
import importlib
import logging
import os
import re
import select
import sys

from gencast_rmmd import __version__, runtime
from gencast_rmmd.errors import (
    AlreadyReported,
    ConfigError,
    StoppedBySignal,
    UserError,
    no_space_message,
)

AREAS = ("quickstart", "data", "teacher", "distill", "forecast", "evaluate", "image")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gencast-rmmd",
        description="Distil GenCast into a few-step student with RMMD; forecast and score ensembles.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"gencast-rmmd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in AREAS:
        module = importlib.import_module(f"gencast_rmmd.cli.{area}")
        module.register(sub)
    return parser


def add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """Add the standard repeatable `--set a.b=value` config override flag; `example` is a valid
    override of the command's own config, shown in its help (tests/test_cli_help.py loads each)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--no-progress` (hide the command's progress bars; `args.no_progress`)."""
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


# Log lines that Apache Beam prints on every run and that say nothing to our users: the GCP
# extras we do not install, and the (correct) fallback coder for xarray-beam's Key objects.
_QUIET_LOG_MESSAGES = ("apitools not found", "Using fallback deterministic coder")

# Errors of library threads still at work when the command has ended (a checkpoint's writer
# threads after the disk filled part-way): orbax's threads that find the interpreter shutting
# down, and tensorstore's callbacks into the event loop of orbax's failed write, some 240
# tracebacks printed after the command's own error line. The line said what happened.
_AFTERMATH = ("cannot schedule new futures after", "Event loop is closed")


def _aftermath(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _AFTERMATH)


class _QuietUnraisable:
    """`sys.unraisablehook` without --debug: drops `_aftermath` errors, passes others on to the
    hook it replaced."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        if not _aftermath(unraisable.exc_value):
            self.previous(unraisable)


class _QuietFilter(logging.Filter):
    """Without --debug: drops the messages above, a library's record of a user error or of a
    full disk (the command stops with one error line that says it: orbax logged each of its
    writer threads' failure with a traceback, some 140 lines, and Beam the error of a step before
    re-raising it), and `_AFTERMATH` errors; other records keep their message line but not their
    traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(q in msg for q in _QUIET_LOG_MESSAGES):
            return False
        if record.exc_info:
            exc = record.exc_info[1]
            if exc is not None and (
                isinstance(exc, UserError) or disk_full(exc) or _aftermath(exc)
            ):
                return False
            record.exc_info = None
            record.exc_text = None
            record.msg, record.args = f"{msg} (its traceback: run with --debug)", ()
        return True


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    if not debug:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietFilter())
        if not isinstance(sys.unraisablehook, _QuietUnraisable):
            sys.unraisablehook = _QuietUnraisable(sys.unraisablehook)
        # gcsfs logs a failed request with its traceback before raising it; the error the user
        # gets names the store and the reason (`remote.network_problem`), once.
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (a broken pipe elsewhere, a socket of
    a remote store say, is an error to report)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured stdout)
        return False


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--opt -24h` as `--opt=-24h`: argparse takes a value that starts with '-' and is not a
    plain number for an option, and reported `--lead-time -24h` as 'expected one argument'
    instead of the command's own check of the value. No option of ours starts with '-' and a
    digit. Beam's options after `--` are left as they are."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return out + argv[i:]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if (
            a.startswith("--")
            and "=" not in a
            and len(nxt) > 1
            and nxt[0] == "-"
            and nxt[1].isdigit()
        ):
            out.append(f"{a}={nxt}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


# How a full disk or an exhausted quota shows in an exception: an OSError's errno, or the text
# of a library that wraps it (tensorstore, under orbax and Zarr: "... [os_error_code='28']").
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = re.compile(
    r"No space left on device|Disk quota exceeded|os_error_code='?(28|122)'?\b"
)


def disk_full(e: BaseException) -> str | None:
    """The message for `e` when it (or an exception in its chain) says the disk or the quota is
    full, else None. Such a run stops with `gencast-rmmd: error:` (the user can fix it), not as
    an internal error whose traceback was hundreds of lines (orbax's writer threads)."""
    from gencast_rmmd.remote import causes

    for x in causes(e):
        if isinstance(x, OSError) and x.errno in _DISK_FULL_ERRNOS:
            where = x.filename
        elif not _DISK_FULL_TEXT.search(str(x)):
            continue
        else:
            found = re.search(r"""(?:file|writing:?|filename =) ["']([^"']+)["']""", str(x))
            where = found.group(1) if found else None
        quota = getattr(x, "errno", None) == errno.EDQUOT or "quota" in str(x).lower()
        what = "the disk quota is exhausted" if quota else "no space left on the device"
        return no_space_message(
            f"{what}{f' writing {where}' if where else ''}", f"{type(x).__name__}: {str(x)[:300]}"
        )
    return None


# XLA's words for an allocation that failed on the device (or in host memory on CPU).
_OUT_OF_MEMORY_TEXT = re.compile(
    r"RESOURCE_EXHAUSTED:.*(Out of memory|out of memory|Failed to allocate)", re.S
)
# What makes each step smaller, by command (the `out_lock` name).
_SMALLER_STEPS = {
    "teacher train": "raise --grad-accum (gradient accumulation keeps the global --batch-size) "
    "or lower --batch-size",
    "distill": "raise mmd.loop.grad_accum_steps / rmmd.loop.grad_accum_steps (--set; the global "
    "batch stays) or lower the loops' batch_size",
    "forecast": "lower --member-block (members per compiled call)",
    "evaluate": "lower --lead-chunk (lead times per work item)",
    "quickstart": "use a smaller profile (--fast, or the default rather than --profile result)",
}
_SMALLER_IMAGE_STEPS = (
    "raise the running stage's gradient accumulation (--set teacher.grad_accum_steps, "
    "mmd.grad_accum_steps or finetune.grad_accum_steps; the batch stays) or lower its batch size "
    "(teacher.batch_size, classifier.batch_size, mmd.batch_size or finetune.batch_size)"
)
_SMALLER_STEPS.update(
    {f"image {s}": _SMALLER_IMAGE_STEPS for s in ("teacher", "distill", "pareto")}
)


def out_of_memory(e: BaseException, command: str | None) -> str | None:
    """The message for `e` when it is XLA's failed allocation (the accelerator's memory, or the
    host's on CPU), else None; `command` picks the advice on making each step smaller."""
    text = str(e)
    if not _OUT_OF_MEMORY_TEXT.search(text):
        return None
    first = text.strip().splitlines()[0][:240]
    advice = _SMALLER_STEPS.get(command or "", "make the work per step smaller")
    return f"the device ran out of memory ({first}); {advice}, or run on a device with more memory"


def _run_command(args: argparse.Namespace) -> int | None:
    """`args.func(args)`, holding the lock of `args.out` when the command writes one."""
    command = getattr(args, "out_lock", None)
    if command is None:
        return args.func(args)
    from gencast_rmmd import locks

    index = 0
    if getattr(args, "distributed", False):
        from gencast_rmmd.training import sharding

        if sharding.maybe_initialize_distributed():
            import jax

            index = jax.process_index()
    with locks.output_lock(args.out, command, index):
        return args.func(args)


# The quickstart stage a nested `main` runs for (`nested_stage`): its one line names the stage.
_STAGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("stage", default=None)


@contextlib.contextmanager
def nested_stage(what: str):
    """Within: `main` runs as stage `what` of an outer command (the quickstart), and the one
    line it prints on an error or a clean stop begins "quickstart stage 'WHAT': ", so the outer
    command need not add a second line (`AlreadyReported`)."""
    token = _STAGE.set(what)
    try:
        yield
    finally:
        _STAGE.reset(token)


def main(argv: list[str] | None = None) -> int:
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv or os.environ.get("GENCAST_RMMD_DEBUG") == "1"
    _configure_logging(debug)
    args = None
    stage = f"quickstart stage '{_STAGE.get()}': " if _STAGE.get() else ""
    try:
        try:  # before JAX allocates anything (gencast_rmmd/runtime.py)
            runtime.tune_allocator()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        rc = _run_command(args)
        return int(rc or 0)
    except AlreadyReported as e:  # a nested command's line said it all
        return e.status
    except UserError as e:
        if debug:
            raise
        print(f"gencast-rmmd: error: {stage}{e}", file=sys.stderr)
        return 2
    except StoppedBySignal as e:  # a trainer stopped cleanly on SIGTERM / Ctrl-C
        print(f"gencast-rmmd: {stage}{e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"gencast-rmmd: {stage}interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line unless --debug
        command = getattr(args, "out_lock", None)
        if (known := disk_full(e) or out_of_memory(e, command)) and not debug:
            print(f"gencast-rmmd: error: {stage}{known}", file=sys.stderr)
            return 2
        if isinstance(e, BrokenPipeError) and _stdout_gone():
            # The reader of stdout went away (`gencast-rmmd data cache | head`): stop quietly,
            # as Unix tools do, and keep the interpreter's final flush from failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141  # 128 + SIGPIPE, what a shell reports for a tool that SIGPIPE stopped
        if debug:
            raise
        print(
            f"gencast-rmmd: internal error: {stage}{type(e).__name__}: {e} (re-run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
