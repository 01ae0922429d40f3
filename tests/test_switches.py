"""The switchboard (cpp/include/fastopt/switches.h): every environment variable fastopt reads is
declared there, listed by fastopt.switches() and `fastopt info` and in the README table, and
read under its new name and its deprecated alias alike."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np

import fastopt
import fastopt.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = {
    "FASTOPT_CPU_ISA",
    "FASTOPT_CPU_AMX",
    "FASTOPT_CPU_CONV2D_WINOGRAD",
    "FASTOPT_HOST_CACHE_MB",
    "FASTOPT_CUDA_CONV2D_WINOGRAD",
    "FASTOPT_CUDA_CONV2D_GATHER",
    "FASTOPT_CUDA_CONV2D_STRIPS",
    "FASTOPT_CUDA_CONV2D_DW_TAPS",
    "FASTOPT_CUDA_CONV2D_DW_LOADS",
    "FASTOPT_CUDA_EMULATION_GUARD_HOST",
    "FASTOPT_CUDA_EMULATION_SEED",
}


def test_table_lists_every_switch_once():
    table = fastopt.switches()
    assert [s["name"] for s in table].count("FASTOPT_CPU_ISA") == 1
    assert {s["name"] for s in table} == NAMES and len(table) == len(NAMES)
    for s in table:
        assert s["backend"] in ("cpu", "cuda", "host", "cuda emulation"), s
        assert s["read"] in ("once", "per call"), s
        assert s["default"] and len(s["meaning"]) > 20, s
    cpu, gpu = (next(s for s in table if s["name"] == f"FASTOPT_{b}_CONV2D_WINOGRAD") for b in ("CPU", "CUDA"))
    assert (cpu["default"], gpu["default"]) == ("1", "0")  # on by default on the CPU, opt-in on the GPU
    assert cpu["alias"] == gpu["alias"] == "FASTOPT_CONV2D_WINOGRAD"


def test_no_environment_read_outside_the_switchboard():
    # std::getenv only in the switchboard and the emulator (which its own test builds without it).
    allowed = {ROOT / "cpp" / "switches.cpp", ROOT / "cuda" / "emulation" / "emulator.cpp"}
    found = {
        path
        for folder in ("cpp", "cuda")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".cpp", ".h", ".cu", ".cuh") and re.search(r"\bgetenv\s*\(", path.read_text())
    }
    assert found == allowed


def test_readme_table_names_every_switch():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Environment switches") :]
    section = section[: section.index("\n## ")]
    rows = set(re.findall(r"^\| `(FASTOPT_[A-Z0-9_]+)` \|", section, re.M))
    assert rows == NAMES


def test_values_under_new_names_and_aliases():
    code = "import json, fastopt; print(json.dumps({s['name']: s['value'] for s in fastopt.switches()}))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTOPT_")}

    def values(**extra):
        out = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout)

    assert all(v is None for v in values().values())
    got = values(FASTOPT_CONV2D_WINOGRAD="0", FASTOPT_CONV2D_STRIPS="1")
    assert got["FASTOPT_CPU_CONV2D_WINOGRAD"] == got["FASTOPT_CUDA_CONV2D_WINOGRAD"] == "0"
    assert got["FASTOPT_CUDA_CONV2D_STRIPS"] == "1"
    # The new name wins over the alias, and names one backend only.
    got = values(FASTOPT_CPU_CONV2D_WINOGRAD="1", FASTOPT_CONV2D_WINOGRAD="0")
    assert got["FASTOPT_CPU_CONV2D_WINOGRAD"] == "1" and got["FASTOPT_CUDA_CONV2D_WINOGRAD"] == "0"
    got = values(FASTOPT_HOST_CACHE_MB="7")
    assert got["FASTOPT_HOST_CACHE_MB"] == "7"


def test_cpu_winograd_switch_reaches_the_kernel(monkeypatch, rng):
    # A 3x3 unit-stride 64-channel layer takes Winograd on the CPU by default; off (new name or
    # alias), it takes the direct GEMMs, whose rounding differs: bitwise equal off-vs-off, not
    # equal on-vs-off. (Read per call, so monkeypatch reaches it.)
    for name in ("FASTOPT_CPU_CONV2D_WINOGRAD", "FASTOPT_CONV2D_WINOGRAD"):
        monkeypatch.delenv(name, raising=False)
    x = rng.standard_normal((2, 64, 9, 11)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    on = F.conv2d_forward(x, w, None, 1, 1)
    monkeypatch.setenv("FASTOPT_CPU_CONV2D_WINOGRAD", "0")
    off = F.conv2d_forward(x, w, None, 1, 1)
    monkeypatch.delenv("FASTOPT_CPU_CONV2D_WINOGRAD")
    monkeypatch.setenv("FASTOPT_CONV2D_WINOGRAD", "0")
    off_alias = F.conv2d_forward(x, w, None, 1, 1)
    np.testing.assert_array_equal(off, off_alias)
    assert not np.array_equal(on, off)
    # Both are the same conv: a loose bound (the accuracy itself is test_conv2d's), 1e-4 of the largest output.
    np.testing.assert_allclose(on, off, rtol=0, atol=1e-4 * np.abs(off).max())


def test_cli_info_prints_the_switches():
    out = subprocess.run(
        [sys.executable, "-m", "fastopt.cli", "info"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "FASTOPT_CUDA_CONV2D_DW_TAPS": "1"},
    )
    assert "environment switches" in out.stdout
    line = next(l for l in out.stdout.splitlines() if "FASTOPT_CUDA_CONV2D_DW_TAPS" in l)
    assert "'1'" in line and "default 0" in line
    listed = json.loads(
        subprocess.run(
            [sys.executable, "-m", "fastopt.cli", "info", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )["switches"]
    assert {s["name"] for s in listed} == NAMES
