"""max_pool2d with layout="nhwc" (channels last, CPU): x (N, H, W, C) -> y, indices (N, P, Q, C),
forward and backward, float32 and bfloat16, against the float64 reference on the transposed
arrays and against the NCHW kernel.

Tolerances: values and indices are exact (a max is a selection, exact in bf16 too) and equal
the reference's: the first of tied maxima in row-major window order, a NaN always taken. dx is
a sum of at most m = ceil(kh/sh) * ceil(kw/sw) terms in fp32 (test_pooling.py's bound,
(m - 1) 2^-24 * the reference on |dy|), rounded once more to bf16 for bf16 (plus 2^-8 |dx|);
and it is bitwise the NCHW kernel's dx, transposed: both add the same terms in the same
(p, q) order from +0.
"""

import math

import numpy as np
import pytest
from bf16_checks import ISAS, assert_isa_copy_agrees, bf16
from conftest import put
from ml_dtypes import bfloat16

from fastopt import _C, functional as F
from fastopt.reference import pooling as R

# (NCHW shape, kernel_size, stride, padding)
CASES = [
    ((3, 5, 7, 9), 2, None, 0),  # 2x2 / 2, odd sizes leave a ragged edge
    ((3, 5, 7, 9), 3, 2, 1),  # overlapping, padded
    ((2, 3, 13, 11), 3, 1, 1),  # overlapping, same-size output
    ((2, 3, 13, 11), 3, 3, 1),  # non-overlapping, padded
    ((2, 2, 5, 5), 2, 3, 0),  # stride > kernel: inputs no window covers
    ((2, 3, 13, 11), (3, 2), (2, 3), (1, 0)),
    ((1, 70, 9, 8), 3, 2, 1),  # channels past one block of 64
    ((2, 131, 6, 5), 2, 1, 1),  # two blocks and a tail
    ((1, 1, 1, 1), 2, 1, 1),  # every window mostly padding
    ((0, 3, 5, 5), 2, None, 0),  # empty batch
    ((2, 0, 5, 5), 3, 2, 1),  # no channels
]
IDS = [f"{s}-k{k}-s{st}-p{p}" for s, k, st, p in CASES]
DTYPES = [np.float32, bfloat16]


def nhwc(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def nchw(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


def _draw(rng, shape, dtype, values=None):
    x = rng.standard_normal(shape) if values is None else rng.choice(values, size=shape)
    return bf16(x) if dtype == bfloat16 else x.astype(np.float32)


def _hyper(shape):
    n, c, h, w = shape
    return (n, h, w, c)


def _check_forward(x, kernel_size, stride, padding):
    """x: NCHW. The NHWC kernel on x's transpose gives the reference's values and indices, and the
    NCHW kernel's bits."""
    y, idx = F.max_pool2d_forward(nhwc(x), kernel_size, stride, padding, layout="nhwc")
    ry, ridx = R.max_pool2d_forward(x.astype(np.float64), kernel_size, stride, padding)
    assert y.dtype == x.dtype and idx.dtype == np.int32 and y.shape == idx.shape == nhwc(ry).shape
    np.testing.assert_array_equal(y.astype(np.float64), nhwc(ry))  # NaNs compare equal here
    np.testing.assert_array_equal(idx, nhwc(ridx))
    y_nchw, idx_nchw = F.max_pool2d_forward(x, kernel_size, stride, padding)
    np.testing.assert_array_equal(y.view(np.uint8), nhwc(y_nchw).view(np.uint8))
    return y, idx


def _check_backward(rng, x, idx, kernel_size, stride, padding):
    dy = _draw(rng, idx.shape, x.dtype)  # NHWC, the forward's output shape
    dx = F.max_pool2d_backward(dy, idx, _hyper(x.shape), kernel_size, stride, padding, layout="nhwc")
    assert dx.dtype == x.dtype and dx.shape == _hyper(x.shape)
    dx_nchw = F.max_pool2d_backward(nchw(dy), nchw(idx), x.shape, kernel_size, stride, padding)
    np.testing.assert_array_equal(dx.view(np.uint8), nhwc(dx_nchw).view(np.uint8))
    ref = R.max_pool2d_backward(nchw(dy).astype(np.float64), nchw(idx), x.shape)
    k = (kernel_size,) * 2 if isinstance(kernel_size, int) else kernel_size
    s = k if stride is None else ((stride,) * 2 if isinstance(stride, int) else stride)
    terms = math.ceil(k[0] / s[0]) * math.ceil(k[1] / s[1])
    bound = (terms - 1) * 2.0**-24 * R.max_pool2d_backward(np.abs(nchw(dy).astype(np.float64)), nchw(idx), x.shape)
    if x.dtype == bfloat16:
        bound = bound + 2.0**-8 * np.abs(ref)
    assert np.all(np.abs(nchw(dx).astype(np.float64) - ref) <= bound)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape,kernel_size,stride,padding", CASES, ids=IDS)
def test_forward_backward(rng, dtype, shape, kernel_size, stride, padding):
    x = _draw(rng, shape, dtype)
    _, idx = _check_forward(x, kernel_size, stride, padding)
    _check_backward(rng, x, idx, kernel_size, stride, padding)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape,kernel_size,stride,padding", CASES, ids=IDS)
def test_ties_first_max_wins(rng, dtype, shape, kernel_size, stride, padding):
    # Values from {-1, 0, 1}: most windows hold several equal maxima.
    x = _draw(rng, shape, dtype, values=[-1.0, 0.0, 1.0])
    _, idx = _check_forward(x, kernel_size, stride, padding)
    _check_backward(rng, x, idx, kernel_size, stride, padding)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_nan_inf_and_constant_windows(rng, dtype):
    x = _draw(rng, (2, 67, 9, 10), dtype)
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = np.nan  # two NaNs in one window: the later one is taken
    x[1, 66, 8, 9] = np.nan  # last row, column and channel (the block tail)
    x[1, 1, 0, 0], x[1, 1, 0, 1] = np.nan, np.inf
    x[0, 5] = -np.inf  # an all -inf plane: each window's first in-plane element
    x[1, 7] = 0.0
    for k, s, p in [(2, None, 0), (3, 1, 1), (3, 2, 1)]:
        y, idx = _check_forward(x, k, s, p)
        assert np.isnan(y.astype(np.float32)).sum() > 0
    y, idx = F.max_pool2d_forward(nhwc(x), 2, layout="nhwc")
    assert np.isnan(float(y[0, 0, 0, 0])) and idx[0, 0, 0, 0] == 1 * 10 + 1
    assert np.isnan(float(y[0, 0, 1, 0])) and idx[0, 0, 1, 0] == 1 * 10 + 2


def _isa_outputs(seed):
    rng = np.random.default_rng(seed)
    out = []
    for dtype in DTYPES:
        for shape, k, s, p in [((2, 70, 9, 8), 3, 2, 1), ((1, 19, 7, 9), 2, None, 0), ((1, 5, 6, 7), (3, 2), 1, 1)]:
            x = nhwc(_draw(rng, shape, dtype))
            y, idx = F.max_pool2d_forward(x, k, s, p, layout="nhwc")
            dy = _draw(rng, y.shape, dtype)
            dx = F.max_pool2d_backward(dy, idx, x.shape, k, s, p, layout="nhwc")
            out += [a.view(np.uint16) if a.dtype == bfloat16 else a for a in (y, idx, dx)]
    return out


@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_copy_agrees(tmp_path, isa):
    assert_isa_copy_agrees(tmp_path, isa, __name__, "_isa_outputs", 20261207)


X = np.ones((2, 6, 6, 3), np.float32)  # NHWC
Y = np.ones((2, 3, 3, 3), np.float32)
I = np.zeros((2, 3, 3, 3), np.int32)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: F.max_pool2d_forward(X, 2, layout="NHWC"), ValueError, r"^layout: expected one of 'nchw', 'nhwc'"),
        (lambda: F.max_pool2d_forward(X, 2, layout=None), TypeError, r"^layout: expected one of"),
        (lambda: F.max_pool2d_backward(Y, I, X.shape, 2, layout="hwc"), ValueError, r"^layout: expected one of"),
        (lambda: _C.max_pool2d_forward(X, (2, 2), (2, 2), (0, 0), 0, "cl"), ValueError, r"^layout: expected 'nchw'"),
        (
            lambda: _C.max_pool2d_backward(Y, I, X.shape, (2, 2), (2, 2), (0, 0), 0, ""),
            ValueError,
            r"^layout: expected 'nchw' or 'nhwc', got ''",
        ),
        (
            lambda: F.max_pool2d_forward(X[0], 2, layout="nhwc"),
            ValueError,
            r"x: expected 4 dimensions \(N, H, W, C\), got shape \(6, 6, 3\)",
        ),
        (
            lambda: F.max_pool2d_backward(Y, I, X.shape, 3, layout="nhwc"),
            ValueError,
            r"dy: expected the output shape \(2, 2, 2, 3\) of this pooling, got \(2, 3, 3, 3\)",
        ),
        (
            lambda: F.max_pool2d_backward(Y, I, (2, 6, 6), 2, layout="nhwc"),
            ValueError,
            r"input_shape: expected 4 dimensions \(N, H, W, C\)",
        ),
        (lambda: F.max_pool2d_forward(X, 7, layout="nhwc"), ValueError, r"x: output size would be \(0, 0\)"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.gpu
def test_nhwc_on_a_gpu_array_names_layout():
    x = put(X, "cuda")
    with pytest.raises(ValueError, match=r"^layout: 'nhwc' runs on the CPU only"):
        F.max_pool2d_forward(x, 2, layout="nhwc")
    with pytest.raises(ValueError, match=r"^layout: 'nhwc' runs on the CPU only"):
        F.max_pool2d_backward(put(Y, "cuda"), put(I, "cuda"), X.shape, 2, layout="nhwc")
