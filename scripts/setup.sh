#!/usr/bin/env bash
# Build the reference environment in .venv at the repository root.
# Idempotent: a stamp records what the venv was built from, and a second run
# with nothing changed returns at once.  Needs only python3.11 and pip.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=.venv
pip_() {
  # This machine's pip config names local indexes that pip warns about once
  # per package; the warnings are noise, errors still show.
  "$VENV/bin/python" -m pip --disable-pip-version-check --quiet "$@" 2>&1 \
    | { grep -v '^WARNING: Location .* is ignored' || true; }
  return "${PIPESTATUS[0]}"
}
stamp=$(cat constraints/reference.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$VENV/.setup-stamp" ] && [ "$(cat "$VENV/.setup-stamp")" = "$stamp" ] \
   && "$VENV/bin/python" -c "import harness, backends" 2>/dev/null; then
  echo "set-up: $VENV is up to date"
  exit 0
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"set-up: the reference environment needs Python 3.11, found {sys.version.split()[0]}")
PY

echo "set-up: building $VENV (first time: a few minutes)"
rm -f "$VENV/.setup-stamp"
"$PYTHON" -m venv "$VENV"
# chainer 7.8.1 is an sdist whose build needs pkg_resources from setuptools<70;
# build it first, without build isolation, against that setuptools.
pip_ install "setuptools<70" wheel
pip_ install -c constraints/reference.txt --no-build-isolation chainer==7.8.1
# Everything else, and the harness itself (editable).  torch's metadata pulls
# setuptools>=77 back in here...
pip_ install -c constraints/reference.txt -e ".[all,test]"
# JAX and Flax (constraints/reference.txt says why each is pinned): jax
# first, with its resolvable dependencies; then flax, chex and optax without
# theirs (pip's resolver backtracks for many minutes through orbax and
# tensorstore releases that want a newer numpy or jax, and its choice of
# chex fails to import with jax 0.4.30), then the few flax needs at import.
pip_ install -c constraints/reference.txt jax jaxlib scipy
pip_ install -c constraints/reference.txt --no-deps flax chex optax
pip_ install -c constraints/reference.txt msgpack PyYAML typing_extensions "etils[epy]" toolz
# ...and chainer imports distutils.msvccompiler, gone in setuptools>=70, so the
# old one goes back last.  pip warns about torch's declared setuptools>=77;
# torch needs it only to build C++ extensions.
pip_ install "setuptools<70" | { grep -v "dependency resolver\|requires setuptools" || true; }
echo "$stamp" > "$VENV/.setup-stamp"
echo "set-up: done"
