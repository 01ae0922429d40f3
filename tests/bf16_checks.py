"""What the bf16 GEMM tests (test_conv2d_bf16.py, test_linear_bf16.py) share: the error bound of
a bf16 GEMM against the float64 reference, and running a check under every CPU ISA copy.

The bound. Inputs are bf16 values a_i, b_i; the reference computes y = sum_i a_i b_i (+ bias) in
float64 from those same values (its own error, ~m 2^-53 sum |a_i b_i|, is negligible). A product
of two bf16 values has at most 16 significant bits, so it is exact in fp32; every kernel copy
then adds the m terms of an output in fp32 in some fixed order (blocked by KC, VDPBF16PS adding
pairs, image chunks, col2im's fold), at most m - 1 roundings on any term's path. With the fp32
unit roundoff u32 = 2^-24 (Higham, Accuracy and Stability, eq. 3.5):

    |s32 - y| <= gamma(m) * S,   gamma(m) = m u32 / (1 - m u32),   S = sum_i |a_i b_i|,

where S is the reference run on |inputs| and m counts the terms plus the bias. Outputs rounded
to bf16 once (round to nearest even, unit roundoff u16 = 2^-8: 8 significant bits) add
u16 |s32| <= u16 (|y| + gamma(m) S):

    |out - y| <= u16 |y| + (1 + u16) gamma(m) S + 2^-126.

The last term covers VDPBF16PS flushing subnormal sums (it treats bf16 subnormals as zero and
flushes subnormal results). fp32 outputs (weight and bias gradients) drop the u16 terms. This is
a worst-case bound, so the tests also require nearly every rounded output to be exactly the bf16
nearest the float64 value (the accumulated error is ~2^-24 relative, far below half a bf16 ulp):
a kernel that truncated instead of rounding, or rounded twice, would fail that check.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ml_dtypes import bfloat16

U16 = 2.0**-8
U32 = 2.0**-24
ISAS = ("baseline", "avx2", "avx512", "avx512bf16")


def bf16(a):
    """a rounded to bf16 (nearest even)."""
    return np.asarray(a, np.float32).astype(bfloat16)


def gamma(m):
    return m * U32 / (1 - m * U32)


def assert_bf16_gemm_close(got, want, scale, terms, rounded, name):
    """got (bf16 when rounded, else float32) against the float64 `want`, `scale` = the same
    computation on absolute values, `terms` = the length of the longest sum (with the bias)."""
    assert got.dtype == (bfloat16 if rounded else np.float32), f"{name}: dtype {got.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    g = got.astype(np.float64)
    bound = (1 + U16 if rounded else 1.0) * gamma(terms) * scale + 2.0**-126
    if rounded:
        bound = bound + U16 * np.abs(want)
    err = np.abs(g - want)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), (
        f"{name}: error {err[worst]:.3g} over the bound {bound[worst]:.3g} at {worst} "
        f"(got {g[worst]!r}, want {want[worst]!r})"
    )
    if rounded and want.size >= 100:
        nearest = np.mean(got.view(np.uint16) == want.astype(bfloat16).view(np.uint16))
        assert nearest >= 0.99, f"{name}: only {nearest:.4f} of the outputs are the bf16 nearest the exact value"


# The bf16 GEMMs' copies: every ISA copy, plus the AVX512-BF16 copy on AMX tiles, both the
# software tiles (any AVX512-BF16 machine) and the CPU's own (where it has AMX-BF16).
GEMM_COPIES = ISAS + ("amx-emulated", "amx-tiles")


def run_under_isa(isa, code, timeout=600, amx="off"):
    """Runs `code` (Python) in a child process capped to the CPU ISA copy `isa`, with
    FASTOPT_CPU_AMX=`amx` (so a plain ISA copy never runs AMX tiles); skips when the machine or
    the build has no such copy. The child sees this folder on sys.path."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "FASTOPT_CPU_ISA": isa, "FASTOPT_CPU_AMX": amx}
    script = (
        f"import sys\nsys.path.insert(0, {str(here)!r})\nimport fastopt\n"
        f"assert fastopt.build_info()['simd'] == {isa!r}, fastopt.build_info()['simd']\n" + code
    )
    probe = subprocess.run(
        [sys.executable, "-c", "import fastopt; i = fastopt.build_info(); print(i['amx']); print(i['simd'])"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    status, simd = probe.stdout.strip().splitlines()[-2:]
    if simd != isa:
        pytest.skip(f"this machine or build has no {isa} copy (runs {simd})")
    want = {"off": "off", "emulate": "emulated", "auto": "tiles"}[amx]
    if not status.startswith(want):
        if status.startswith("off (failed its self-check"):
            # The tile kernel is tested here through the software tiles; a CPU whose tiles
            # disagree with them is shown, not hidden, and fastopt runs without them there.
            pytest.xfail(f"AMX tiles on this CPU: {status}")
        pytest.skip(f"AMX {want} not available: {status}")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def run_under_copy(copy, code, timeout=600):
    """run_under_isa for one of GEMM_COPIES."""
    if copy.startswith("amx-"):
        return run_under_isa("avx512bf16", code, timeout, amx="emulate" if copy == "amx-emulated" else "auto")
    return run_under_isa(copy, code, timeout)


def assert_isa_copy_agrees(tmp_path, isa, module, outputs, *args):
    """The ISA copy `isa` computes `module.outputs(*args)` (a list of arrays, bf16 viewed as
    uint16; args: literals) with exactly the bits this process's copy (the default, checked against
    the reference) computes: the kernels never contract into FMAs, so every copy agrees."""
    fn = getattr(sys.modules[module], outputs)
    np.savez(tmp_path / "want.npz", *[np.asarray(a) for a in fn(*args)])
    run_under_isa(
        isa,
        f"import numpy as np\nfrom {module} import {outputs}\n"
        f"want = np.load({str(tmp_path / 'want.npz')!r})\n"
        f"for i, got in enumerate({outputs}(*{args!r})):\n"
        "    assert np.array_equal(np.asarray(got), want[f'arr_{i}']), i\n",
    )
