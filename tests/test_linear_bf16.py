"""bfloat16 linear on the CPU: forward and the three gradients against the float64 reference run
on the same bf16 values (the error bound is derived in bf16_checks.py), on every CPU ISA copy
the machine has, bit-identical across thread counts; dtype rules and torch tensors.

y and dx come back in bf16 (rounded once), dweight and dbias in float32."""

import numpy as np
import pytest
from bf16_checks import GEMM_COPIES, assert_bf16_gemm_close, bf16, run_under_copy
from conftest import assert_bits_independent_of_threads
from ml_dtypes import bfloat16

import fastopt.functional as F
from fastopt.reference import linear as ref

# (N, in, out): single elements, empty extents, primes, odd reductions (bf16 pairs), several KC
# blocks, thin outputs (rows and columns swapped), and products past the serial threshold.
SHAPES = [
    (1, 1, 1),
    (0, 3, 4),
    (3, 0, 5),
    (4, 5, 0),
    (2, 1, 3),
    (37, 61, 13),
    (128, 256, 10),
    (9, 49, 97),
    (3, 1001, 4),
    (600, 3, 2),
    (5, 321, 700),
    (257, 129, 65),
    (200, 701, 300),
    (129, 513, 47),
]


def check_shape(n, i, o, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    x, w = bf16(rng.standard_normal((n, i))), bf16(rng.standard_normal((o, i)))
    b = bf16(rng.standard_normal(o)) if bias else None
    dy = bf16(rng.standard_normal((n, o)))
    ax, aw, ady = (np.abs(a.astype(np.float64)) for a in (x, w, dy))
    y = F.linear_forward(x, w, b)
    assert_bf16_gemm_close(
        y,
        ref.linear_forward(x, w, b),
        ref.linear_forward(ax, aw, None if b is None else np.abs(b.astype(np.float64))),
        i + 1,
        True,
        "y",
    )
    got = F.linear_backward(dy, x, w)
    want = ref.linear_backward(dy, x, w)
    scale = ref.linear_backward(ady, ax, aw)
    assert_bf16_gemm_close(got[0], want[0], scale[0], o, True, "dx")
    assert_bf16_gemm_close(got[1], want[1], scale[1], n, False, "dweight")
    assert_bf16_gemm_close(got[2], want[2], scale[2], n, False, "dbias")


def check_all():
    for shape in SHAPES:
        check_shape(*shape)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,i,o", SHAPES)
def test_against_reference(n, i, o, bias):
    check_shape(n, i, o, bias)


@pytest.mark.parametrize("copy", GEMM_COPIES)
def test_every_isa_copy(copy):
    run_under_copy(copy, "import test_linear_bf16 as t\nt.check_all()\n")


def test_bits_independent_of_threads(tmp_path):
    # The serial path (small products) and the OpenMP tasks both reduce each output on one thread.
    assert_bits_independent_of_threads(
        tmp_path,
        """
from ml_dtypes import bfloat16
rng = np.random.default_rng(7)
for n, i, o in [(128, 256, 10), (300, 701, 200), (3000, 40, 300), (5, 2001, 900)]:
    x, w, b, dy = (rng.standard_normal(s).astype(np.float32).astype(bfloat16) for s in ((n, i), (o, i), (o,), (n, o)))
    y = F.linear_forward(x, w, b)
    dx, dw, db = F.linear_backward(dy, x, w)
    out += [y.view(np.uint16), dx.view(np.uint16), dw, db]
""",
    )


def test_nan_stays_nan():
    x = np.ones((4, 6), np.float32)
    x[2, 3] = np.nan
    w = bf16(np.full((5, 6), 0.5))
    y = F.linear_forward(bf16(x), w)
    np.testing.assert_array_equal(np.isnan(y.astype(np.float32)), np.isnan(ref.linear_forward(x, w)))
    np.testing.assert_array_equal(y.astype(np.float32)[[0, 1, 3]], np.full((3, 5), 3.0, np.float32))


@pytest.mark.parametrize("odd", ["weight", "bias", "dy", "x"])
def test_one_dtype_per_call(odd):
    arrays = {"x": np.ones((3, 4)), "weight": np.ones((2, 4)), "bias": np.ones(2), "dy": np.ones((3, 2))}
    arrays = {name: (a.astype(np.float32) if name == odd else bf16(a)) for name, a in arrays.items()}
    first = "weight" if odd == "x" else odd
    with pytest.raises(TypeError, match=rf"^{first}: expected "):
        if odd == "dy":
            F.linear_backward(arrays["dy"], arrays["x"], arrays["weight"])
        else:
            F.linear_forward(arrays["x"], arrays["weight"], arrays["bias"])


def test_torch_bfloat16_tensors():
    # torch.bfloat16 CPU tensors are read in place, like ml_dtypes arrays: same bits out.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x, w, b = bf16(rng.standard_normal((7, 33))), bf16(rng.standard_normal((5, 33))), bf16(rng.standard_normal(5))
    as_torch = [torch.from_numpy(a.view(np.uint16).astype(np.int16)).view(torch.bfloat16) for a in (x, w, b)]
    got = F.linear_forward(*as_torch)
    got = got.view(np.uint16) if isinstance(got, np.ndarray) else got.view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(got, F.linear_forward(x, w, b).view(np.uint16))


def test_outputs_dtypes():
    x, w = bf16(np.ones((2, 3))), bf16(np.ones((4, 3)))
    y = F.linear_forward(x, w)
    dx, dw, db = F.linear_backward(y, x, w)
    assert (y.dtype, dx.dtype, dw.dtype, db.dtype) == (bfloat16, bfloat16, np.float32, np.float32)
