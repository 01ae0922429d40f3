#!/usr/bin/env bash
# The first measurements of the AMX-BF16 tile path (issue 17), for a session on a CPU that has it
# (`amx_bf16` in /proc/cpuinfo: Intel Sapphire Rapids and later). One command, about 30 minutes
# on 2 cores, writing into OUTDIR (default bench/results/cpu-amx-<UTC date>):
#   info.txt           the CPU's model and AMX/AVX512 flags, `fastopt info` (amx must say "tiles")
#   tests.log          the bf16 conv2d and linear suites, their amx-tiles copies included
#   conv2d-bf16/       fastopt bench conv2d --dtype bf16 on the tiles, beside torch bf16 channels_last
#                      and fastopt-bf16-nhwc (the channels_last kernels: VDPBF16PS, no tile path
#                      yet, so fastopt.torch sends channels_last bf16 convs to the NCHW tiles here)
#   conv2d-bf16-vnni/  the same with FASTOPT_CPU_AMX=off (the AVX512-BF16 kernel): the tiles' gain
#   train/             fastopt bench torch train --malloc steady (small CNN and ResNet-18)
# It stops before the benchmarks when the CPU has no AMX-BF16 or the tiles are not in use (the
# self-check failed, or the kernel refused the tile state): `fastopt info` says why.
#
#   bash bench/amx_check.sh [OUTDIR]
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/cpu-amx-$(date -u +%Y-%m-%d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  grep -m1 'model name' /proc/cpuinfo
  grep -m1 -o -w 'amx_[a-z0-9]*\|avx512_bf16\|avx512_fp16' /proc/cpuinfo | sort -u | tr '\n' ' '
  echo
  git log --oneline -1
  fastopt info
} > "$OUT/info.txt" 2>&1
cat "$OUT/info.txt"
if ! grep -q -w amx_bf16 /proc/cpuinfo; then
  echo "amx_check: this CPU has no AMX-BF16; nothing to measure" >&2
  exit 2
fi
amx=$(python3 -c 'import fastopt; print(fastopt.build_info()["amx"])')
if [[ $amx != tiles* ]]; then
  echo "amx_check: the tiles are not in use here: $amx" >&2
  exit 3
fi
python3 -m pytest -q tests/test_conv2d_bf16.py tests/test_linear_bf16.py 2>&1 | tee "$OUT/tests.log" | tail -3
fastopt bench conv2d --device cpu --dtype bf16 --layers all --out "$OUT/conv2d-bf16"
FASTOPT_CPU_AMX=off fastopt bench conv2d --device cpu --dtype bf16 --out "$OUT/conv2d-bf16-vnni"
python3 -m fastopt.bench.torch_train --malloc steady --out "$OUT/train"
