#!/usr/bin/env bash
# The test suite on a newer Python than this machine's, with the package versions it installs.
#
#   sudo tools/newer_python_check.sh [SUITE] [ROOT]   # SUITE: a Debian suite (default trixie;
#                                                     # testing = forky: Python 3.14)
#
# This machine has Python 3.11 only, where pip resolves our pins to older releases (zarr 3.1,
# jax 0.10); on Python >= 3.12 the same pins take newer ones (zarr 3.4, jax 0.12). Debian's
# newer suite carries a newer Python (trixie: 3.13), so this builds that suite's minimal root
# with debootstrap in ROOT (default /tmp/gencast_rmmd_<suite>, kept and reused), clones the
# current commit into it, runs `make install` there (the newest releases our pins admit) and
# then the whole suite (about 20 min on 2 cores). It needs root, debootstrap (installed if
# missing) and the package registries, and leaves the mounts in place while it runs (undone at
# exit). Output: ROOT/root/repo/test.log, and on the terminal the installed versions, any
# failures and pytest's closing line.
set -euo pipefail
SUITE=${1:-trixie}
ROOT=${2:-/tmp/gencast_rmmd_$SUITE}
REPO=$(cd "$(dirname "$0")/.." && pwd)

command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  echo "building a minimal Debian $SUITE in $ROOT (log: $ROOT.debootstrap.log)"
  # A suite newer than this machine's debootstrap (forky on bookworm's) builds with sid's script.
  SCRIPT=()
  [ -e "/usr/share/debootstrap/scripts/$SUITE" ] || SCRIPT=(/usr/share/debootstrap/scripts/sid)
  debootstrap --variant=minbase --include=python3,python3-venv,make,git,ca-certificates \
    "$SUITE" "$ROOT" http://deb.debian.org/debian "${SCRIPT[@]}" >"$ROOT.debootstrap.log" 2>&1
fi
# This machine's resolver, host name (gloo's CPU collectives resolve it) and CA bundle (the
# registries may be reached through a proxy that signs with a local CA).
cp /etc/resolv.conf /etc/hosts "$ROOT/etc/"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOT/etc/pip.conf"

for m in proc sys dev; do mountpoint -q "$ROOT/$m" || mount --bind "/$m" "$ROOT/$m"; done
trap 'for m in dev sys proc; do umount "$ROOT/$m" 2>/dev/null || true; done' EXIT

rm -rf "$ROOT/root/repo"
git clone -q "$REPO" "$ROOT/root/repo"
# A clean environment inside: this machine's pip settings (find-links into /opt) do not apply.
chroot "$ROOT" env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 bash -c '
  set -euo pipefail
  cd /root/repo
  python3 --version
  make install
  .venv/bin/pip list 2>/dev/null | grep -iE "^(jax|jaxlib|numpy|zarr|xarray|apache-beam|orbax-checkpoint|grain|dm-haiku|dinosaur) "
  JAX_PLATFORMS=cpu .venv/bin/python -m pytest -q -p no:cacheprovider >test.log 2>&1 || true
  grep -E "^(FAILED|ERROR) " test.log || true
  tail -n 1 test.log
'
