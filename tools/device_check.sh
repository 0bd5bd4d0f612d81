#!/usr/bin/env bash
# The prepared GPU check of issues #6 and #3: one run on a CUDA machine, JSON figures in $OUT.
#
#   tools/device_check.sh wheels   # here (PyPI reachable): fetch the packages the GPU image lacks
#   tools/device_check.sh run      # there: install them, then time teacher vs student and train
#
# `wheels` downloads, into `.whl/` (ignored through .git/info/exclude), the pure-Python and
# CPython 3.12 manylinux wheels of what this project imports on the speed and training path and
# the device image (JAX with CUDA, optax, orbax, xarray, ...) does not hold: dm-haiku, dinosaur
# and their needs. `run` installs them into /tmp/site without touching the image's JAX, puts the
# source tree on PYTHONPATH, and writes:
#   devices.txt         jax.devices() and the backend
#   distill_tiny.json   benchmarks/distill.py: phase 1 and phase 2 training steps/s (jitted steps
#                       sharded over a `data` mesh of all local devices) and one 12 h step,
#                       teacher (39 and 59 evaluations) vs student (8), same process
#   distill_mini.json   the same 12 h steps with the Mini architecture on the 1 deg grid
#   teacher.json        benchmarks/teacher.py: forward, 39-evaluation step and training steps of
#                       the tiny and Mini architectures
# Each stage has its own time limit (DEVICE_CHECK_LIMIT_S, default 240 s), so one slow stage
# cannot eat a short device lease; a stage that fails or times out leaves a .err file and the
# others still run. On a CPU machine the same script runs (slowly); DEVICE_CHECK_MINI=0 skips
# the Mini stages. Tried here on CPU only (`PYTHON=.venv/bin/python DEVICE_CHECK_MINI=0`, JAX
# 0.10.2); no GPU has been lent yet, and the device image's JAX (0.11.2) is newer.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  dm-haiku==0.0.17 jmp==0.0.4 dinosaur==1.5.1 tree-math==0.2.1 Pint==0.25.3 flexcache==0.3
  flexparser==0.4 platformdirs==4.14.9 lazy-importer==0.1.0 dask==2026.8.0
  importlib_metadata==10.2.0 pytz==2026.6 zstandard==0.25.0
)

case "${1:-}" in
  wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ;;
  run) ;;
  *)
    echo "usage: tools/device_check.sh wheels|run" >&2
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
export PYTHONUNBUFFERED=1
LIMIT="${DEVICE_CHECK_LIMIT_S:-240}"

stage() {  # stage NAME COMMAND...: stdout to $OUT/NAME, stderr to $OUT/NAME.err on failure
  local name=$1
  shift
  local t0=$SECONDS
  timeout "$LIMIT" "$@" > "$OUT/$name" 2> "$OUT/$name.err"
  local rc=$?
  if [ "$rc" = 0 ]; then
    rm -f "$OUT/$name.err"
    echo "== $name: done in $((SECONDS - t0)) s"
  elif [ "$rc" = 124 ]; then
    echo "== $name: timed out after $LIMIT s (DEVICE_CHECK_LIMIT_S)" | tee -a "$OUT/$name.err"
  else
    echo "== $name: failed with exit status $rc after $((SECONDS - t0)) s (see $name.err)"
    tail -5 "$OUT/$name.err"
  fi
}

stage devices.txt "$PY" -c 'import jax; print(jax.default_backend(), jax.devices())'
cat "$OUT/devices.txt"
stage distill_tiny.json "$PY" benchmarks/distill.py --repeats 3 --train-steps 4
if [ "${DEVICE_CHECK_MINI:-1}" != 0 ]; then
  stage distill_mini.json "$PY" benchmarks/distill.py --config gencast_1p0deg_mini --grid 1deg \
    --skip-train --levels 20,30 --repeats 3
  stage teacher.json "$PY" benchmarks/teacher.py --mini-sample --mini-train --train-steps 5
else
  stage teacher.json "$PY" benchmarks/teacher.py --skip-mini
fi
