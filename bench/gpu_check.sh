#!/usr/bin/env bash
# Build, test and benchmark fastopt on the lent GPU machine (no network), writing into OUTDIR:
#   build.log  pip build + install, then `fastopt info`
#   tests.log  pytest -m gpu, conv2d again on its stage-1 kernels, the CPU tests (each if asked)
#   bench.log  progress and tables of the suites asked for (on cuda; train: CPU and GPU)
#   results.tar.gz  one folder per suite: results.json, results.md, chart.png
#   status.txt one line per stage: name, exit status, seconds
# PARTS: comma-separated stages after the build, so that the work can be split over device calls
# of 10 minutes each: tests (GPU tests, conv2d again on its gather kernels), cpu-tests, optim,
# normalization, dropout, conv2d, conv2d-bf16 (bf16 tensor cores against cuDNN bf16 channels_last),
# train (training-step suite), digits (`fastopt train`), loader
# (training from a file vs in memory: pinned buffers, async copies), torch-optim and torch-train
# (the PyTorch front against torch fused / eager / compile on CUDA tensors); or the groups all
# (default: tests, cpu-tests, the kernel suites), bench (the kernel suites), torch
# (torch-optim, torch-train).
# GPU_TESTS narrows the GPU tests to some files (default: all of tests/).
# At most 8 files come back from that machine, so nothing else is written there.
# Every stage runs even when an earlier one failed (except that nothing runs without a build);
# the script's exit status is the first failing stage's. Fits the 10-minute command limit:
# each stage has a timeout, and the total is held under GPU_CHECK_BUDGET seconds (default 540).
#
#   bash bench/gpu_check.sh "$OUT" [PARTS]
set -u -o pipefail
OUT=${1:?usage: gpu_check.sh OUTDIR [PARTS]}
PARTS=,${2:-all},
PARTS=${PARTS//,all,/,tests,cpu-tests,bench,}
PARTS=${PARTS//,bench,/,optim,normalization,dropout,conv2d,conv2d-bf16,}
PARTS=${PARTS//,torch,/,torch-optim,torch-train,}
want() { [[ $PARTS == *,$1,* ]]; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export FASTOPT_CUDA=ON                              # a missing nvcc must fail the build, not drop CUDA
# H100 and H200 are sm_90: building only that halves nvcc's time here. The shipped default
# (80-real;90) is compiled on the development machine; override to check it on the GPU too.
export FASTOPT_CUDA_ARCHS=${FASTOPT_CUDA_ARCHS:-90-real}
BUDGET=${GPU_CHECK_BUDGET:-540}
START=$SECONDS
FIRST_FAIL=0
: > "$OUT/status.txt"

# stage NAME CAP_SECONDS LOGFILE CMD...: run CMD with a timeout of min(CAP, time left), append
# its output to LOGFILE, record the exit status (124: timed out, 125: skipped for lack of time).
stage() {
  local name=$1 cap=$2 log=$3; shift 3
  local left=$(( BUDGET - (SECONDS - START) ))
  local limit=$(( cap < left ? cap : left ))
  local t0=$SECONDS rc
  if (( left < 15 )); then
    rc=125
    echo "== $name: skipped, ${left}s left of ${BUDGET}s" | tee -a "$OUT/$log"
  else
    echo "== $name (timeout ${limit}s): $*" | tee -a "$OUT/$log"
    timeout --kill-after=10 "$limit" "$@" >> "$OUT/$log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $(( SECONDS - t0 ))s" | tee -a "$OUT/$log"
  fi
  printf '%-12s exit %3d  %4ds\n' "$name" "$rc" "$(( SECONDS - t0 ))" >> "$OUT/status.txt"
  (( rc != 0 && FIRST_FAIL == 0 )) && FIRST_FAIL=$rc
  return $rc
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1; nvcc --version 2>&1 | tail -2;
  python3 -c 'import sys, torch, numpy; print(sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__)' 2>&1
  # The copy of the tree on the lent machine may carry a stale .git: the caller's word comes first.
  echo "commit ${FASTOPT_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"; date -u +%FT%TZ
} >> "$OUT/build.log"

# Each benchmark writes results.json/.md and chart.png into its own folder under $OUT; they are
# packed into one results.tar.gz at the end (the device tool brings back at most 8 files).
bench() {  # bench NAME CAP ARGS...: one suite on the GPU
  local name=$1 cap=$2; shift 2
  stage "bench-$name" "$cap" bench.log python3 -m fastopt.cli bench "$@" --out "$OUT/$name"
}

if stage build 330 build.log python3 -m pip install --no-build-isolation --no-index --no-deps -v . ; then
  # From /tmp, so that the installed package is what gets imported, not the source tree.
  stage info 30 build.log bash -c 'cd /tmp && python3 -m fastopt.cli info && python3 -c "import fastopt, sys; sys.exit(0 if fastopt.cuda.is_available() else 1)"'
  # xdist, where installed, spreads the ~1000 GPU tests (mostly float64 references) over the cores.
  xdist=(); python3 -c 'import xdist' 2>/dev/null && xdist=(-n 8)
  if want tests; then
    stage gpu-tests 240 tests.log python3 -m pytest -q -rfE "${xdist[@]}" -m gpu ${GPU_TESTS:-tests}
    stage conv-gather 90 tests.log env FASTOPT_CUDA_CONV2D_GATHER=1 python3 -m pytest -q -rfE "${xdist[@]}" -m gpu tests/test_conv2d.py
  fi
  want cpu-tests && stage cpu-tests 200 tests.log python3 -m pytest -q -rfE "${xdist[@]}" -m "not gpu" tests
  want optim && bench optim 200 --device cuda --budget 2
  want normalization && bench normalization 90 normalization --device cuda
  want dropout && bench dropout 60 dropout --device cuda
  # Should an opt-in kernel (never run on a GPU before) fail, the defaults are still timed.
  want conv2d && { bench conv2d 150 conv2d --device cuda || bench conv2d-default 150 conv2d --device cuda --no-opt-in; }
  # The fp32 opt-in kernels are the conv2d stage's; this one times bf16 beside fp32 and TF32.
  want conv2d-bf16 && bench conv2d-bf16 150 conv2d --device cuda --dtype bf16 --no-opt-in
  want train && bench train 200 train --device all
  want loader && bench loader 200 loader --device cuda
  want torch-optim && bench torch-optim 150 torch optim --device cuda
  want torch-train && bench torch-train 300 torch train --device cuda --steps 5 --rounds 3
  # Digits needs scikit-learn, which that machine may lack (no network): then this stage fails alone.
  want digits && stage digits 200 bench.log python3 -m fastopt.cli train --device cuda --out "$OUT/digits"
fi
( cd "$OUT" && dirs=$(ls -d */ 2>/dev/null) && [[ -n $dirs ]] && tar czf results.tar.gz $dirs && rm -rf $dirs )
echo "total $(( SECONDS - START ))s" >> "$OUT/status.txt"
cat "$OUT/status.txt"
exit "$FIRST_FAIL"
