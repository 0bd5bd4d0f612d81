"""Apache Beam pipelines: prepare, stats, forecast, evaluate (`pipeline_options` is their shared
runner default)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")

# The runner a pipeline gets when its Beam arguments name none: Beam's in-process portable runner.
# Not "DirectRunner": since Beam 2.6x that first tries the Prism runner, downloading its binary
# from GitHub. Offline, the download fails after leaving a temporary directory behind, and Beam
# falls back to this runner; online, the pipeline would run on another (Go) runner than the one
# every test and figure here used. `--runner=DirectRunner` still asks for that behaviour.
LOCAL_RUNNER = "FnApiRunner"


def pipeline_options(beam_args: Sequence[str] = ()):
    """`PipelineOptions` of `beam_args` (standard Beam flags: `--runner=DataflowRunner
    --project=...`), with `LOCAL_RUNNER` when they name no runner. A runner Beam does not know,
    or one whose extra is not installed (Dataflow without `apache-beam[gcp]`), is a
    `ConfigError`."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.runners.runner import create_runner

    from gencast_rmmd.errors import ConfigError

    opts = list(beam_args)
    if not any(a.startswith("--runner") for a in opts):
        opts.append(f"--runner={LOCAL_RUNNER}")
    options = PipelineOptions(opts)
    # Beam parses with argparse, which answers a bad value (`--num_workers=two`, a
    # `--flink_version` not among its choices) with its whole usage (some 200 lines) and exit 2.
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            given = options.get_all_options(retain_unknown_options=True)
    except SystemExit:
        last = err.getvalue().strip().splitlines()[-1:] or ["cannot parse the options"]
        raise ConfigError(f"Beam options: {last[0].split('error: ', 1)[-1]}") from None
    # Beam drops an option it does not know with a log warning only: `--runnner=DataflowRunner`
    # would run here, on the local runner. Our pipelines define no options of their own, so an
    # option unknown to Beam is a mistake.
    known = PipelineOptions([]).get_all_options()
    unknown = sorted(set(given) - set(known))
    if unknown:
        import difflib

        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"--{name}" + (f" (did you mean --{close[0]}?)" if close else ""))
        raise ConfigError(
            f"Beam option(s) not known to Beam: {', '.join(hints)}; Beam would drop them and run "
            "without them"
        )
    runner = options.view_as(StandardOptions).runner
    try:
        made = create_runner(runner)  # what beam.Pipeline does first: cheap, and it starts nothing
    except (ValueError, ImportError) as e:
        raise ConfigError(f"Beam option --runner={runner}: {e}") from None
    # Dataflow checks its project, region and job name only when the pipeline runs: after the
    # command has made its output (a forecast store, say) and as an internal error. The same
    # checks, without the network (the temp/staging bucket checks need it), come first here.
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    validator = PipelineOptionsValidator(options, made)
    if validator.is_service_runner():
        errors = validator.validate_cloud_options(options.view_as(GoogleCloudOptions))
        if errors:
            raise ConfigError(f"Beam options for --runner={runner}: {' '.join(errors)}")
    return options


# Runners whose workers run on this machine: they share its disk (the kept work of a resumable
# run is local files) and its memory. `LOCAL_RUNNER` is the default.
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner",
                 "PrismRunner")  # fmt: skip


def runs_here(beam_args: Sequence[str] = ()) -> bool:
    """Whether the pipeline of `beam_args` runs its workers on this machine (`LOCAL_RUNNERS`)."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = pipeline_options(beam_args).view_as(StandardOptions).runner
    return str(runner).split(".")[-1] in LOCAL_RUNNERS


def cli_beam_args(raw: Sequence[str]) -> list[str]:
    """The Beam flags a command got after `--`, checked (`pipeline_options`) before any work."""
    beam_args = [a for a in raw if a != "--"]
    pipeline_options(beam_args)
    return beam_args


def resume_dir(out_dir: str, kind: str, key: Mapping) -> str:
    """A local directory beside `out_dir` (`.<name>.<kind>-<digest of key>`) where a long
    pipeline keeps its finished work items until its outputs are in place, so that a re-run after
    a crash does only the rest. `key` holds everything the items depend on (inputs, their ids,
    settings, a format version): other settings get another directory. Directories of `kind`
    with other keys for the same `out_dir` are removed, as they cannot be resumed. The caller
    removes the directory once its outputs are written."""
    out_dir = os.path.abspath(out_dir)
    parent, name = os.path.dirname(out_dir), os.path.basename(out_dir)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    prefix = f".{name}.{kind}-"
    if os.path.isdir(parent):
        for other in os.listdir(parent):
            if other.startswith(prefix) and other != prefix + digest[:16]:
                shutil.rmtree(os.path.join(parent, other), ignore_errors=True)
    return os.path.join(parent, prefix + digest[:16])


def say_kept(e: BaseException, keep: str | None, what: str) -> None:
    """Add to the message of a `UserError` that stopped a pipeline mid-run (a corrupt chunk, say)
    how much finished work `resume_dir` `keep` holds for the re-run, once the input is mended.
    Other exceptions, and a run with nothing kept, are left as they are."""
    from gencast_rmmd.errors import UserError

    if not isinstance(e, UserError) or keep is None:
        return
    n = kept_count(keep)
    if n and e.args and isinstance(e.args[0], str):
        e.args = (f"{e.args[0]} ({n} {what} done so far are kept for the re-run: {keep})",)


def kept_count(keep: str | None) -> int:
    """The finished work items (`.npz` files) under `resume_dir` `keep`; a killed write leaves
    only a hidden temporary file, which does not count."""
    if keep is None or not os.path.isdir(keep):
        return 0
    return sum(
        f.endswith(".npz") and not f.startswith(".") for _, _, files in os.walk(keep) for f in files
    )


def kept(path: str | None, compute: Callable[[], T], save: Callable[[T, str], None],
         load: Callable[[str], T]) -> T:  # fmt: skip
    """One work item of a resumable pipeline: `load(path)` when an earlier run kept it there,
    else `compute()`, kept with `save(value, path)` (whole or not at all). An unreadable kept
    item is computed again; `path` None keeps nothing."""
    if path is not None and os.path.exists(path):
        try:
            return load(path)
        except (OSError, ValueError, KeyError):
            pass
    value = compute()
    if path is not None:
        save(value, path)
    return value
