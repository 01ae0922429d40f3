"""bfloat16 conv2d on the CPU: forward, data-grad, weight-grad and bias-grad against the float64
reference run on the same bf16 values (the error bound is derived in bf16_checks.py), on every
CPU ISA copy the machine has, bit-identical across thread counts; dtype rules and NaN.

y and dx come back in bf16 (rounded once), dw and db in float32."""

import numpy as np
import pytest
from bf16_checks import GEMM_COPIES, assert_bf16_gemm_close, bf16, run_under_copy
from conftest import assert_bits_independent_of_threads
from ml_dtypes import bfloat16

import fastopt.functional as F
from fastopt.reference import conv as ref

# (N, C, H, W, K, R, S, stride, padding, dilation, groups), chosen to reach every path:
SHAPES = [
    (2, 16, 9, 9, 24, 3, 3, 1, 1, 1, 1),  # gather data-grad (C/groups >= 16); fp32 would take Winograd
    (3, 5, 11, 7, 13, 3, 3, 1, 1, 1, 1),  # odd sizes, col2im data-grad, narrow weight-grad (45 columns)
    (2, 3, 23, 21, 10, 7, 7, 2, 3, 1, 1),  # 7x7/2 stem: stride-2 gathers, odd reduction 147
    (1, 34, 10, 13, 17, 3, 5, (2, 1), (1, 2), 1, 1),  # mixed strides and paddings
    (2, 18, 8, 9, 12, 3, 3, 1, 2, 2, 1),  # dilation
    (2, 32, 7, 7, 48, 3, 3, 1, 1, 1, 4),  # groups, 8 channels each (col2im)
    (2, 64, 6, 5, 40, 3, 3, 1, 1, 1, 2),  # groups, 32 channels each (gather)
    (1, 131, 5, 6, 70, 3, 3, 1, 0, 1, 1),  # reduction 1179 over several KC blocks, odd
    (1, 64, 4, 4, 256, 3, 3, 1, 1, 1, 1),  # 16 columns, 256 rows: row-split tasks, shared B
    (8, 20, 16, 16, 24, 3, 3, 1, 1, 1, 1),  # weight-grad over image chunks
    (2, 24, 16, 20, 40, 3, 3, 1, 1, 1, 1),  # even images: weight-grad's pixel-pair transposes, 2 KC blocks
    (1, 8, 15, 22, 8, 3, 3, 1, 1, 1, 1),  # even image, odd KC blocks (165): the widened transposes
    (13, 20, 7, 7, 24, 3, 3, 2, 1, 1, 1),  # col2im data-grad on 4x4 outputs: runs of 12 images and 1
    (4, 24, 6, 6, 20, 1, 1, 1, 0, 1, 1),  # 1x1
    (2, 20, 17, 19, 36, 1, 1, 2, 0, 1, 1),  # 1x1, stride 2
    (1, 8, 9, 8, 8, 5, 5, 1, 2, 1, 1),  # 25 taps: the weight-grad's generic packers
    (1, 2, 21, 20, 3, 17, 17, 1, 8, 1, 1),  # 17x17: the forward's generic im2col
    (2, 12, 5, 5, 12, 3, 3, 1, 1, 1, 12),  # depthwise: the fp32 kernels on planes widened in cache
    (2, 6, 9, 11, 12, 5, 5, 1, 2, 1, 6),  # depthwise 5x5, two filters per channel
    (2, 4, 9, 8, 4, 3, 3, 2, 1, 1, 4),  # depthwise, stride 2: the whole tensors widened
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1),  # one element
]


def check_shape(shape, seed=0):
    n, c, h, w, k, r, s, stride, pad, dil, g = shape
    rng = np.random.default_rng(seed)
    x = bf16(rng.standard_normal((n, c, h, w)))
    wt = bf16(rng.standard_normal((k, c // g, r, s)))
    b = bf16(rng.standard_normal(k))
    args = (stride, pad, dil, g)
    y = F.conv2d_forward(x, wt, b, *args)
    ax, aw = np.abs(x.astype(np.float64)), np.abs(wt.astype(np.float64))
    assert_bf16_gemm_close(
        y,
        ref.conv2d_forward(x, wt, b, *args),
        ref.conv2d_forward(ax, aw, np.abs(b.astype(np.float64)), *args),
        c // g * r * s + 1,
        True,
        "y",
    )
    dy = bf16(rng.standard_normal(y.shape))
    got = F.conv2d_backward(dy, x, wt, *args)
    want = ref.conv2d_backward(dy, x, wt, *args)
    scale = ref.conv2d_backward(np.abs(dy.astype(np.float64)), ax, aw, *args)
    pq = y.shape[2] * y.shape[3]
    # dx: K/groups R S terms (the gather's reduction; col2im's sum over k plus its fold over taps).
    assert_bf16_gemm_close(got[0], want[0], scale[0], k // g * r * s, True, "dx")
    assert_bf16_gemm_close(got[1], want[1], scale[1], n * pq, False, "dw")
    assert_bf16_gemm_close(got[2], want[2], scale[2], n * pq, False, "db")


def check_all():
    for shape in SHAPES:
        check_shape(shape)


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_against_reference(shape):
    check_shape(shape)


@pytest.mark.parametrize("copy", GEMM_COPIES)
def test_every_isa_copy(copy):
    # Each copy has its own tile shapes and packers; avx512bf16 multiplies with VDPBF16PS, or
    # with AMX tiles (their own A layout and 32-row k steps); the others widen to fp32 in the packing.
    run_under_copy(copy, "import test_conv2d_bf16 as t\nt.check_all()\n")


def test_need_flags():
    rng = np.random.default_rng(1)
    x, wt = bf16(rng.standard_normal((2, 16, 6, 6))), bf16(rng.standard_normal((8, 16, 3, 3)))
    dy = bf16(rng.standard_normal((2, 8, 6, 6)))
    full = F.conv2d_backward(dy, x, wt, 1, 1)
    for i in range(3):
        need = tuple(j == i for j in range(3))
        got = F.conv2d_backward(dy, x, wt, 1, 1, need=need)
        assert [v is None for v in got] == [not f for f in need]
        np.testing.assert_array_equal(got[i].view(np.uint8), full[i].view(np.uint8))


def test_bits_independent_of_threads(tmp_path):
    # Forward, data-grad (gather and col2im) and weight-grad (GEMM, chunked, narrow).
    assert_bits_independent_of_threads(
        tmp_path,
        """
from ml_dtypes import bfloat16
rng = np.random.default_rng(5)
for n, c, hw, k, g, st in [(4, 32, 14, 40, 1, 1), (3, 5, 11, 13, 1, 1), (8, 24, 16, 20, 2, 2), (2, 3, 20, 16, 1, 1)]:
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32).astype(bfloat16)
    w = rng.standard_normal((k, c // g, 3, 3)).astype(np.float32).astype(bfloat16)
    b = rng.standard_normal(k).astype(np.float32).astype(bfloat16)
    y = F.conv2d_forward(x, w, b, st, 1, 1, g)
    dy = rng.standard_normal(y.shape).astype(np.float32).astype(bfloat16)
    dx, dw, db = F.conv2d_backward(dy, x, w, st, 1, 1, g)
    out += [y.view(np.uint16), dx.view(np.uint16), dw, db]
""",
    )


def test_nan_stays_nan():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    x[1, 3, 4, 5] = np.nan
    x = bf16(x)
    wt = bf16(rng.standard_normal((20, 16, 3, 3)))
    y = F.conv2d_forward(x, wt, None, 1, 1)
    want = ref.conv2d_forward(x, wt, None, 1, 1)
    np.testing.assert_array_equal(np.isnan(y.astype(np.float32)), np.isnan(want))
    assert np.isnan(want).sum() == 20 * 9
    dy = bf16(rng.standard_normal(y.shape))
    dx, dw, db = F.conv2d_backward(dy, x, wt, 1, 1)
    _, want_dw, _ = ref.conv2d_backward(dy, x, wt, 1, 1)
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(want_dw))
    assert np.isfinite(dx.astype(np.float32)).all() and np.isfinite(db).all()


@pytest.mark.parametrize("odd", ["w", "b", "dy", "x"])
def test_one_dtype_per_call(odd):
    # x, w, b and dy must share one dtype: a float32 among bf16 (or the reverse) is a TypeError
    # naming it, never a silent conversion.
    rng = np.random.default_rng(3)
    arrays = {
        "x": rng.standard_normal((1, 4, 5, 5)),
        "w": rng.standard_normal((6, 4, 3, 3)),
        "b": rng.standard_normal(6),
        "dy": rng.standard_normal((1, 6, 3, 3)),
    }
    arrays = {name: (a.astype(np.float32) if name == odd else bf16(a)) for name, a in arrays.items()}
    first = "w" if odd == "x" else odd  # with x the odd one, w is named (checked against x)
    with pytest.raises(TypeError, match=rf"^{first}: expected "):
        if odd == "dy":
            F.conv2d_backward(arrays["dy"], arrays["x"], arrays["w"])
        else:
            F.conv2d_forward(arrays["x"], arrays["w"], arrays["b"])


def test_float16_refused():
    x = np.zeros((1, 2, 4, 4), np.float16)
    with pytest.raises(TypeError, match=r"^x: .*float16.*bfloat16|^x: .*bfloat16.*float16"):
        F.conv2d_forward(x, np.zeros((2, 2, 3, 3), np.float16))


def test_outputs_dtypes():
    x, wt = bf16(np.ones((1, 2, 4, 4))), bf16(np.ones((3, 2, 3, 3)))
    y = F.conv2d_forward(x, wt)
    dx, dw, db = F.conv2d_backward(y, x, wt)
    assert (y.dtype, dx.dtype, dw.dtype, db.dtype) == (bfloat16, bfloat16, np.float32, np.float32)
