"""bfloat16 conv2d and linear on the GPU (issue 21, the tensor-core half): forward and the three
gradients on bf16 device arrays against the float64 reference run on the same bf16 values.

The GEMM passes run on bf16 tensor cores (mma.sync.m16n8k16: exact products, fp32 accumulators),
so bf16_checks.py's bound holds as derived there: |out - y| <= u16 |y| + (1 + u16) gamma(m) S +
2^-126 for outputs rounded to bf16 once (y, dx), without the u16 terms for the fp32 ones (dw, db),
m the longest sum's terms (the bias included), S the reference on absolute values; and at least
99% of many rounded outputs must be the bf16 nearest the exact value. The shapes reach every path
of both ops: partial tiles (odd M, N and reductions), reductions that are not a multiple of the
16-deep bf16 k step, split-K (linear: deep reductions on a few tiles; conv weight-grad: N P Q
split), 1x1 and implicit-GEMM conv, groups, strides, dilation, and the conv paths that are not
GEMMs (depthwise, few channels, gathers), which widen bf16 to fp32 and round once. accumulate=True
adds dw and db into dw_out / db_out in fp32. Small shapes: the emulation runs every thread as a
fiber. On the emulation (tests/test_build_variants.py) and on a GPU when one is present.
"""

import numpy as np
import pytest
from bf16_checks import assert_bf16_gemm_close, bf16
from ml_dtypes import bfloat16

import fastopt
import fastopt.functional as F
from fastopt.reference import conv as conv_ref, linear as linear_ref

pytestmark = pytest.mark.gpu


def dev(a):
    return None if a is None else fastopt.to_device(np.ascontiguousarray(a))


def host(a):
    return None if a is None else a.numpy()


def f64abs(a):
    return None if a is None else np.abs(a.astype(np.float64))


# ------------------------------------------------------------------------------------- linear
# (N, in, out): single elements, empty extents, partial tiles, reductions off the 16-deep step,
# split-K on every GEMM (few tiles, deep reductions), 128-wide tiles' neighbourhood.
LINEAR_SHAPES = [
    (1, 1, 1),
    (0, 3, 4),
    (3, 0, 5),
    (4, 5, 0),
    (37, 61, 13),
    (9, 49, 97),
    (5, 600, 3),
    (600, 3, 2),
    (3, 17, 700),
    (70, 129, 66),
]


def check_linear(n, i, o, bias, rng):
    x, w = bf16(rng.standard_normal((n, i))), bf16(rng.standard_normal((o, i)))
    b = bf16(rng.standard_normal(o)) if bias else None
    dy = bf16(rng.standard_normal((n, o)))
    y = host(F.linear_forward(dev(x), dev(w), dev(b)))
    assert_bf16_gemm_close(
        y,
        linear_ref.linear_forward(x, w, b),
        linear_ref.linear_forward(f64abs(x), f64abs(w), f64abs(b)),
        i + 1,
        True,
        "y",
    )
    want = linear_ref.linear_backward(dy, x, w)
    scale = linear_ref.linear_backward(f64abs(dy), f64abs(x), f64abs(w))
    got = [host(a) for a in F.linear_backward(dev(dy), dev(x), dev(w))]
    assert_bf16_gemm_close(got[0], want[0], scale[0], o, True, "dx")
    assert_bf16_gemm_close(got[1], want[1], scale[1], n, False, "dweight")
    assert_bf16_gemm_close(got[2], want[2], scale[2], n, False, "dbias")
    # accumulate: the fresh fp32 gradients added into what dweight_out / dbias_out hold.
    dw0, db0 = rng.standard_normal((o, i)).astype(np.float32), rng.standard_normal(o).astype(np.float32)
    dw_out, db_out = dev(dw0), dev(db0)
    F.linear_backward(
        dev(dy), dev(x), dev(w), need=(False, True, True), dweight_out=dw_out, dbias_out=db_out, accumulate=True
    )
    # one more rounding (the fp32 add) over the fresh gradient's bound
    assert_bf16_gemm_close(host(dw_out), want[1] + dw0, scale[1] + np.abs(dw0), n + 1, False, "dweight_out")
    assert_bf16_gemm_close(host(db_out), want[2] + db0, scale[2] + np.abs(db0), n + 1, False, "dbias_out")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,i,o", LINEAR_SHAPES)
def test_linear_against_reference(rng, n, i, o, bias):
    check_linear(n, i, o, bias, rng)


# ------------------------------------------------------------------------------------- conv2d
# (N, C, H, W, K, R, S, stride, padding, dilation, groups) and the paths they take on the GPU:
CONV_SHAPES = [
    (2, 16, 9, 9, 24, 3, 3, 1, 1, 1, 1),  # implicit GEMM, all three passes
    (3, 5, 11, 7, 13, 3, 3, 1, 1, 1, 1),  # odd sizes; data-grad with C < 16: few channels (widened)
    (2, 3, 13, 11, 10, 7, 7, 2, 3, 1, 1),  # 7x7/2 stem: reduction 147, stride 2
    (1, 34, 10, 13, 17, 3, 5, (2, 1), (1, 2), 1, 1),  # mixed strides and paddings
    (2, 18, 8, 9, 20, 3, 3, 1, 2, 2, 1),  # dilation
    (2, 64, 6, 5, 40, 3, 3, 1, 1, 1, 2),  # groups, 32 channels each
    (4, 24, 6, 6, 20, 1, 1, 1, 0, 1, 1),  # 1x1 unit-stride GEMM
    (2, 20, 9, 11, 36, 1, 1, 2, 0, 1, 1),  # 1x1, stride 2 (implicit GEMM)
    (8, 17, 16, 16, 18, 3, 3, 1, 1, 1, 1),  # weight-grad split over N P Q = 2048
    (2, 12, 5, 5, 12, 3, 3, 1, 1, 1, 12),  # depthwise (widened)
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1),  # one element (gathers, widened)
]


def check_conv(shape, rng):
    n, c, h, w, k, r, s, stride, pad, dil, g = shape
    x = bf16(rng.standard_normal((n, c, h, w)))
    wt = bf16(rng.standard_normal((k, c // g, r, s)))
    b = bf16(rng.standard_normal(k))
    args = (stride, pad, dil, g)
    y = host(F.conv2d_forward(dev(x), dev(wt), dev(b), *args))
    ax, aw = f64abs(x), f64abs(wt)
    assert_bf16_gemm_close(
        y,
        conv_ref.conv2d_forward(x, wt, b, *args),
        conv_ref.conv2d_forward(ax, aw, f64abs(b), *args),
        c // g * r * s + 1,
        True,
        "y",
    )
    dy = bf16(rng.standard_normal(y.shape))
    got = [host(a) for a in F.conv2d_backward(dev(dy), dev(x), dev(wt), *args)]
    want = conv_ref.conv2d_backward(dy, x, wt, *args)
    scale = conv_ref.conv2d_backward(f64abs(dy), ax, aw, *args)
    pq = y.shape[2] * y.shape[3]
    assert_bf16_gemm_close(got[0], want[0], scale[0], k // g * r * s, True, "dx")
    assert_bf16_gemm_close(got[1], want[1], scale[1], n * pq, False, "dw")
    assert_bf16_gemm_close(got[2], want[2], scale[2], n * pq, False, "db")
    dw0, db0 = rng.standard_normal(wt.shape).astype(np.float32), rng.standard_normal(k).astype(np.float32)
    dw_out, db_out = dev(dw0), dev(db0)
    F.conv2d_backward(
        dev(dy), dev(x), dev(wt), *args, need=(False, True, True), dw_out=dw_out, db_out=db_out, accumulate=True
    )
    assert_bf16_gemm_close(host(dw_out), want[1] + dw0, scale[1] + np.abs(dw0), n * pq + 1, False, "dw_out")
    assert_bf16_gemm_close(host(db_out), want[2] + db0, scale[2] + np.abs(db0), n * pq + 1, False, "db_out")


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_conv2d_against_reference(rng, shape):
    check_conv(shape, rng)


# ------------------------------------------------------------------------------------- API
def test_output_dtypes_match_the_cpu():
    x, w, b = bf16(np.ones((2, 3, 4, 4))), bf16(np.ones((5, 3, 3, 3))), bf16(np.ones(5))
    y = F.conv2d_forward(dev(x), dev(w), dev(b), 1, 1, 1, 1)
    dx, dw, db = F.conv2d_backward(y, dev(x), dev(w), 1, 1, 1, 1)
    assert [a.numpy().dtype for a in (y, dx, dw, db)] == [bfloat16, bfloat16, np.float32, np.float32]
    xl, wl = bf16(np.ones((2, 3))), bf16(np.ones((4, 3)))
    yl = F.linear_forward(dev(xl), dev(wl))
    dxl, dwl, dbl = F.linear_backward(yl, dev(xl), dev(wl))
    assert [a.numpy().dtype for a in (yl, dxl, dwl, dbl)] == [bfloat16, bfloat16, np.float32, np.float32]


@pytest.mark.parametrize("odd", ["weight", "bias", "dy", "x"])
def test_linear_one_dtype_per_call(odd):
    arrays = {"x": np.ones((3, 4)), "weight": np.ones((2, 4)), "bias": np.ones(2), "dy": np.ones((3, 2))}
    arrays = {name: dev(a.astype(np.float32) if name == odd else bf16(a)) for name, a in arrays.items()}
    first = "weight" if odd == "x" else odd
    with pytest.raises(TypeError, match=rf"^{first}: expected "):
        if odd == "dy":
            F.linear_backward(arrays["dy"], arrays["x"], arrays["weight"])
        else:
            F.linear_forward(arrays["x"], arrays["weight"], arrays["bias"])


@pytest.mark.parametrize("odd", ["w", "b", "dy", "x"])
def test_conv2d_one_dtype_per_call(odd):
    arrays = {"x": np.ones((1, 2, 4, 4)), "w": np.ones((3, 2, 3, 3)), "b": np.ones(3), "dy": np.ones((1, 3, 2, 2))}
    arrays = {name: dev(a.astype(np.float32) if name == odd else bf16(a)) for name, a in arrays.items()}
    first = "w" if odd == "x" else odd
    with pytest.raises(TypeError, match=rf"^{first}: expected "):
        if odd == "dy":
            F.conv2d_backward(arrays["dy"], arrays["x"], arrays["w"], 1, 0, 1, 1)
        else:
            F.conv2d_forward(arrays["x"], arrays["w"], arrays["b"], 1, 0, 1, 1)


def test_float16_still_refused():
    x = dev(np.ones((2, 3), np.float16))
    with pytest.raises(TypeError, match="^x: unsupported dtype float16"):
        F.linear_forward(x, dev(np.ones((4, 3), np.float16)))
