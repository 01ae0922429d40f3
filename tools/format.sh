#!/usr/bin/env bash
# Format and lint the sources: ruff (Python; settings in pyproject.toml) and clang-format
# (C++/CUDA; settings in .clang-format).
#
#   tools/format.sh           rewrite: ruff check --fix, ruff format, clang-format -i
#   tools/format.sh --check   change nothing; exit non-zero if anything would change or a lint
#                             finding remains (what CI runs)
#
# The tools are pinned in pyproject.toml's dev extra (pip install ruff==... clang-format==...):
# another version formats differently, so a mismatch is an error rather than a noisy diff.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-fix}
case "$mode" in
  fix|--check) ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

for tool in ruff clang-format; do
  want=$(grep -o "\"$tool==[^\"]*\"" pyproject.toml | sed 's/.*==\(.*\)"/\1/')
  have=$("$tool" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1 || true)
  if [ "$have" != "$want" ]; then
    echo "$0: needs $tool $want (found ${have:-none}): pip install $tool==$want" >&2
    exit 2
  fi
done

dirs=(python tests bench cpp cuda tools)
mapfile -t cxx < <(find "${dirs[@]}" -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | sort)

if [ "$mode" = --check ]; then
  status=0
  ruff format --check "${dirs[@]}" || status=1
  ruff check "${dirs[@]}" || status=1
  clang-format --dry-run -Werror "${cxx[@]}" || status=1
  [ $status -eq 0 ] && echo "format: clean" || echo "format: run tools/format.sh to fix (lint findings may need a hand)" >&2
  exit $status
fi
# Lint findings ruff cannot fix are reported; the formatting is applied all the same.
status=0
ruff check --fix "${dirs[@]}" || status=1
ruff format "${dirs[@]}"
clang-format -i "${cxx[@]}"
exit $status
