"""The CUDA host emulation itself (cuda/emulation), which tests/test_build_variants.py runs the
GPU suite on: tests/native/emulation_selftest.cu checks its shuffles, barriers, TF32 and bf16 mma layouts,
launch limits, memory checks and the poisoning of shared and device memory, that a missing
barrier shows, and that a deadlock, a write past the end of an allocation and a host read of
device memory each stop the program with a message."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMULATION = ROOT / "cuda" / "emulation"


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    source = ROOT / "tests" / "native" / "emulation_selftest.cu"
    if not source.exists() or not (EMULATION / "emulator.cpp").exists():
        pytest.skip("not running from a source checkout")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None or not sys.platform.startswith("linux"):
        pytest.skip("the emulation needs a C++ compiler on Linux")
    out = tmp_path_factory.mktemp("emulation")
    rewritten = out / "selftest.cpp"
    subprocess.run([sys.executable, str(EMULATION / "rewrite_for_host.py"), str(source), str(rewritten)], check=True)
    exe = out / "selftest"
    build = subprocess.run(
        [
            cxx,
            "-std=c++17",
            "-O1",
            "-ffp-contract=off",
            f"-I{EMULATION}",
            "-include",
            str(EMULATION / "cuda_runtime.h"),
            str(rewritten),
            str(EMULATION / "emulator.cpp"),
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    return exe


def run(exe, mode):
    return subprocess.run([str(exe), mode], capture_output=True, text=True, timeout=120)


def test_shuffles_barriers_mma_limits_and_memory_checks(selftest):
    r = run(selftest, "checks")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


@pytest.mark.parametrize(
    "mode, message",
    [
        ("deadlock", "deadlock in block (0, 0, 0)"),
        ("overrun", "wrote past the end of a 20-byte device allocation"),
        ("host-touch", "host code touched device memory (a 20-byte allocation)"),
    ],
)
def test_faults_stop_with_a_message(selftest, mode, message):
    r = run(selftest, mode)
    assert r.returncode != 0 and message in r.stderr, (r.returncode, r.stdout, r.stderr)
