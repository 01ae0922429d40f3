"""Build variants, each built here with CMake and used from a clean process:

- CPU only: with no nvcc anywhere on PATH, CMake must still build a working module.
- FASTOPT_CUDA=EMULATE: cuda/*.cu compiled by the host compiler against cuda/emulation/ (every
  CUDA thread a fiber), and this suite's GPU tests (`-m gpu`: every cuda variant, against the
  same float64 references) run on it. That catches what a GPU run would catch in the kernels'
  logic (indexing, barriers, warp shuffles, reductions, launch limits, reads of uninitialized or
  out-of-bounds device memory) and in the host code around them; nothing of speed.

(The CUDA build without a GPU is the installed module itself on machines like CI's; a GPU
machine runs the GPU tests for real through bench/gpu_check.sh.)"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# An editable install of fastopt on this machine must not shadow the freshly built package.
PRELUDE = "import sys\nsys.meta_path = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]\n"


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not available")
    return path


def build_variant(tmp_path, defines, env=None):
    """Configures and builds the module with `defines`; returns (configure output, the folder
    holding a fastopt package made of the sources and the fresh module)."""
    if not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("not running from a source checkout")
    pybind11 = pytest.importorskip("pybind11")
    cmake, ninja = _tool("cmake"), _tool("ninja")
    build = tmp_path / "build"
    configure = subprocess.run(
        [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(build),
            "-G",
            "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            *defines,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    make = subprocess.run(
        [cmake, "--build", str(build), "-j", str(os.cpu_count() or 2)], env=env, capture_output=True, text=True
    )
    assert make.returncode == 0, make.stdout[-6000:] + make.stderr[-6000:]
    site = tmp_path / "site"
    shutil.copytree(ROOT / "python" / "fastopt", site / "fastopt")
    (module,) = build.glob("_C*.so")
    shutil.copy(module, site / "fastopt")
    return configure.stdout, site


def test_cpu_only_build_without_nvcc(tmp_path):
    cmake, ninja = _tool("cmake"), _tool("ninja")
    # A PATH without nvcc: keep only the folders of the tools the build needs.
    path = os.pathsep.join(
        sorted({os.path.dirname(p) for p in (cmake, ninja, sys.executable, shutil.which("c++") or "/usr/bin/c++")})
    )
    env = {**os.environ, "PATH": path}
    env.pop("CUDACXX", None)
    configured, site = build_variant(tmp_path, [], env)
    assert "building the CPU backend only" in configured
    script = PRELUDE + (
        "import numpy as np, fastopt\n"
        "info = fastopt.build_info()\n"
        "assert info['cuda'] is False and not fastopt.cuda.is_available(), info\n"
        "p = np.ones(5, np.float32)\n"
        "fastopt.optim.SGD([p], lr=0.5).step([np.ones(5, np.float32)])\n"
        "assert (p == 0.5).all(), p\n"
        "print('ok', fastopt.__file__)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "PYTHONPATH": str(site)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert str(site / "fastopt") in run.stdout


def test_gpu_suite_passes_on_the_emulated_cuda_backend(tmp_path):
    if not (ROOT / "cuda" / "emulation" / "cuda_runtime.h").exists():
        pytest.skip("not running from a source checkout")
    import fastopt

    if fastopt.cuda.has_gpu():
        pytest.skip("a GPU is here: the GPU tests run on it for real")
    configured, site = build_variant(tmp_path, ["-DFASTOPT_CUDA=EMULATE"])
    assert "CUDA backend EMULATED" in configured
    script = PRELUDE + (
        "import fastopt, pytest\n"
        "assert fastopt.cuda.is_emulated() and fastopt.cuda.is_available(), fastopt.__file__\n"
        "assert not fastopt.cuda.has_gpu()\n"
        f"sys.exit(pytest.main(['-q', '-m', 'gpu', '-rs', '-p', 'no:cacheprovider', {str(ROOT / 'tests')!r}]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-12000:]
    # Every GPU test ran: the only skips allowed are those that need torch's own CUDA.
    skips = re.findall(r"SKIPPED \[\d+\] (.*)", out)
    assert all("torch" in s for s in skips), skips
    assert re.search(r"\b\d{3,} passed", out), out[-2000:]
