"""The registry of bad inputs and injected faults: one row per case, shared by the tests and the doc.

`BAD_INPUTS` rows are exercised by `test_reliability_bad_inputs.py` (one setup function per `id`
runs the real CLI and checks the outcome); `FAULTS` rows by `test_reliability_crash.py` (the full disk: `test_reliability_resources.py`).
`tools/gen_reliability_doc.py` renders both tables into `docs/reliability.md`, and
`test_reliability_doc.py` fails if the doc, the registry and the tests disagree.

Fields of a bad-input row:
  id: unique name (the pytest id).
  category: "data store", "config", "checkpoint", "CLI argument" or "output".
  command: the `gencast-rmmd` command the case runs.
  bad_input: what is wrong with the input.
  message: a regular expression the single error line must match (case-insensitive).
  outcome: what the tool does (all cases also: exit status 2, one line, no traceback, nothing
    written but a pipeline's kept work items for a resumed run, `pipelines.resume_dir`).
  defect: empty, or what the tool does instead (a known defect: the test is a strict xfail, so it
    fails as soon as the defect is fixed and the row must be updated).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BadInput:
    id: str
    category: str
    command: str
    bad_input: str
    message: str
    outcome: str
    defect: str = ""  # non-empty while the tool does not yet behave as `outcome` says


@dataclasses.dataclass(frozen=True)
class Fault:
    id: str
    target: str
    fault: str
    trials: int
    outcome: str


BAD_INPUTS: tuple[BadInput, ...] = (
    # ---------------------------------------------------------------- data stores
    BadInput(
        "store-missing",
        "data store",
        "evaluate",
        "`--forecast` path does not exist",
        r"does not exist",
        "refuses: names the missing path",
    ),
    BadInput(
        "store-not-zarr-dir",
        "data store",
        "evaluate",
        "`--forecast` is a directory without Zarr metadata",
        r"is a directory but not a Zarr store",
        "refuses: says the path is not a Zarr store or netCDF file",
    ),
    BadInput(
        "store-not-zarr-file",
        "data store",
        "evaluate",
        "`--truth` is a plain text file",
        r"is neither a Zarr store .* nor a NetCDF file",
        "refuses: says the path is not a Zarr store or netCDF file",
    ),
    BadInput(
        "store-truncated-chunk",
        "data store",
        "evaluate",
        "one chunk file of the forecast store is cut in half",
        r"(corrupt|unreadable|cannot read).*temperature",
        "refuses: names the store and the variable whose chunk cannot be decoded",
    ),
    BadInput(
        "store-garbage-chunk",
        "data store",
        "evaluate",
        "one chunk file of the truth store is overwritten with random bytes",
        r"(corrupt|unreadable|cannot read).*temperature",
        "refuses: names the store and the variable whose chunk cannot be decoded",
    ),
    BadInput(
        "store-incomplete-forecast",
        "data store",
        "evaluate",
        "forecast store marked `gencast_rmmd_status: incomplete` (an interrupted forecast run)",
        r"incomplete",
        "refuses to score it; tells the user to re-run the forecast to fill it",
    ),
    BadInput(
        "store-no-ensemble-dim",
        "data store",
        "evaluate",
        "forecast store has no `realization` dim (GenCast's `sample`)",
        r"no ensemble dim 'realization'.*--ensemble-dim sample",
        "refuses: names the dims found and the `--ensemble-dim` flag to pass",
    ),
    BadInput(
        "evaluate-ensemble-dim-is-time",
        "CLI argument",
        "evaluate",
        "`--ensemble-dim time` (a dim the fields are scored along, not the members')",
        r"--ensemble-dim 'time' is one of a forecast's field dims \(time, prediction_timedelta, "
        r"level, latitude, longitude\), not its members' dim; it has 'realization': pass "
        r"--ensemble-dim realization",
        "refuses: names the store's members' dim (was an internal error from xarray)",
    ),
    BadInput(
        "store-missing-dims",
        "data store",
        "evaluate",
        "forecast store without `prediction_timedelta` (a truth-like store)",
        r"prediction_timedelta",
        "refuses: names the WeatherBench 2 dims it needs and those found",
    ),
    BadInput(
        "baseline-not-forecast",
        "data store",
        "evaluate",
        "`--baseline` is a truth-like store (no `prediction_timedelta`)",
        r"baseline store .* needs dims 'time' \(init time\) and 'prediction_timedelta'",
        "refuses: names the baseline store, the dims it needs and those found",
    ),
    BadInput(
        "baseline-is-forecast",
        "data store",
        "evaluate",
        "`--baseline` names the `--forecast` store itself (through a symlink and a trailing '/')",
        r"--baseline .* is the --forecast store itself",
        "refuses before reading: a scorecard of a forecast against itself is all ties",
    ),
    BadInput(
        "truth-is-forecast",
        "data store",
        "evaluate",
        "`--truth` is a forecast store (it has `prediction_timedelta`)",
        r"truth store .* is a forecast store \(it has a 'prediction_timedelta' dim",
        "refuses: says the truth is a forecast store and what a truth store holds (was 'no init "
        "time has all its valid times in the truth store')",
    ),
    BadInput(
        "grids-differ",
        "data store",
        "evaluate",
        "forecast and truth on different latitude/longitude grids",
        r"grids differ",
        "refuses: prints both grids and says to regrid one",
    ),
    BadInput(
        "truth-misses-valid-times",
        "data store",
        "evaluate",
        "truth store ends before the forecast's valid times",
        r"no init time .* has all its valid times",
        "refuses: names the lead range and the truth store",
    ),
    BadInput(
        "inits-in-training-period",
        "data store",
        "evaluate",
        "forecast init times inside the model's recorded training period",
        r"training period.*--allow-overlap",
        "refuses (leakage) unless `--allow-overlap`; names the overlapping init times",
    ),
    BadInput(
        "validate-nan",
        "data store",
        "data validate",
        "one NaN in `temperature` of the data store",
        r"non-finite.*'temperature'.*1 NaN/Inf",
        "refuses: names the variable, the count and the first bad time",
    ),
    BadInput(
        "validate-missing-variable",
        "data store",
        "data validate",
        "the store lacks a task variable (`mean_sea_level_pressure`)",
        r"expected variable 'mean_sea_level_pressure'",
        "refuses: lists every problem of the store at once",
    ),
    BadInput(
        "validate-corrupt-chunk",
        "data store",
        "data validate",
        "one chunk file of the data store cut to 20 bytes",
        r"(corrupt|unreadable|cannot read).*temperature",
        "refuses: names the store and the variable whose chunk cannot be decoded",
    ),
    BadInput(
        "stats-corrupt-chunk",
        "data store",
        "data stats",
        "one chunk file of the data store cut to 20 bytes",
        r"(corrupt|unreadable|cannot read).*temperature",
        "refuses: names the store, the variable and the times whose chunk cannot be decoded",
    ),
    BadInput(
        "stats-incomplete-store",
        "data store",
        "data stats",
        "the data store is an interrupted `data prepare` output (`gencast_rmmd_prepare: "
        "in-progress`)",
        r"incomplete|in-progress|not finished",
        "refuses to compute statistics from a half-written store; says to re-run prepare",
    ),
    BadInput(
        "teacher-incomplete-store",
        "data store",
        "teacher train",
        "the data store is an interrupted `data prepare` output",
        r"incomplete|in-progress|not finished",
        "refuses to train on a half-written store; says to re-run prepare",
    ),
    BadInput(
        "forecast-incomplete-store",
        "data store",
        "forecast",
        "the initial conditions come from an interrupted `data prepare` output",
        r"incomplete|in-progress|not finished",
        "refuses to start forecasts from a half-written store; says to re-run prepare",
    ),
    BadInput(
        "stats-missing-store",
        "data store",
        "data stats",
        "`--data` path does not exist",
        r"does not exist",
        "refuses: names the path; no stats dir is created",
    ),
    BadInput(
        "stats-store-host-unreachable",
        "data store",
        "data stats",
        "`--data` is a URL whose host cannot be reached (no network; here a refused local port)",
        r"era5\.zarr' cannot be opened: its host cannot be reached",
        "refuses in one line saying the host cannot be reached (was: 'expected a Zarr store or "
        "NetCDF file' after gcsfs's own traceback, and a 60 s wait for gs:// URLs)",
    ),
    BadInput(
        "prepare-time-outside",
        "config",
        "data prepare",
        "data config `time_start` after the end of the source data",
        r"no times on the 12 h grid between",
        "refuses: prints the requested window and the store's time range",
    ),
    BadInput(
        "prepare-config-unknown-key",
        "config",
        "data prepare",
        "data config with a misspelt key (`tokn`)",
        r"unknown key 'tokn'.*allowed keys",
        "refuses: names the file, the key and the allowed keys",
    ),
    BadInput(
        "prepare-out-is-source",
        "output",
        "data prepare",
        "`--out` names the source store itself, with `--overwrite`",
        r"--out '.*data\.zarr/' is the source store '.*data\.zarr', or one of them lies inside "
        r"the other: writing the output would destroy what is read; choose another --out",
        "refuses before writing; the source is untouched (`--overwrite` deleted the source, then "
        "failed reading it: 44 MB -> 3 MB)",
    ),
    BadInput(
        "prepare-out-holds-pattern-files",
        "output",
        "data prepare",
        "source `era5/*.nc` (NetCDF files read as one store), `--out era5` with `--overwrite`",
        r"--out '.*era5' is the source store '.*era5/era5_0\.nc', or one of them lies inside "
        r"the other",
        "refuses before writing: each file of a pattern source is checked",
    ),
    BadInput(
        "teacher-data-is-pattern",
        "data store",
        "teacher train",
        "`--data 'era5/*.nc'` (NetCDF files; training reads a canonical Zarr store)",
        r"store '.*era5/\*\.nc' is a pattern of files; training reads a canonical Zarr store "
        r"\(`gencast-rmmd data prepare` writes one",
        "refuses before the run directory is made, pointing to `data prepare` (was an internal "
        "FileNotFoundError at the first batch)",
    ),
    BadInput(
        "prepare-output-foreign",
        "output",
        "data prepare",
        "`--out` exists and was not written by this prepare command",
        r"exists and was not written by this prepare command.*--overwrite",
        "refuses and leaves it untouched; `--overwrite` replaces it",
    ),
    BadInput(
        "forecast-negative-members",
        "CLI argument",
        "forecast",
        "`--members -3`",
        r"--members must be a positive integer, found -3",
        "refuses before loading anything",
    ),
    BadInput(
        "forecast-seed-beyond-32-bits",
        "CLI argument",
        "forecast",
        "`--seed 4294967301` (2**32 + 5)",
        r"--seed: a seed must be in \[0, 2\*\*32\) .*found 4294967301",
        "refuses before loading anything (was: the members of `--seed 5`, silently: a JAX key "
        "keeps a seed's low 32 bits; 2**63 was an internal OverflowError)",
    ),
    BadInput(
        "forecast-persistence-bad-noise",
        "CLI argument",
        "forecast",
        "`--model persistence:abc` (the baseline's NOISE is not a number)",
        r"NOISE in persistence:NOISE must be a finite number >= 0 .*found 'abc'",
        "refuses before loading anything (was read as a checkpoint path that does not exist)",
    ),
    BadInput(
        "forecast-data-config-with-checkpoint",
        "CLI argument",
        "forecast",
        "`--data-config` given with a checkpoint (it sets the persistence baseline's task only)",
        r"--data-config applies to --model persistence only",
        "refuses before loading the checkpoint (was silently ignored)",
    ),
    BadInput(
        "forecast-lead-not-multiple",
        "CLI argument",
        "forecast",
        "`--lead-time 18h` for a 12 h model",
        r"multiple of the model step \(12 h\).*18h",
        "refuses: names the model step",
    ),
    BadInput(
        "forecast-negative-lead",
        "CLI argument",
        "forecast",
        "`--lead-time -24h` (a value that starts with '-')",
        r"--lead-time must be a positive multiple of the model step \(12 h\), found '-24h'",
        "refuses with the command's own check (argparse took `-24h` for an option: 'expected one "
        "argument')",
    ),
    BadInput(
        "forecast-init-outside-data",
        "CLI argument",
        "forecast",
        "`--init-times 2031-01-01T00` (after the data's end)",
        r"lack input frames in the data.*covers .* \(time spacing: 12 h\)",
        "refuses: names the init times, the data's time range and its time spacing",
    ),
    BadInput(
        "forecast-bad-init-time",
        "CLI argument",
        "forecast",
        "`--init-times yesterday`",
        r"cannot parse 'yesterday'",
        "refuses: shows the accepted forms",
    ),
    BadInput(
        "forecast-stats-missing",
        "data store",
        "forecast",
        "`--stats` directory does not exist",
        r"stats dir .* does not exist",
        "refuses: names the directory and the files expected in it",
    ),
    BadInput(
        "forecast-data-in-other-units",
        "data store",
        "forecast",
        "`--data` with `2m_temperature` in deg C where the statistics are in K",
        r"init time .*: '2m_temperature' has a global mean of .*stddevs from the statistics' "
        r"mean .*other units than the statistics'",
        "refuses before making the store (was: normalised as it was, a forecast from far outside "
        "the training distribution, silently); Pa/hPa and geopotential/height likewise",
    ),
    BadInput(
        "forecast-other-grid",
        "data store",
        "forecast",
        "a checkpoint trained on a 181x360 grid run on data of another grid",
        r"--model .*model\.npz does not fit --data .*: it was trained on a 181x360 \(lat x lon\) "
        r"grid, the data are \d+x\d+",
        "refuses before making the store (was: the network builds on any grid and forecast out "
        "of its training distribution, silently); `distill` refuses such a teacher likewise, and "
        "an official file named for another resolution (`GenCast 1p0deg ...`)",
    ),
    BadInput(
        "forecast-stats-not-the-trained-ones",
        "data store",
        "forecast",
        "`--stats` other than the statistics the checkpoint records it was trained with",
        r"model\.npz was trained with other normalisation statistics than --stats .* give the "
        r"statistics it was trained with",
        "refuses before making the store (was: forecast with inputs normalised otherwise than in "
        "training, silently); `distill` refuses such a teacher likewise",
    ),
    BadInput(
        "forecast-ckpt-wrong-shape",
        "checkpoint",
        "forecast",
        "checkpoint with one parameter of the wrong shape",
        r"parameter mismatch.*expected shape",
        "refuses before creating the output store: names the parameter, expected and found shape",
    ),
    BadInput(
        "forecast-data-is-forecast",
        "data store",
        "forecast",
        "`--data` is a forecast store (WeatherBench 2 schema, with `prediction_timedelta`)",
        r"store .* is a forecast store \(it has a 'prediction_timedelta' dim.*expected analyses",
        "refuses before creating the output store: data stores hold analyses (was 'init times "
        "lack input frames in the data' naming the forecast's init times)",
    ),
    BadInput(
        "forecast-nan-inputs",
        "data store",
        "forecast",
        "NaN in `temperature` at the init time of the data store",
        r"NaN.*temperature",
        "refuses before creating the output store: names the variable and time in the data",
    ),
    BadInput(
        "forecast-resume-other-settings",
        "output",
        "forecast",
        "re-running into an existing forecast store with another ensemble size",
        r"holds a forecast made with other settings.*members",
        "refuses to mix runs: lists the settings that differ; the store is untouched",
    ),
    BadInput(
        "forecast-resume-other-checkpoint",
        "output",
        "forecast",
        "re-running into a forecast store after its checkpoint was rewritten at the same path "
        "(retrained weights)",
        r"holds a forecast made with another checkpoint at .*SHA-256",
        "refuses to mix two models' members in one ensemble; the store is untouched",
    ),
    BadInput(
        "forecast-resume-other-stats",
        "output",
        "forecast",
        "re-running into a forecast store after the normalisation statistics were recomputed at "
        "the same `--stats` path",
        r"holds a forecast made with other normalisation statistics .*SHA-256",
        "refuses to mix members normalised two ways in one ensemble; the store is untouched",
    ),
    BadInput(
        "forecast-resume-other-data",
        "output",
        "forecast",
        "re-running into a forecast store after the data store was re-made at the same `--data` "
        "path (`prepare --overwrite`, a nature run rebuilt with other content)",
        r"holds a forecast made with another data store at '.*data\.zarr' \(store id",
        "refuses to mix members started from two data stores; the store is untouched",
    ),
    BadInput(
        "forecast-output-foreign",
        "output",
        "forecast",
        "`--out` is an existing directory with other content",
        r"exists and is not a forecast store",
        "refuses and leaves the directory untouched",
    ),
    BadInput(
        "forecast-dataflow-without-project",
        "CLI argument",
        "forecast",
        "`--engine beam -- --runner=DataflowRunner` without `--project` and `--region`",
        r"Beam options for --runner=DataflowRunner: Missing required option: project\. Missing "
        r"required option: region\.",
        "refuses before any store is made (the store was made, then the run ended in an internal "
        "error, exit 1)",
    ),
    BadInput(
        "forecast-item-exceeds-memory",
        "CLI argument",
        "forecast",
        "`--lead-steps 1000000000`: a work item's states cannot fit in this machine's memory",
        r"a forecast work item \(2 member\(s\) x 1000000000 lead steps on the .* grid\) holds at "
        r"least .* MiB of states and forcings in memory, more than the .* MiB available here; "
        r"lower --member-block \(now 2\) or the lead time",
        "refuses before any store is made (XLA:CPU's failed allocation aborted the process, exit "
        "134, after a minute of work)",
    ),
    BadInput(
        "forecast-store-exceeds-disk",
        "output",
        "forecast",
        "`--members 100000000000`: the store cannot fit on the disk even at half its raw size",
        r"no space left on the device writing .*f\.zarr \(it takes about .* MiB, .* MiB free\)",
        "refuses before the store is made (the process was killed for memory, exit 137)",
    ),
    BadInput(
        "image-data-missing",
        "data store",
        "image teacher",
        "`--data` names a missing downsampled-ImageNet .npz",
        r"image data file .* does not exist \(expected a downsampled-ImageNet \.npz\)",
        "refuses before creating the run directory: names the file and the format expected",
    ),
    BadInput(
        "image-data-pickled",
        "data store",
        "image teacher",
        "`--data` .npz whose `data` entry is a pickled object array",
        r"cannot be read without pickle",
        "refuses without unpickling, before creating the run directory",
    ),
    BadInput(
        "image-data-wrong-shape",
        "data store",
        "image teacher",
        "`--data` .npz whose images are not 3 x 64 x 64",
        r"'data' should have shape \[N, 12288\].*found \(4, 10\)",
        "refuses before creating the run directory: expected and found shapes",
    ),
    BadInput(
        "image-classifier-zero-steps",
        "config",
        "image pareto",
        "`--set classifier.steps=0` on the digits config",
        r"classifier: steps must be >= 1, found 0",
        "refuses at config load, before the run directory exists (was an internal optax error "
        "after config.yaml had been written)",
    ),
    BadInput(
        "image-inception-weights-layout",
        "config",
        "image pareto",
        "`--set inception_weights=X.npz` where X.npz holds other arrays than the pytorch-fid "
        "InceptionV3 state dict (e.g. FID statistics)",
        r"not the pytorch-fid InceptionV3 state-dict layout .*470 of its 470 weights are "
        r"missing, e\.g\. Conv2d_1a_3x3\.conv\.weight",
        "refuses before the run directory exists: names the layout and the first missing weights "
        "(the key was reserved and ignored before: the distance stayed the classifier one)",
    ),
    BadInput(
        "image-fid-stats-without-weights",
        "config",
        "image pareto",
        "`--set inception_reference_stats=S.npz` without `inception_weights`",
        r"inception_reference_stats needs inception_weights",
        "refuses at config load: 2048-dimensional InceptionV3 statistics cannot be compared with "
        "classifier features",
    ),
    BadInput(
        "image-grad-accum-undivided",
        "config",
        "image pareto",
        "`--set teacher.grad_accum_steps=3` with the teacher's batch of 64",
        r"digits\.yaml with --set teacher\.grad_accum_steps=3: teacher: grad_accum_steps: must "
        r"be >= 1 and divide batch_size=64, found 3",
        "refuses at config load, before the run directory exists (micro-batches must be equal; "
        "the devices must divide each, checked next)",
    ),
    # ---------------------------------------------------------------- checkpoints
    BadInput(
        "ckpt-missing",
        "checkpoint",
        "teacher info",
        "checkpoint path does not exist",
        r"does not exist",
        "refuses: names the path",
    ),
    BadInput(
        "ckpt-is-dir",
        "checkpoint",
        "teacher info",
        "a directory (a teacher run) where the .npz file goes",
        r"is a directory; expected an \.npz file",
        "refuses: says a directory was given",
    ),
    BadInput(
        "ckpt-not-regular",
        "checkpoint",
        "teacher info",
        "a named pipe (FIFO) where the .npz file goes",
        r"is not a regular file; expected an \.npz file",
        "refuses without opening it (was reported as a file that does not exist)",
    ),
    BadInput(
        "ckpt-not-npz",
        "checkpoint",
        "teacher info",
        "a text file named `model.npz`",
        r"not an \.npz archive \(expected a zip file, found a file starting b'",
        "refuses: says it is not an .npz archive",
    ),
    BadInput(
        "ckpt-truncated",
        "checkpoint",
        "teacher info",
        "a valid checkpoint cut to half its size (interrupted download)",
        r"not a readable \.npz|unreadable",
        "refuses: says the archive cannot be read",
    ),
    BadInput(
        "ckpt-pickled",
        "checkpoint",
        "teacher info",
        "an entry holds a pickled Python object",
        r"description: holds a pickled Python object",
        "refuses without unpickling: names the key",
    ),
    BadInput(
        "ckpt-missing-key",
        "checkpoint",
        "teacher info",
        "`denoiser_architecture_config:mesh_size` removed",
        r"missing key denoiser_architecture_config:mesh_size",
        "refuses: lists every missing or bad key at once",
    ),
    BadInput(
        "ckpt-wrong-type",
        "checkpoint",
        "teacher info",
        "`sampler_config:num_noise_levels` is a string",
        r"sampler_config:num_noise_levels: expected an int",
        "refuses: names the key, the expected and the found type",
    ),
    BadInput(
        "ckpt-unknown-section",
        "checkpoint",
        "teacher info",
        "an unknown top-level section (`optimizer:*`)",
        r"unknown section 'optimizer'",
        "refuses: names the section and the allowed ones",
    ),
    BadInput(
        "ckpt-bad-student-sampler",
        "checkpoint",
        "forecast",
        "a student checkpoint whose `extra:student_sampler_config:num_steps` is 0",
        r"extra:student_sampler_config.*num_steps: must be >= 1, found 0",
        "refuses before creating the output store: names the section, key and allowed range",
    ),
    BadInput(
        "teacher-export-not-a-run",
        "checkpoint",
        "teacher export",
        "`--run` is an empty directory (no `teacher train` run)",
        r"not a teacher run directory.*run\.json",
        "refuses: says which file a run directory must hold; no .npz is written",
    ),
    BadInput(
        "teacher-export-over-other-file",
        "output",
        "teacher export",
        "`--out` is an existing file that is not an .npz archive (the run's own `run.json`)",
        r"run\.json' exists and is not an \.npz archive",
        "refuses before restoring the checkpoint and leaves the file as it was (a previous "
        "export is replaced; was: overwritten without a word)",
    ),
    BadInput(
        "teacher-export-out-ends-in-slash",
        "output",
        "teacher export",
        "`--out exports/` (a directory's path, not yet made)",
        r"'.*/exports/' ends in '/' \(a directory\); expected the path of a file",
        "refuses before restoring the checkpoint (was: wrote the .npz as a file named `exports`)",
    ),
    # ---------------------------------------------------------------- configs
    BadInput(
        "config-unknown-key",
        "config",
        "teacher train",
        "model config with a misspelt key (`mesh_sise`)",
        r"unknown key 'denoiser_architecture_config\.mesh_sise'.*allowed keys",
        "refuses before touching data: names file, key and the allowed keys",
    ),
    BadInput(
        "config-wrong-type",
        "config",
        "teacher train",
        "model config with `latent_size: big`",
        r"key 'denoiser_architecture_config\.latent_size': expected int, found 'big'",
        "refuses: names file, key, expected type and value found",
    ),
    BadInput(
        "config-bad-value",
        "config",
        "teacher train",
        "model config whose transformer width differs from the GNN width",
        r"d_model .* must equal latent_size",
        "refuses: names the two values that disagree",
    ),
    BadInput(
        "config-not-yaml",
        "config",
        "teacher train",
        "model config that is not valid YAML",
        r"not valid YAML",
        "refuses: names the file and the YAML error position",
    ),
    BadInput(
        "config-missing",
        "config",
        "teacher train",
        "`--config` names no file (and no name under configs/model/)",
        r"not found",
        "refuses: says where it looked",
    ),
    BadInput(
        "override-bad-value",
        "config",
        "teacher train",
        "`--set training.batch_size=0`",
        r"batch_size: must be >= 1, found 0",
        "refuses before training: names the key and the allowed range",
    ),
    BadInput(
        "override-unknown-training-key",
        "config",
        "teacher train",
        "`--set training.optimizer.lr=1e-4` (misspelt key) with a `--data` store that is missing too",
        r"^override 'training\.optimizer\.lr=1e-4': unknown key 'training\.optimizer\.lr' in "
        r"OptimizerConfig; allowed keys: .*learning_rate",
        "refuses before the store is read, naming the override (was: said the store was missing "
        "first, and then named the training config, not the override)",
    ),
    BadInput(
        "override-nan",
        "config",
        "teacher train",
        "`--set sampler_config.rho=nan` (NaN passes every range check: comparisons with it are False)",
        r"key 'sampler_config\.rho': expected a number, found NaN",
        "refuses before creating the run directory, for every config field (was: accepted; the "
        "sampler's noise levels were all NaN); infinity likewise, except GenCast's "
        "`churn_max_noise_level: .inf`",
    ),
    BadInput(
        "teacher-negative-seed",
        "CLI argument",
        "teacher train",
        "`--seed -1`",
        r"key 'seed': a seed must be in \[0, 2\*\*32\) .*found -1",
        "refuses before creating the run directory (was an internal error from NumPy after it)",
    ),
    BadInput(
        "teacher-task-step-off-the-store",
        "data store",
        "teacher train",
        "`--task` with `step_hours: 6`, the statistics' differences 12 h apart (a 12-hourly store)",
        r"diffs_stddev_by_level holds 12 h differences, but the task steps 6 h; compute them "
        r"with `gencast-rmmd data stats --step-hours 6`",
        "refuses before creating the run directory (was 'training window ... holds 0 init "
        "times'; with statistics of the right step, the store's own refusal names its spacing)",
    ),
    BadInput(
        "teacher-negative-variable-weight",
        "config",
        "teacher train",
        "`--set training.variable_weights={temperature: -1}`",
        r"variable_weights: a weight must be finite and >= 0, found temperature: -1",
        "refuses before creating the run directory (was accepted: a loss that rewards error in "
        "that variable; an unknown name was refused only after run.json was written)",
    ),
    BadInput(
        "override-malformed",
        "CLI argument",
        "teacher train",
        "`--set training.num_steps` (no `=value`)",
        r"expected the form key\.sub=value",
        "refuses: shows the expected form",
    ),
    BadInput(
        "distill-config-unknown-key",
        "config",
        "distill",
        "`--set mmd.loop.num_stepz=3` (misspelt key)",
        r"^override 'mmd\.loop\.num_stepz=3': unknown key "
        r"'mmd\.loop\.num_stepz'.*allowed keys",
        "refuses before loading the teacher: names the override, the key and the allowed keys "
        "(was: named the config file, which holds no such key)",
    ),
    BadInput(
        "distill-override-bad-value",
        "config",
        "distill",
        "`--set mmd.loop.batch_size=0`",
        r"mmd\.loop: batch_size: must be >= 1, found 0",
        "refuses before loading the teacher",
    ),
    BadInput(
        "distill-override-bad-date",
        "config",
        "distill",
        "`--set data.train_start=2020-13-01` (a date YAML would read as a calendar date)",
        r"data: train_start: not an ISO date/time: '2020-13-01'",
        "refuses before loading the teacher: names the key and the value",
    ),
    BadInput(
        "distill-teacher-missing",
        "checkpoint",
        "distill",
        "`--teacher` names a missing file",
        r"teacher checkpoint .* does not exist",
        "refuses before creating the run directory",
    ),
    BadInput(
        "distill-teacher-is-aux",
        "checkpoint",
        "distill",
        "`--teacher` is a distillation's `aux.npz` (provenance role `aux`)",
        r"aux\.npz is a distillation's auxiliary denoiser .*not a teacher",
        "refuses before reading the data (was accepted: a student distilled from the model of "
        "another student's samples)",
    ),
    BadInput(
        "distill-store-lacks-variable",
        "data store",
        "distill",
        "the data store lacks a variable of the teacher's task",
        r"lacks variables \['mean_sea_level_pressure'\] needed by the task",
        "refuses before creating the run directory: names the missing variables",
    ),
    BadInput(
        "distill-rmmd-without-mmd",
        "CLI argument",
        "distill",
        "`--phase rmmd` in a run directory without phase 1",
        r"run phase 1 first",
        "refuses: says which phase to run first",
    ),
    BadInput(
        "distill-resume-other-teacher",
        "output",
        "distill",
        "re-running into a distillation run after its teacher was rewritten at the same path "
        "(retrained weights)",
        r"begun from another teacher \(SHA-256",
        "refuses to continue a state trained against another teacher; the run is untouched",
    ),
    # ---------------------------------------------------------------- CLI arguments
    BadInput(
        "unknown-variable",
        "CLI argument",
        "evaluate",
        "`--variables` names a variable neither store has",
        r"not in both stores",
        "refuses: lists the variables each store has",
    ),
    BadInput(
        "lead-chunk-zero",
        "CLI argument",
        "evaluate",
        "`--lead-chunk 0`",
        r"lead_chunk must be >= 1",
        "refuses before reading any data",
    ),
    BadInput(
        "evaluate-negative-seed",
        "CLI argument",
        "evaluate",
        "`--seed -5`",
        r"--seed: a seed must be in \[0, 2\*\*32\) .*found -5",
        "refuses before reading any data (was an internal error after the statistics were computed)",
    ),
    BadInput(
        "evaluate-remote-runner-local-work",
        "CLI argument",
        "evaluate",
        "`-- --runner=FlinkRunner --temp_location=/tmp/x` (workers elsewhere, no shared URL)",
        r"the Beam runner FlinkRunner runs its workers elsewhere.*--work-dir.*as a URL they share",
        "refuses before any statistics are computed (the workers would have written them to "
        "their own disks)",
    ),
    BadInput(
        "bad-choice",
        "CLI argument",
        "evaluate",
        "`--engine spark` (not a choice)",
        r"invalid choice",
        "argparse usage error (exit 2) naming the allowed choices",
    ),
    BadInput(
        "beam-runner-unknown",
        "CLI argument",
        "data stats",
        "`-- --runner=NopeRunner` (a Beam runner that does not exist)",
        r"Beam option --runner=NopeRunner: Unexpected pipeline runner: NopeRunner\. Valid values",
        "refuses before opening the store: Beam's list of runners in one message",
    ),
    BadInput(
        "beam-option-typo",
        "CLI argument",
        "evaluate",
        "`-- --runnner=DataflowRunner --num_wrkers=3` (misspelt Beam options)",
        r"Beam option\(s\) not known to Beam: --num_wrkers \(did you mean --num_workers\?\), "
        r"--runnner \(did you mean --runner\?\)",
        "refuses before opening a store, naming each option and the closest Beam option (Beam "
        "itself only logs 'Discarding unparseable args' and runs on the local runner)",
    ),
    BadInput(
        "beam-option-bad-value",
        "CLI argument",
        "evaluate",
        "`-- --num_workers=two` (a Beam option with a value of the wrong type)",
        r"Beam options: argument --num_workers: invalid int value: 'two'",
        "refuses in one line (was Beam's argparse usage, some 200 lines, then exit 2)",
    ),
    BadInput(
        "stats-step-no-pairs",
        "CLI argument",
        "data stats",
        "`--step-hours 7` on 12-hourly data (no two times one step apart)",
        r"no two times of the store are 7 h apart .*time spacing: 12 h",
        "refuses before reading any block: names the step and the store's time spacing (was the "
        "same refusal after every block had been read)",
    ),
    # ---------------------------------------------------------------- outputs
    BadInput(
        "teacher-out-is-file",
        "output",
        "teacher train",
        "`--out` is an existing regular file",
        r"exists and is not a directory|is a file",
        "refuses before training and leaves the file untouched",
    ),
    BadInput(
        "teacher-out-in-use",
        "output",
        "teacher train",
        "`--out` is a run directory another `teacher train` process is writing (it holds the "
        "output's lock, `locks.output_lock`; two such runs mixed their checkpoints and metrics)",
        r"--out '[^']*run' is being written by another gencast-rmmd process \(gencast-rmmd "
        r"teacher train, pid \d+ on .*lock file .*\.run\.lock",
        "refuses before reading anything: names the other process (pid, host, start time) and "
        "the lock file",
    ),
    BadInput(
        "teacher-out-is-url",
        "output",
        "teacher train",
        "`--out gs://some-bucket/run` (a command that writes on local disk only; so do "
        "`teacher export`, `distill`, `evaluate`, `image`, `quickstart` and `data nature-run`)",
        r"`teacher train` writes its output on local disk, not at a URL",
        "refuses before training (was: the run was written without a word to the local "
        "directory `gs:/some-bucket/run`, the URL read as a path)",
    ),
    BadInput(
        "teacher-resume-other-stats",
        "output",
        "teacher train",
        "re-running into a teacher run after its statistics were rewritten at the same path "
        "(other bytes)",
        r"begun from other normalisation statistics \(SHA-256",
        "refuses to continue a state trained on other normalised targets; the run is untouched",
    ),
    BadInput(
        "distill-out-is-file",
        "output",
        "distill",
        "`--out` is an existing regular file",
        r"--out '.*run' exists and is not a directory; choose a run directory",
        "refuses before loading the teacher and leaves the file untouched",
    ),
    BadInput(
        "distill-out-under-file",
        "output",
        "distill",
        "`--out` lies under an existing regular file (`FILE/run`)",
        r"--out '.*run': '.*' is a file; choose a run directory",
        "refuses before loading the teacher: names the file in the way",
    ),
    BadInput(
        "stats-out-is-file",
        "output",
        "data stats",
        "`--out` is an existing regular file",
        r"exists and is not a directory|is a file",
        "refuses before computing anything and leaves the file untouched",
    ),
    BadInput(
        "stats-out-not-creatable",
        "output",
        "data stats",
        "`--out` where no directory can be made (`/proc/x`: as a read-only mount or a missing "
        "permission)",
        r"--out '/proc/x': cannot create a directory in '/proc' \(",
        "refuses before computing anything (it used to fail in the last pipeline step)",
    ),
    BadInput(
        "nature-run-out-exists",
        "output",
        "data nature-run",
        "`--out` already exists (no `--overwrite`)",
        r"already exists.*--overwrite",
        "refuses before simulating anything and leaves the output untouched",
    ),
    BadInput(
        "nature-run-exceeds-memory",
        "CLI argument",
        "data nature-run",
        "`--days 100000000`: the build cannot be held in this machine's memory",
        r"a nature run of 100000000 days holds at least .* MiB in memory while it is built, more "
        r"than the .* MiB available here; build fewer --days",
        "refuses before simulating anything (it simulated on, 6,000 h by its own ETA, towards an "
        "output it could not hold)",
    ),
    BadInput(
        "nature-run-negative-seed",
        "CLI argument",
        "data nature-run",
        "`--seed -1`",
        r"data nature-run: --seed: a seed must be in \[0, 2\*\*32\) .*found -1",
        "refuses before simulating (was: simulated and wrote the store; the config's `seed` key "
        "was refused, the flag was not)",
    ),
    BadInput(
        "output-exists-other",
        "output",
        "evaluate",
        "`--out` is an existing directory holding unrelated files",
        r"exists and holds other files",
        "refuses and leaves the directory untouched",
    ),
    BadInput(
        "output-is-file",
        "output",
        "evaluate",
        "`--out` is an existing regular file",
        r"(exists|not a directory)",
        "refuses and leaves the file untouched",
    ),
)


FAULTS: tuple[Fault, ...] = (
    Fault(
        "teacher-kill9",
        "`gencast-rmmd teacher train` (tiny GenCast, 24 steps, checkpoint every 3)",
        "SIGKILL during start-up, while orbax writes a checkpoint (x2), and 1-3 steps after a "
        "checkpoint (x2); then resume",
        5,
        "resumes from the last complete checkpoint; final parameters and the loss of every step "
        "equal an uninterrupted run's bit for bit; no teacher.npz before the run has finished",
    ),
    Fault(
        "teacher-sigterm",
        "`gencast-rmmd teacher train` (tiny GenCast, 24 steps, checkpoint every 3)",
        "SIGTERM (a preempted VM's notice, a batch system's time limit) 1-5 steps after the last "
        "stop, twice; then resume",
        2,
        "finishes the step, saves a checkpoint at it (between the regular ones), says so and "
        "exits with status 143 (was: ended at once, losing the steps since the last "
        "checkpoint); the resumed run's parameters and losses equal an uninterrupted run's",
    ),
    Fault(
        "distill-kill9",
        "the distiller `distill.trainer.run_phase` (RMMD phase 2: on-policy, 2 members, CRPS "
        "reward, L2 anchor; alternating aux/student rules; 45 steps, checkpoint every 3)",
        "SIGKILL during start-up, while orbax writes a checkpoint (x2), and 1-3 steps after a "
        "checkpoint (x2); then resume",
        5,
        "resumes from the last complete checkpoint; student and auxiliary parameters and the loss "
        "of every step equal an uninterrupted run's bit for bit",
    ),
    Fault(
        "distill-cli-kill9",
        "`gencast-rmmd distill --phase mmd` (GenCast objective on a tiny teacher, 12 steps, "
        "checkpoint every 3)",
        "SIGKILL 1-3 steps after a new checkpoint, then while orbax writes the next one; resume",
        2,
        "the exported student.npz and the loss of every step equal an uninterrupted run's",
    ),
    Fault(
        "distill-cli-sigterm",
        "`gencast-rmmd distill --phase mmd` (GenCast objective on a tiny teacher, 12 steps, "
        "checkpoint every 3)",
        "SIGTERM 1-4 steps after the last stop, twice; then resume",
        2,
        "finishes the step, saves a checkpoint at it, says so and exits with status 143 without "
        "exporting a student; the resumed run's student.npz and losses equal an uninterrupted "
        "run's",
    ),
    Fault(
        "forecast-kill9",
        "`gencast-rmmd forecast` (8 init times x 4 members in blocks of 2, 3 lead steps)",
        "SIGKILL during start-up, then twice after a random number of written regions",
        3,
        "the store stays `incomplete` (evaluation refuses it); the re-run writes only the missing "
        "regions; the final store equals a clean run's value for value",
    ),
    Fault(
        "evaluate-kill9",
        "`gencast-rmmd evaluate` (4 init times x 3 leads)",
        "SIGKILL at a random moment after the work started",
        2,
        "no output directory appears (results are built in a temporary directory and renamed); "
        "the re-run scores only the work items not kept from the killed runs, its scorecard "
        "equals a clean run's, and the kept items are removed",
    ),
    Fault(
        "prepare-kill9",
        "`gencast-rmmd data prepare` (16 times in blocks of 2)",
        "SIGKILL after a random number of finished blocks",
        2,
        "`data validate` reports the store `[incomplete]`; the re-run completes it; the store "
        "equals a clean run's and validates",
    ),
    Fault(
        "disk-full",
        "`gencast-rmmd teacher train` (first checkpoint) and `evaluate` (memory engine) writing "
        "into a 2 MiB tmpfs (skipped where the tests cannot mount one)",
        "the disk filled to 16 KiB of free space before the command starts; then freed",
        2,
        "one `gencast-rmmd: error:` line each, exit status 2 (was 1 682 lines of orbax tracebacks "
        "and an internal error; evaluate: a segmentation fault in HDF5): a checkpoint or netCDF "
        "file that cannot fit is refused before it is begun, other writes out of space are "
        "reported as such; nothing half-made is left but evaluate's kept work items; once freed "
        "both commands finish",
    ),
    Fault(
        "stats-kill9",
        "`gencast-rmmd data stats` (16 times in blocks of 1)",
        "SIGKILL after a random number of blocks reduced",
        2,
        "no statistics files appear; the re-run reduces only the blocks the killed runs did not "
        "keep, writes the same bytes as a clean run, and removes the kept blocks",
    ),
)


@dataclasses.dataclass(frozen=True)
class Audit:
    id: str
    rule: str
    check: str


AUDITS: tuple[Audit, ...] = (
    Audit(
        "no-pickle",
        "no pickle anywhere: `np.load(..., allow_pickle=False)` explicitly, `yaml.safe_load` only, "
        "no pickle/dill/joblib/torch imports, no eval/exec",
        "AST scan of gencast_rmmd/, pipelines/, tools/ (the scanner is itself tested on a file "
        "with each pattern)",
    ),
    Audit(
        "pickled-checkpoint",
        "a checkpoint holding a pickled object is refused without unpickling anything",
        "an .npz whose `description` is an object array whose unpickling would write a marker "
        "file: CheckpointError names the key, the marker is never written",
    ),
    Audit(
        "checkpoint-validated",
        "checkpoint parameter names, shapes and dtypes are checked against the model before use",
        "a checkpoint with a transposed tensor, a float64 tensor, a missing and an unexpected "
        "parameter: one CheckpointError listing all 4",
    ),
    Audit(
        "gcs-anonymous",
        "gs:// stores are read anonymously (`token='anon'`) unless credentials are asked for "
        "(a `token` in the data config, or fsspec's configuration: `FSSPEC_GS_TOKEN`)",
        "the DataConfig default (unset), the shipped ARCO-ERA5 config, and the storage options "
        "`open_store` passes to Zarr with and without fsspec credentials",
    ),
    Audit(
        "outputs-confined",
        "a command writes only inside the output location it was given",
        "a full `evaluate` run: every new file is under --out, nothing next to it changes",
    ),
    Audit(
        "outputs-umask",
        "files written atomically (temp name + rename) get the permissions of a plain write",
        "under umask 022 the exported checkpoint, the stats files and the evaluation directory "
        "have the modes of a plain write (0644 / 0755); an AST scan finds `tempfile.mkstemp` "
        "only in `remote.written` (and its fetches), through which every file writer goes, and "
        "`os.replace` elsewhere only where a directory is published",
    ),
    Audit(
        "no-secrets",
        "credentials (a gcsfs `token` in the data config) never reach outputs or logs",
        "`data prepare` with a token string in its config: the string is in no written file and "
        "not on stdout/stderr",
    ),
)


@dataclasses.dataclass(frozen=True)
class Defect:
    """An open defect found by these tests that no table row shows (rows carry their own)."""

    id: str
    where: str
    what: str


OPEN_DEFECTS: tuple[Defect, ...] = ()


def bad_input_ids() -> list[str]:
    return [c.id for c in BAD_INPUTS]


def case(case_id: str) -> BadInput:
    for c in BAD_INPUTS:
        if c.id == case_id:
            return c
    raise KeyError(case_id)
