#!/usr/bin/env bash
# The prepared GPU check of issues #6 and #3: one run on a CUDA machine, JSON figures in $OUT.
#
#   tools/device_check.sh wheels     # here (PyPI reachable): fetch the packages the GPU image lacks
#   tools/device_check.sh pack RUN   # here: copy a quickstart run's timed models into .devrun/
#   tools/device_check.sh run        # there: install them, then time teacher vs student and train
#
# `wheels` downloads, into `.whl/` (ignored through .git/info/exclude), the pure-Python and
# CPython 3.12 manylinux wheels of what this project imports on the speed and training path and
# the device image (JAX with CUDA, optax, orbax, xarray, ...) does not hold: dm-haiku, dinosaur
# and their needs, and zarr. `pack RUN` copies what benchmarks/speed.py times from a quickstart
# run (the 59-evaluation teacher, the student as forecast, the stats, and a one-time-step copy of
# the store for the grid: a few MB) into `.devrun/`, ignored like `.whl/`; name both in `carry`.
# `run` installs the wheels into /tmp/site without touching the image's JAX, puts the source tree
# on PYTHONPATH, and writes:
#   devices.txt         jax.devices(), the backend, the JAX and Haiku versions
#   train_rmmd.json     benchmarks/distill.py --phases rmmd --skip-sample: phase 2's training
#                       steps/s with the tiny GenCast (the jitted step sharded over a `data` mesh
#                       of all local devices), each compilation of 1 s or more logged
#   speed.json          benchmarks/speed.py on the packed run's models (when .devrun/ exists):
#                       the quickstart's headline step time, 8 members per call and one member
#   train_mmd.json      the same for phase 1 (two compiled rules: aux and student steps)
#   distill_mini.json   the same 12 h steps with the Mini architecture on the 1 deg grid
#   teacher.json        benchmarks/teacher.py: forward, 39-evaluation step and training steps of
#                       the tiny and Mini architectures
#   image_memory.json   benchmarks/image_memory.py: XLA's memory analysis of the ImageNet 64
#                       teacher step at 1 and 4 accumulation micro-batches, on the device
#   stages.log          the finished stages' progress lines (stderr)
# Each stage has its own time limit (DEVICE_CHECK_LIMIT_S, default 240 s), so one slow stage
# cannot eat a short device lease; a stage that fails or times out leaves a .err file (at the
# limit, with every Python thread's stack) and the others still run. On a CPU machine the same
# script runs (slowly); DEVICE_CHECK_MINI=0 skips the Mini stages.
#
# Run once on an H200 (2026-12-04, JAX 0.11.2 CUDA 13, `JAX_PLATFORMS=cuda
# DEVICE_CHECK_LIMIT_S=200`, 570 s call; docs/distill.md, "On a GPU"): speed.json 71 s and
# distill_mini.json 138 s done; the training stage (then both phases and the tiny 12 h steps in
# one) ran past 200 s without output, and the call's limit stopped teacher.json. The training
# steps now come first, one phase per stage, without the 12 h steps (speed.json times those on
# the real models), and log their progress and compilations, so the next lease shows where the
# time goes. On this 2-core CPU, one device: train_rmmd 61 s (one compilation of 21.4 s; first two
# steps 34.1 s), train_mmd 43 s (two compilations of 12.5-12.8 s). XLA_FLAGS passes through (e.g.
# --xla_gpu_autotune_level=0, to see how much of a GPU compilation is autotuning).
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  dm-haiku==0.0.17 jmp==0.0.4 dinosaur==1.5.1 tree-math==0.2.1 Pint==0.25.3 flexcache==0.3
  flexparser==0.4 platformdirs==4.14.9 lazy-importer==0.1.0 dask==2026.8.0
  importlib_metadata==10.2.0 pytz==2026.6 zstandard==0.25.0
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
)

case "${1:-}" in
  wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ;;
  pack)
    RUN="${2:?usage: tools/device_check.sh pack RUN (a quickstart run directory)}"
    if [ -z "${DEVRUN:-}" ]; then  # DEVRUN=DIR packs elsewhere (what the test does)
      grep -qx '/.devrun/' .git/info/exclude 2>/dev/null || echo '/.devrun/' >> .git/info/exclude
    fi
    exec "${PYTHON:-.venv/bin/python}" - "$RUN" "${DEVRUN:-.devrun}" <<'PY'
import json, pathlib, shutil, sys

from gencast_rmmd.cli.quickstart_chain import Context, forecast_npz
from gencast_rmmd.data.era5 import open_zarr_quiet

ctx = Context.from_run(sys.argv[1])
dst = pathlib.Path(sys.argv[2])
shutil.rmtree(dst, ignore_errors=True)
dst.mkdir()
shutil.copy(ctx.teacher_eval_npz, dst / "teacher.npz")
shutil.copy(forecast_npz(ctx, "student"), dst / "student.npz")
shutil.copytree(ctx.stats_dir, dst / "stats")
with open_zarr_quiet(ctx.store, chunks=None) as ds:
    ds.isel(time=slice(0, 1)).to_zarr(dst / "grid.zarr", mode="w", consolidated=False)
(dst / "source.json").write_text(json.dumps({"run": sys.argv[1], "store": ctx.store}))
print(f"packed {sys.argv[1]} into {dst}/")
PY
    ;;
  run) ;;
  *)
    echo "usage: tools/device_check.sh wheels|pack RUN|run" >&2
    exit 2
    ;;
esac

OUT="${OUT:-runs/device}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
LIMIT="${DEVICE_CHECK_LIMIT_S:-240}"

stage() {  # stage NAME COMMAND...: stdout to $OUT/NAME, stderr to $OUT/NAME.err on failure
  local name=$1
  shift
  local t0=$SECONDS
  # SIGABRT at the limit: with PYTHONFAULTHANDLER set, Python writes every thread's stack into
  # the .err file first, so a stage that overran shows where it was.
  timeout -s ABRT -k 10 "$LIMIT" "$@" > "$OUT/$name" 2> "$OUT/$name.err"
  local rc=$?
  if [ "$rc" = 0 ]; then  # keep the stage's progress lines (stderr) in one log
    { echo "== $name"; cat "$OUT/$name.err"; } >> "$OUT/stages.log"
    rm -f "$OUT/$name.err"
    echo "== $name: done in $((SECONDS - t0)) s"
  elif [ "$rc" = 124 ]; then
    echo "== $name: timed out after $LIMIT s (DEVICE_CHECK_LIMIT_S)" | tee -a "$OUT/$name.err"
  else
    echo "== $name: failed with exit status $rc after $((SECONDS - t0)) s (see $name.err)"
    tail -5 "$OUT/$name.err"
  fi
}

stage devices.txt "$PY" -c 'import jax, haiku; print(jax.default_backend(), jax.devices(), \
  "jax", jax.__version__, "haiku", haiku.__version__)'
cat "$OUT/devices.txt"
TRAIN=(benchmarks/distill.py --skip-sample --train-steps 4 --log-compiles)
stage train_rmmd.json "$PY" "${TRAIN[@]}" --phases rmmd
if [ -d .devrun ]; then
  stage speed.json "$PY" benchmarks/speed.py --teacher .devrun/teacher.npz \
    --student .devrun/student.npz --stats .devrun/stats --data .devrun/grid.zarr \
    --members 8 --repeats 10 --one-member
fi
stage train_mmd.json "$PY" "${TRAIN[@]}" --phases mmd
if [ "${DEVICE_CHECK_MINI:-1}" != 0 ]; then
  stage distill_mini.json "$PY" benchmarks/distill.py --config gencast_1p0deg_mini --grid 1deg \
    --skip-train --levels 20,30 --repeats 3
  stage teacher.json "$PY" benchmarks/teacher.py --mini-sample --mini-train --train-steps 5
else
  stage teacher.json "$PY" benchmarks/teacher.py --skip-mini
fi
# last, as the least urgent: the ImageNet 64 teacher step's memory on the device (XLA CPU: 130 GB
# temp at 1 micro-batch, 33 GB at 4: does imagenet64.yaml's accumulation fit an 80 GB GPU?)
stage image_memory.json "$PY" benchmarks/image_memory.py --accum 1 4 --stages teacher
