"""User-facing errors.

Every mistake a user can make (bad path, bad config, wrong store schema, bad checkpoint) raises a
subclass of `UserError`. The CLI prints such errors as one message and exits with status 2; any
other exception is a bug and is shown with its traceback only under `--debug`.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; its message says what was expected and what was found."""


class ConfigError(UserError):
    """A config file or `--set` override is invalid (unknown key, wrong type, bad value)."""


class DataError(UserError):
    """A data store does not match what the task needs (schema, grid, values)."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, pickled, or its names/shapes/dtypes do not match."""


class OutputError(UserError):
    """An output path cannot be used (exists with other content, outside the run directory)."""


class TrainingDivergedError(UserError):
    """Training produced NaN/Inf; the message names the step and the last good checkpoint."""


class StoppedBySignal(Exception):
    """A trainer asked to stop (SIGTERM: a preempted VM, a batch system's time limit; SIGINT:
    Ctrl-C) finished its step, saved a checkpoint and stopped; not an error. The CLI prints the
    message and exits with status 128 + `signum`, as a process the signal ended would."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class AlreadyReported(Exception):
    """A command run inside another (a quickstart stage) ended and printed its own one line,
    which names the outer stage; the outer command prints nothing more and exits with `status`,
    the inner command's exit status (2 for an error, 128 + signal for a clean stop)."""

    def __init__(self, status: int):
        super().__init__(f"exit status {status}")
        self.status = status


def no_space_message(what: str, detail: str = "") -> str:
    """The message of a run stopped by a full disk (or quota): `what` says where ("no space
    left on the device writing X"), `detail` the library's words."""
    return (
        f"{what}{f' ({detail})' if detail else ''}; free some space or choose another --out, "
        "then run the same command again: finished work (checkpoints, written regions, kept work "
        "items) is kept"
    )
