"""The CUDA conv2d kernels' own per-thread code, replayed on the CPU.

cuda/conv2d_tiles.cuh keeps every kernel's index math and per-thread work in __host__ __device__
functions; tests/native/conv2d_cuda_replay.cpp runs them as loops over (block, thread) in each
kernel's barrier order (stale shared memory poisoned with NaN) and compares with a naive float64
convolution over random shapes. This checks the GPU code paths on machines without a GPU; the
GPU itself runs tests/test_conv2d.py."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_conv2d_kernels_replayed_on_host(tmp_path):
    source = ROOT / "tests" / "native" / "conv2d_cuda_replay.cpp"
    if not source.exists() or not (ROOT / "cuda" / "conv2d_tiles.cuh").exists():
        pytest.skip("not running from a source checkout")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "replay"
    subprocess.run(
        [cxx, "-std=c++17", "-O2", f"-I{ROOT / 'cuda'}", f"-I{ROOT / 'cpp' / 'include'}", str(source), "-o", str(exe)],
        check=True,
        capture_output=True,
        text=True,
    )
    seed = int(np.random.SeedSequence().entropy % 2**63)
    run = subprocess.run([str(exe), "40", str(seed)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"seed {seed}:\n{run.stdout[-4000:]}{run.stderr[-2000:]}"
    assert " 0 failures" in run.stdout
    comparisons = int(run.stdout.split(" comparisons")[0].split()[-1])
    assert comparisons > 500, run.stdout
