"""The CPU-only build: with no nvcc anywhere on PATH, CMake must still build a working module.

(The CUDA build without a GPU is the installed module itself on machines like CI's; a GPU
machine runs bench/gpu_check.sh.)"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not available")
    return path


def test_cpu_only_build_without_nvcc(tmp_path):
    if not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("not running from a source checkout")
    pybind11 = pytest.importorskip("pybind11")
    cmake, ninja = _tool("cmake"), _tool("ninja")
    # A PATH without nvcc: keep only the folders of the tools the build needs.
    path = os.pathsep.join(sorted({os.path.dirname(p) for p in (cmake, ninja, sys.executable, shutil.which("c++") or "/usr/bin/c++")}))
    env = {**os.environ, "PATH": path}
    env.pop("CUDACXX", None)
    build = tmp_path / "build"
    configure = subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(build), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
         f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}"],
        env=env, capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    assert "building the CPU backend only" in configure.stdout
    make = subprocess.run([cmake, "--build", str(build), "-j", "2"], env=env, capture_output=True, text=True)
    assert make.returncode == 0, make.stdout + make.stderr

    # Assemble a package from the sources and the fresh module, and use it in a clean process.
    pkg = tmp_path / "site" / "fastopt"
    shutil.copytree(ROOT / "python" / "fastopt", pkg)
    (module,) = build.glob("_C*.so")
    shutil.copy(module, pkg)
    script = (
        # An editable install of fastopt on this machine must not shadow the fresh package.
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]\n"
        "import numpy as np, fastopt\n"
        "info = fastopt.build_info()\n"
        "assert info['cuda'] is False and not fastopt.cuda.is_available(), info\n"
        "p = np.ones(5, np.float32)\n"
        "fastopt.optim.SGD([p], lr=0.5).step([np.ones(5, np.float32)])\n"
        "assert (p == 0.5).all(), p\n"
        "print('ok', fastopt.__file__)\n")
    run = subprocess.run([sys.executable, "-c", script], env={**env, "PYTHONPATH": str(tmp_path / "site")},
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert str(pkg) in run.stdout
