#!/usr/bin/env bash
# Install a built wheel the way a user would and smoke-test it:
#
#   tools/check_wheel.sh dist/cpu/fastopt-*.whl
#
# A fresh venv (no system site-packages, so neither this checkout nor an editable install can
# stand in for the wheel) gets the wheel and its dependencies from the package index; then
# tools/smoke_test.py runs from an empty directory outside the source tree. Exits non-zero when
# the install or any check fails.
set -euo pipefail
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
  echo "usage: $0 WHEEL" >&2
  exit 2
fi
wheel=$(realpath "$1")
smoke=$(realpath "$(dirname "$0")/smoke_test.py")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel"
mkdir "$work/run"
cp "$smoke" "$work/run/"
cd "$work/run"
# -I: no PYTHON* variables, no user site, no script directory on sys.path.
"$work/venv/bin/python" -I smoke_test.py
"$work/venv/bin/python" -I -c "
import fastopt, sys
if not fastopt.__file__.startswith(sys.prefix):
    sys.exit(f'fastopt came from {fastopt.__file__}, not from the venv {sys.prefix}')"
